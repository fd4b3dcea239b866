"""Which greenlets (or threads) are doing what right now: request route/method or Huey task name.

The sampler reads this from its own OS thread to tag stacks; the web and task code fills it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import greenlet

from wardrobe.profiling import os_threads

Tags = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Activity:
    tags: Tags
    thread_ident: int


class ActivityRegistry:
    """Maps live greenlets to the tags of the work they do.

    Without gevent each OS thread runs its own main greenlet, so the same bookkeeping tags plain threads.
    Writes come from the owning greenlet and reads from the sampler thread; single dict operations are
    atomic under the GIL, so no lock is needed (and a gevent lock could not be taken from the sampler).
    """

    def __init__(self) -> None:
        self._current: dict[Any, Activity] = {}

    def enter(self, tags: Tags) -> Activity | None:
        """Tag the calling greenlet; returns the activity it replaced so `leave` can restore it."""
        current = greenlet.getcurrent()
        previous = self._current.get(current)
        # Sorted so the same tags always make the same aggregation key.
        self._current[current] = Activity(tags=tuple(sorted(tags)), thread_ident=os_threads.get_ident())
        return previous

    def leave(self, previous: Activity | None) -> None:
        current = greenlet.getcurrent()
        if previous is None:
            self._current.pop(current, None)
        else:
            self._current[current] = previous

    @contextmanager
    def context(self, tags: Tags) -> Iterator[None]:
        previous = self.enter(tags)
        try:
            yield
        finally:
            self.leave(previous)

    def snapshot(self) -> list[tuple[Any, Activity]]:
        """A consistent copy for the sampler; entries of greenlets that died untagged are dropped."""
        entries = list(self._current.copy().items())
        dead = [glet for glet, _ in entries if glet.dead]
        if not dead:
            return entries
        for glet in dead:
            self._current.pop(glet, None)
        return [(glet, activity) for glet, activity in entries if not glet.dead]


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
