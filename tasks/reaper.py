"""The reaper: resends jobs that Redis never got (it was down at commit), whose lease expired (worker killed,
box lost), or whose message vanished (Redis restarted empty), and fails jobs whose worker died on every attempt.

Every consumer runs one, so losing a box loses no reaper; a Redis lock lets only one act per interval fleet-wide.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wardrobe.store.jobs import JobLedger

log = logging.getLogger(__name__)


@dataclass
class Reaper:
    ledger: JobLedger
    send: Callable[..., int]  # Dispatcher.send
    redis_client: Any  # holds the lock that lets one reaper act per interval
    interval: float = 15.0
    grace: float = 10.0  # a job this young may still be on its way to Redis
    stale: float = 300.0  # a message this old without a claim was lost (Redis restarted empty)
    observe_backlog: Callable[[list[dict[str, Any]]], None] = lambda rows: None
    give_up: Callable[[dict[str, Any], str], bool] = lambda job, error: False  # Items/Capsules.job_failed

    def sweep(self) -> int:
        """One pass; returns how many jobs were resent (0 when another reaper holds this interval)."""
        try:
            if not self.redis_client.set(
                "wardrobe:reaper:lock", os.getpid(), nx=True, px=int(self.interval * 900)
            ):
                return 0
        except Exception as exc:  # noqa: BLE001 - Redis down: nothing can be enqueued anyway
            log.warning("reaper: Redis unavailable (%s); will retry", exc)
            return 0
        for job in self.ledger.dead():
            # A poison job (it kills its process: out of memory, a native crash) is not retried forever.
            error = (
                f"gave up after {job['attempts']} attempts: the worker running it died "
                "(killed, out of memory or crashed)"
            )
            if self.give_up(job, error):
                log.warning("reaper: job %s (%s) failed: %s", job["id"], job["stage"], error)
        jobs = self.ledger.unsent(self.grace, self.stale)
        sent = self.send(jobs) if jobs else 0
        if jobs:
            log.info("reaper: resent %d of %d stranded job(s)", sent, len(jobs))
        self.observe_backlog(self.ledger.backlog())
        return sent

    def run_forever(self, parent_pid: int | None = None) -> None:
        while parent_pid is None or os.getppid() == parent_pid:
            started = time.monotonic()
            try:
                self.sweep()
            except Exception:
                log.exception("reaper sweep failed")
            time.sleep(max(0.5, self.interval - (time.monotonic() - started)))
