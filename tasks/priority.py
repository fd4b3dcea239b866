"""Catch-up priority for an images worker that shares its box with the API.

Beside the API the images consumer runs at a lower priority (nice 10), so that a burst of uploads never slows
requests. When the box is saturated, that priority starves it: cutouts then wait minutes, and upload->ready
is what the user sees. `CatchUp` watches how long each cutout waited for its worker. Past `after` seconds it
raises the whole process (every thread: the inference engine's too) to the API's priority, nice 0; once the
waits are back under half of that it returns to the nice it started with.

Lowering a nice value needs root or an RLIMIT_NICE that allows it (systemd: `LimitNICE=+0`). Without either
the worker keeps its priority and says so once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

URGENT_NICE = 0  # the API's own priority, never above it


def _threads() -> Iterable[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def _renice(nice: int) -> None:
    # On Linux a nice value belongs to each thread, and PRIO_PROCESS with 0 only changes the caller's.
    for tid in _threads():
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


class CatchUp:
    def __init__(
        self,
        after: float,
        *,
        renice: Callable[[int], None] = _renice,
        base: int | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.after = after
        self.base = os.getpriority(os.PRIO_PROCESS, 0) if base is None else base
        self.current = self.base
        self._renice = renice
        self._clock = clock
        self._enabled = after > 0 and self.base > URGENT_NICE

    def job_claimed(self, job: dict[str, Any]) -> None:
        """Called when this process starts a cutout; `job["created_at"]` is when the upload was accepted."""
        if not self._enabled or job.get("created_at") is None:
            return
        waited = (self._clock() - job["created_at"]).total_seconds()
        if self.current != URGENT_NICE and waited > self.after:
            self._set(URGENT_NICE, waited)
        elif self.current != self.base and waited < self.after / 2:
            self._set(self.base, waited)

    def _set(self, nice: int, waited: float) -> None:
        try:
            self._renice(nice)
        except OSError as exc:  # PermissionError without root or LimitNICE; anything else the same way
            self._enabled = False
            log.warning(
                "cutouts are %.0fs behind but this worker may not raise its priority to nice %d "
                "(run it as root or give it LimitNICE=+%d): %s; it stays at nice %d",
                waited,
                nice,
                nice,
                exc,
                self.current,
            )
            return
        log.info("cutouts waited %.1fs: images worker now at nice %d (was %d)", waited, nice, self.current)
        self.current = nice
