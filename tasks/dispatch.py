"""Handing committed jobs to Redis, and recording that it happened (the outbox's second half).

Used by the API after its commit and by workers moving a job to its next stage. A failure to reach Redis is
logged and left to the reaper: the job row is already safe in Postgres.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from wardrobe.jobs import JobLedger, Jobs

from .queue import STAGE_QUEUE

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        tasks: dict[str, Any],
        jobs: Jobs | JobLedger,
        on_error: Callable[[str], None] = lambda dependency: None,
    ) -> None:
        self._tasks = tasks  # stage -> huey TaskWrapper
        self._jobs = jobs
        self._on_error = on_error

    def send(self, jobs: Iterable[dict[str, Any]], *, delay: float = 0, request_id: str | None = None) -> int:
        sent = []
        for job in jobs:
            task = self._tasks[job["stage"]]
            try:
                if delay > 0:
                    task.schedule(args=(str(job["id"]),), delay=delay)
                else:
                    task(str(job["id"]))
            except Exception as exc:  # noqa: BLE001 - any Redis failure: the reaper resends it later
                self._on_error("redis")
                log.warning(
                    "could not enqueue job %s (%s): %s; the reaper will", job["id"], job["stage"], exc
                )
                continue
            sent.append(str(job["id"]))
        if sent:
            try:
                self._jobs.mark_enqueued(sent)
            except Exception as exc:  # noqa: BLE001 - only bookkeeping; a duplicate send later is harmless
                log.warning("could not record enqueue of %s: %s", sent, exc)
        return len(sent)

    @staticmethod
    def queue_of(stage: str) -> str:
        return STAGE_QUEUE[stage]
