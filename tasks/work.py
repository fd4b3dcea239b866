"""The runtime a consumer process builds for its queue, after fork: pool, image store, ledger, and the
background remover (images) or the analyzer (ai). `wardrobe.queue.register` calls the factory on first use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from tasks.stages import StageRunner
from wardrobe.config import Config
from wardrobe.ops.profiling import build_profiler
from wardrobe.queue import Dispatcher

log = logging.getLogger(__name__)


def db_pool_size(config: Config, queue: str) -> tuple[int, int]:
    """(size, overflow) of one consumer process's Postgres pool; the fleet's connection budget counts these."""
    return (2, 0) if queue == "images" else (min(config.ai_workers, 10), 5)


def runtime_builder(config: Config, redis_client: Any, tasks: dict[str, Any], processes: int = 1) -> Callable:
    """The factory consumers pass to `register`: what a worker process needs for its queue."""

    def build(queue: str) -> StageRunner:
        from wardrobe.clients.objectstore import image_store
        from wardrobe.store.capsules import Capsules
        from wardrobe.store.db import Pool
        from wardrobe.store.items import Items
        from wardrobe.store.jobs import JobLedger
        from wardrobe.store.users import Users

        size, overflow = db_pool_size(config, queue)
        pool = Pool(
            config.database_url,
            size=size,
            overflow=overflow,
            acquire_timeout=30,
            statement_timeout_ms=config.db_statement_timeout_ms,
            idle_tx_timeout_ms=config.db_idle_tx_timeout_ms,
            application_name=f"wardrobe-worker-{queue}",
            pooler=config.db_pooler,
        )
        from wardrobe.ops import observability

        observability.init_sentry(config.sentry_dsn, config.sentry_environment, f"worker-{queue}")
        _start_profiler(config, queue)
        pool = marked_writes(config, pool, queue)
        ledger = JobLedger(pool)
        # What a job records bumps its owner's version: memcached must hear of it as the API's writes do.
        versions = version_cache(config)
        writes = versions.publishing(pool) if versions else pool
        runner = StageRunner(
            items=Items(writes, max_attempts=config.job_max_attempts),
            capsules=Capsules(writes, max_attempts=config.job_max_attempts),
            users=Users(writes, versions=versions),
            store=image_store(config),  # one per process; an S3 client connects on first use
            ledger=ledger,
            send=Dispatcher(tasks, ledger, on_error=observability.dependency_error).send,
            lease_seconds=config.job_lease_seconds,
            observe=observability.job_finished,
            report=observability.report,
        )
        if queue == "images":
            from tasks.cutout.removal import BackgroundRemover

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
        else:
            runner.analyzer = build_analyzer(config, redis_client)
        log.info("worker runtime ready for the %s queue (pid %s)", queue, os.getpid())
        return runner

    return build


def version_cache(config: Config) -> Any:
    """The API's VersionCache over a small memcached client of the worker's own; None without memcached."""
    if not config.memcached_servers or not config.version_cache_ttl:
        return None
    from wardrobe.store.users import VersionCache

    return VersionCache(_memcached(config), config.version_cache_ttl)


def marked_writes(config: Config, pool: Any, queue: str) -> Any:
    """With replicas, what a job records keeps its owner's reads on the primary until a replica has replayed it,
    as the API's writes do (store/replicas.py); the workers themselves read only from the primary."""
    if not config.database_replica_urls or not config.memcached_servers:
        return pool
    from wardrobe.ops import metrics
    from wardrobe.store.replicas import with_replicas

    return with_replicas(
        config,
        pool,
        _memcached(config),
        application_name=f"wardrobe-worker-{queue}",
        observer=metrics.ReplicaMetrics(),
        read_from_replicas=False,
    )


def _memcached(config: Config) -> Any:
    """A small memcached client of the worker's own."""
    from wardrobe.clients.cache import Cache
    from wardrobe.ops import observability

    return Cache(
        config.memcached_servers,
        max_pool_size=config.memcached_pool_size,  # opened lazily: a worker uses a few
        connect_timeout=config.memcached_timeout,
        timeout=config.memcached_timeout,
        on_error=observability.cache_error,
    )


def build_analyzer(config: Config, redis_client: Any) -> Any:
    from tasks.analysis.ai import LocalAnalyzer, OpenAIAnalyzer

    if not config.openai_api_keys:
        return LocalAnalyzer(max_image_pixels=config.max_image_pixels)
    from tasks.analysis.openai_keys import OpenAIKeyPool

    keys = OpenAIKeyPool(
        redis_client,
        config.openai_api_keys,
        rpm=config.openai_rpm,
        tpm=config.openai_tpm,
        headroom=config.openai_headroom,
        window=config.openai_window,
    )
    from wardrobe.ops import observability

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
    profiler, pusher = build_profiler(config, role="worker", queue=queue)
    if pusher is not None:
        pusher.start()
    if profiler is not None:
        profiler.start()
