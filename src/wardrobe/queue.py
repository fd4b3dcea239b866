"""The job queues both sides share: the Huey instances, the tasks declared on them, and the Dispatcher that hands
committed jobs to Redis.

The API only declares the tasks (to enqueue them); a consumer declares them with a runtime factory (`tasks.work`),
which builds what a stage needs once per process, after fork — so the API never opens a model or an OpenAI client.
One queue per kind of work: `images` (CPU-bound background removal, process workers) and `ai` (IO-bound OpenAI
calls, greenlet workers). Nothing here connects until a task is sent.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import redis
from huey import RedisHuey

from wardrobe.ops.profiling import task_context

log = logging.getLogger(__name__)

QUEUES = ("images", "ai")
# Which queue runs each stage of a job.
STAGE_QUEUE = {"cutout": "images", "analyze": "ai", "capsule": "ai"}


class StageRuntime(Protocol):
    """What a consumer process runs for each stage, given a job id (tasks.stages.StageRunner)."""

    def cutout(self, job_id: str) -> str: ...

    def analyze(self, job_id: str) -> str: ...

    def capsule(self, job_id: str) -> str: ...


def build(client: redis.Redis) -> dict[str, RedisHuey]:
    # results=False: job outcomes live in Postgres; Huey's result store would grow without bound.
    return {
        name: RedisHuey(f"wardrobe-{name}", connection_pool=client.connection_pool, results=False, utc=True)
        for name in QUEUES
    }


class ProcessLocal:
    """One runtime per process (and per queue), built on first use after fork, shared by its greenlets."""

    def __init__(self, build: Callable[[str], StageRuntime]) -> None:
        self._build = build
        self._made: dict[tuple[int, str], StageRuntime] = {}
        self._lock = threading.Lock()

    def get(self, queue: str) -> StageRuntime:
        key = (os.getpid(), queue)
        runtime = self._made.get(key)
        if runtime is None:
            with self._lock:
                runtime = self._made.get(key)
                if runtime is None:
                    runtime = self._made[key] = self._build(queue)
        return runtime


def _no_runtime(queue: str) -> StageRuntime:
    raise RuntimeError(f"this process only enqueues; it cannot run {queue} tasks")


def register(
    hueys: dict[str, RedisHuey], build: Callable[[str], StageRuntime] | None = None
) -> dict[str, Any]:
    """Declare the tasks on these Huey instances; returns stage -> task (call it with a job id to enqueue)."""
    images, ai = hueys["images"], hueys["ai"]
    local = ProcessLocal(build or _no_runtime)

    @images.on_startup()
    def warm_images() -> None:
        local.get("images")

    @ai.on_startup()
    def warm_ai() -> None:
        local.get("ai")

    # retries=0: failures are handled by the stage runner against the job row, with backoff and a bound.
    # **_context: Sentry's Huey integration adds trace headers to messages when the enqueuing side has Sentry
    # on; a consumer without Sentry must still run them.
    # task_context tags the profiler's samples with the task, as request routes are on the API.
    @images.task(name="cutout", retries=0)
    def cutout(job_id: str, **_context: object) -> str:
        with task_context("cutout"):
            return local.get("images").cutout(job_id)

    @ai.task(name="analyze", retries=0)
    def analyze(job_id: str, **_context: object) -> str:
        with task_context("analyze"):
            return local.get("ai").analyze(job_id)

    @ai.task(name="capsule", retries=0)
    def capsule(job_id: str, **_context: object) -> str:
        with task_context("capsule"):
            return local.get("ai").capsule(job_id)

    return {"cutout": cutout, "analyze": analyze, "capsule": capsule}


class Enqueued(Protocol):
    def mark_enqueued(self, job_ids: list[str]) -> None: ...


class Dispatcher:
    """Hands committed jobs to Redis and records that it happened (the outbox's second half).

    Used by the API after its commit and by workers moving a job to its next stage. A failure to reach Redis is
    logged and left to the reaper: the job row is already safe in Postgres.
    """

    def __init__(
        self,
        tasks: dict[str, Any],
        jobs: Enqueued,
        on_error: Callable[[str], None] = lambda dependency: None,
    ) -> None:
        self._tasks = tasks  # stage -> huey TaskWrapper
        self._jobs = jobs
        self._on_error = on_error

    def send(self, jobs: Iterable[dict[str, Any]], *, delay: float = 0) -> int:
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
