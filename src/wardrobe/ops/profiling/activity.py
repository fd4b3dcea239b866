"""Which greenlets (or threads) are doing what right now: request route/method or Huey task name.

The sampler reads this from its own OS thread to tag stacks; the web and task code fills it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import greenlet

from wardrobe.ops.profiling import os_threads

Tags = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Activity:
    tags: Tags
    thread_ident: int
    root: Any = None  # the bottom frame of the tagged greenlet's stack: finds the tags of a running stack


def _root(frame: Any) -> Any:
    while frame.f_back is not None:
        frame = frame.f_back
    return frame


class ActivityRegistry:
    """Maps live greenlets to the tags of the work they do.

    Without gevent each OS thread runs its own main greenlet, so the same bookkeeping tags plain threads.
    Writes come from the owning greenlet and reads from the sampler thread; single dict operations are
    atomic under the GIL, so no lock is needed (and a gevent lock could not be taken from the sampler).
    """

    def __init__(self) -> None:
        self._current: dict[Any, Activity] = {}
        self._by_root: dict[Any, Activity] = {}
        self._slots: list[Any] = []
        self._index: dict[Any, int] = {}

    def enter(self, tags: Tags) -> Activity | None:
        """Tag the calling greenlet; returns the activity it replaced so `leave` can restore it."""
        current = greenlet.getcurrent()
        previous = self._current.get(current)
        # Sorted so the same tags always make the same aggregation key.
        activity = Activity(
            tags=tuple(sorted(tags)), thread_ident=os_threads.get_ident(), root=_root(sys._getframe(1))
        )
        if current not in self._current:
            self._index[current] = len(self._slots)
            self._slots.append(current)
        self._current[current] = activity
        self._by_root[activity.root] = activity
        return previous

    def leave(self, previous: Activity | None) -> None:
        current = greenlet.getcurrent()
        activity = self._current.get(current)
        if previous is None:
            self._forget(current, activity)
        else:
            self._current[current] = previous
            self._by_root[previous.root] = previous

    def _forget(self, glet: Any, activity: Activity | None) -> None:
        self._current.pop(glet, None)
        if activity is not None:
            self._by_root.pop(activity.root, None)
        index = self._index.pop(glet, None)
        if index is not None:
            # Swap-remove keeps `_slots` dense, so the sampler can pick entries at random in O(1).
            last = self._slots.pop()
            if last is not glet:
                self._slots[index] = last
                self._index[last] = index

    def sample(self, k: int, rng: Any) -> tuple[int, list[tuple[Any, Activity]]]:
        """(how many are tagged, up to `k` of them picked at random): O(k) whatever the number in flight.

        Runs on the sampler thread while greenlets come and go: an entry that left meanwhile is skipped."""
        slots = self._slots
        total = len(slots)
        picks = range(total) if total <= k else rng.sample(range(total), k)
        chosen = []
        for i in picks:
            try:
                glet = slots[i]
            except IndexError:
                continue
            activity = self._current.get(glet)
            if activity is not None and not glet.dead:
                chosen.append((glet, activity))
        return total, chosen

    def running(self, frame: Any, root: Any = None) -> Activity | None:
        """The activity whose stack `frame` (a thread's executing frame) belongs to, if it is tagged.

        `root`: the bottom frame of that stack, when the caller has walked it already."""
        return self._by_root.get(_root(frame) if root is None else root)

    @contextmanager
    def context(self, tags: Tags) -> Iterator[None]:
        previous = self.enter(tags)
        try:
            yield
        finally:
            self.leave(previous)

    def snapshot(self) -> list[tuple[Any, Activity]]:
        """Every tagged greenlet and its activity (a copy)."""
        return list(self._current.copy().items())

    def purge_dead(self) -> None:
        """Drop greenlets that died while tagged (the middleware normally untags them first)."""
        for glet, activity in list(self._current.items()):
            if glet.dead:
                self._forget(glet, activity)


# One registry per process: the middleware, the task wrapper and the profiler must agree on it.
ACTIVITIES = ActivityRegistry()


def task_context(task_name: str, registry: ActivityRegistry = ACTIVITIES):
    """Tag everything the current Huey task does with its name, for the wall and cpu profiles."""
    return registry.context((("task", task_name),))


class ProfilingMiddleware:
    """Falcon middleware tagging each request's greenlet with its route template and method."""

    def __init__(self, registry: ActivityRegistry = ACTIVITIES) -> None:
        self._registry = registry

    def process_resource(self, req, resp, resource, params) -> None:
        tags = (("method", req.method), ("route", req.uri_template or "unmatched"))
        req.context.profiling_previous = self._registry.enter(tags)
        req.context.profiling_entered = True

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        if req.context.get("profiling_entered"):
            req.context.profiling_entered = False
            self._registry.leave(req.context.profiling_previous)
