"""Sample counts grouped into fixed time windows, kept for a bounded number of minutes.

A window maps (profile type, tags, stack) to a sample count; exporters read merged windows as a `Profile`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from wardrobe.ops.profiling.activity import Tags

PROFILE_TYPES = ("cpu", "wall")


class Frame(NamedTuple):
    name: str
    filename: str
    start_line: int
    line: int


Stack = tuple[Frame, ...]  # root first
SampleKey = tuple[str, Tags, Stack]

# Samples that no longer fit a full window are still counted, under this single stack per type and tags.
OVERFLOW_STACK: Stack = (Frame("[too many distinct stacks]", "", 0, 0),)


class Source(NamedTuple):
    """One process whose samples are in a profile: `until` is where its shared windows end, None if live."""

    pid: int
    until: float | None


@dataclass
class Window:
    start: float
    end: float
    hz: int
    counts: dict[SampleKey, int] = field(default_factory=dict)
    max_stacks: int = 5000
    overflowed: int = 0

    def add(self, profile_type: str, tags: Tags, stack: Stack, count: int = 1) -> None:
        key = (profile_type, tags, stack)
        counts = self.counts
        if key not in counts and len(counts) >= self.max_stacks:
            self.overflowed += count
            key = (profile_type, tags, OVERFLOW_STACK)
        counts[key] = counts.get(key, 0) + count


@dataclass
class Profile:
    """Merged samples of one profile type over [start, end), as the exporters consume them."""

    profile_type: str
    hz: int
    start: float
    end: float
    samples: dict[tuple[Tags, Stack], int]
    static_tags: Tags = ()
    # The processes whose samples these are: the answering one and, when windows are shared, the box's others.
    sources: tuple[Source, ...] = ()

    @property
    def period_nanos(self) -> int:
        return int(1_000_000_000 / self.hz)

    def routes(self) -> list[str]:
        return sorted({value for tags, _ in self.samples for key, value in tags if key == "route"})


class WindowStore:
    """The last `keep` finished windows plus the one being filled.

    Only the sampler thread writes; readers copy under the GIL (deque and dict copies are atomic), so a
    request never waits for the sampler.
    """

    def __init__(self, window_seconds: float, keep: int, hz: int, max_stacks: int = 5000) -> None:
        self.window_seconds = window_seconds
        self.hz = hz
        self.max_stacks = max_stacks
        self._finished: deque[Window] = deque(maxlen=max(keep, 1))
        self._current: Window | None = None

    @property
    def retained_seconds(self) -> float:
        return self.window_seconds * self._finished.maxlen

    def window_for(self, now: float) -> tuple[Window, Window | None]:
        """The window that `now` falls in, and the window this call finished, if any."""
        current = self._current
        if current is not None and current.start <= now < current.end:
            return current, None
        start = now - now % self.window_seconds
        fresh = Window(start=start, end=start + self.window_seconds, hz=self.hz, max_stacks=self.max_stacks)
        self._current = fresh
        if current is not None:
            current.end = min(current.end, max(now, current.start))
            self._finished.append(current)
        return fresh, current

    def finish(self, now: float) -> Window | None:
        """Close the window being filled early (on stop), so its samples are kept and can be pushed."""
        current, self._current = self._current, None
        if current is None or not current.counts:
            return None
        current.end = min(current.end, max(now, current.start))
        self._finished.append(current)
        return current

    def windows_since(self, since: float) -> list[Window]:
        finished = list(self._finished.copy())
        current = self._current
        if current is not None:
            finished.append(
                Window(current.start, current.end, current.hz, current.counts.copy(), current.max_stacks)
            )
        return [window for window in finished if window.end > since]


def merge(
    windows: Iterable[Window],
    profile_type: str,
    hz: int,
    start: float,
    end: float,
    route: str | None = None,
    static_tags: Tags = (),
) -> Profile:
    samples: dict[tuple[Tags, Stack], int] = {}
    for window in windows:
        for (kind, tags, stack), count in window.counts.items():
            if kind != profile_type:
                continue
            if route is not None and ("route", route) not in tags:
                continue
            key = (tags, stack)
            samples[key] = samples.get(key, 0) + count
    return Profile(profile_type, hz, start, end, samples, static_tags)
