"""The reaper: resends jobs that Redis never got (it was down at commit), whose lease expired (worker killed,
box lost), or whose message vanished (Redis restarted empty), and fails jobs whose worker died on every attempt.

Every consumer runs one, so losing a box loses no reaper; a Redis lock lets only one act per interval fleet-wide.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from wardrobe.store.jobs import JobLedger

log = logging.getLogger(__name__)


class Reaper:
    def __init__(
        self,
        ledger: JobLedger,
        send: Callable[..., int],
        redis_client: Any,
        *,
        interval: float = 15.0,
        grace: float = 10.0,
        stale: float = 300.0,
        observe_backlog: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
        give_up: Callable[[dict[str, Any], str], bool] = lambda job, error: False,
    ) -> None:
        """`give_up(job, error)` fails a job and the row it works on (Items/Capsules.job_failed)."""
        self._ledger = ledger
        self._send = send
        self._redis = redis_client
        self._interval = interval
        self._grace = grace
        self._stale = stale
        self._observe_backlog = observe_backlog
        self._give_up = give_up

    def sweep(self) -> int:
        """One pass; returns how many jobs were resent (0 when another reaper holds this interval)."""
        try:
            if not self._redis.set(
                "wardrobe:reaper:lock", os.getpid(), nx=True, px=int(self._interval * 900)
            ):
                return 0
        except Exception as exc:  # noqa: BLE001 - Redis down: nothing can be enqueued anyway
            log.warning("reaper: Redis unavailable (%s); will retry", exc)
            return 0
        for job in self._ledger.dead():
            # A poison job (it kills its process: out of memory, a native crash) is not retried forever.
            error = (
                f"gave up after {job['attempts']} attempts: the worker running it died "
                "(killed, out of memory or crashed)"
            )
            if self._give_up(job, error):
                log.warning("reaper: job %s (%s) failed: %s", job["id"], job["stage"], error)
        jobs = self._ledger.unsent(self._grace, self._stale)
        sent = self._send(jobs) if jobs else 0
        if jobs:
            log.info("reaper: resent %d of %d stranded job(s)", sent, len(jobs))
        self._observe_backlog(self._ledger.backlog())
        return sent

    def run_forever(self, parent_pid: int | None = None) -> None:
        while parent_pid is None or os.getppid() == parent_pid:
            started = time.monotonic()
            try:
                self.sweep()
            except Exception:
                log.exception("reaper sweep failed")
            time.sleep(max(0.5, self._interval - (time.monotonic() - started)))
