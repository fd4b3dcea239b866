"""The tasks, registered on the queues' Huey instances, and the per-process runtime they use.

Both the API (to enqueue) and the consumers (to run) call `register`; only consumers ever build a runtime, in
`on_startup`, after fork — so the API never opens a model or an OpenAI client.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from huey import RedisHuey

from wardrobe.config import Config
from wardrobe.profiling import task_context

from .dispatch import Dispatcher
from .stages import StageRunner

log = logging.getLogger(__name__)


class ProcessLocal:
    """One runtime per process (and per queue), built on first use after fork, shared by its greenlets."""

    def __init__(self, build: Callable[[str], StageRunner]) -> None:
        self._build = build
        self._made: dict[tuple[int, str], StageRunner] = {}
        self._lock = threading.Lock()

    def get(self, queue: str) -> StageRunner:
        key = (os.getpid(), queue)
        runner = self._made.get(key)
        if runner is None:
            with self._lock:
                runner = self._made.get(key)
                if runner is None:
                    runner = self._made[key] = self._build(queue)
        return runner


def _no_runtime(queue: str) -> StageRunner:
    raise RuntimeError(f"this process only enqueues; it cannot run {queue} tasks")


def register(
    hueys: dict[str, RedisHuey], build: Callable[[str], StageRunner] | None = None
) -> dict[str, Any]:
    """Define the tasks on these Huey instances; returns stage -> task (call it with a job id to enqueue)."""
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


def runtime_builder(config: Config, redis_client: Any, tasks: dict[str, Any], processes: int = 1) -> Callable:
    """The factory consumers pass to `register`: what a worker process needs for its queue."""

    def build(queue: str) -> StageRunner:
        from wardrobe.db import Pool
        from wardrobe.images import ImageStore
        from wardrobe.jobs import JobLedger

        pool = Pool(
            config.database_url,
            size=2 if queue == "images" else min(config.ai_workers, 10),
            overflow=0 if queue == "images" else 5,
            acquire_timeout=30,
            statement_timeout_ms=config.db_statement_timeout_ms,
            idle_tx_timeout_ms=config.db_idle_tx_timeout_ms,
            application_name=f"wardrobe-worker-{queue}",
        )
        from wardrobe import observability

        observability.init_sentry(config.sentry_dsn, config.sentry_environment, f"worker-{queue}")
        _start_profiler(config, queue)
        ledger = JobLedger(pool)
        runner = StageRunner(
            pool=pool,
            store=ImageStore(config.images_dir),
            ledger=ledger,
            send=Dispatcher(tasks, ledger, on_error=observability.dependency_error).send,
            lease_seconds=config.job_lease_seconds,
            observe=observability.job_finished,
            report=observability.report,
        )
        if queue == "images":
            from .removal import BackgroundRemover

            # A worker box splits its cores among the processes; a box shared with the API runs one thread (the
            # same work for ~7 % less CPU per cutout: a second ONNX thread only pays off on idle cores).
            threads = config.onnx_threads or max(1, (os.cpu_count() or 1) // max(processes, 1))
            runner.remover = BackgroundRemover(
                config.rembg_model,
                config.u2net_home,
                threads=threads,
                max_side=config.image_max_side,
                precision=config.cutout_precision,
            )
            log.info("cutouts run on %s with %d thread(s)", runner.remover.engine, threads)
            from .priority import CatchUp

            # Beside the API (nice 10): at the API's priority while uploads wait longer than this.
            runner.on_claim = CatchUp(config.image_catchup_seconds).job_claimed
        else:
            runner.analyzer = build_analyzer(config, redis_client)
        log.info("worker runtime ready for the %s queue (pid %s)", queue, os.getpid())
        return runner

    return build


def build_analyzer(config: Config, redis_client: Any) -> Any:
    from wardrobe.ai import LocalAnalyzer, OpenAIAnalyzer

    if not config.openai_api_keys:
        return LocalAnalyzer(max_image_pixels=config.max_image_pixels)
    from wardrobe.openai_limiter import OpenAIKeyPool

    keys = OpenAIKeyPool(
        redis_client,
        config.openai_api_keys,
        rpm=config.openai_rpm,
        tpm=config.openai_tpm,
        headroom=config.openai_headroom,
        window=config.openai_window,
    )
    from wardrobe import observability

    return OpenAIAnalyzer(
        keys,
        base_url=config.openai_base_url,
        model=config.openai_model,
        timeout=config.openai_timeout,
        connect_timeout=config.openai_connect_timeout,
        max_wait=config.openai_max_wait,
        max_image_pixels=config.max_image_pixels,
        observe=observability.openai_call,
    )


def _start_profiler(config: Config, queue: str) -> None:
    """Each worker process profiles itself like the API does, tagged role=worker and by task."""
    from wardrobe.app import _profiler

    profiler, pusher = _profiler(config, role="worker", queue=queue)
    if pusher is not None:
        pusher.start()
    if profiler is not None:
        profiler.start()
