"""`wardrobe-worker images|ai`: a Huey consumer for one queue (imports the queues and the tasks, then runs).

images: process workers (CPU-bound rembg), recycled after N tasks. ai: greenlet workers (IO-bound OpenAI calls).
The reaper runs beside every consumer unless `--no-periodic` (a Redis lock lets one act at a time).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a Wardrobe background worker.")
    parser.add_argument("queue", choices=["images", "ai"])
    parser.add_argument("--workers", type=int, help="processes (images) or greenlets (ai)")
    parser.add_argument(
        "--no-periodic", action="store_true", help="do not run the reaper beside this consumer"
    )
    parser.add_argument("--flush-locks", action="store_true", help="clear Huey locks left by a crash")
    args = parser.parse_args(argv)

    if args.queue == "ai":
        # Before anything opens a socket: every OpenAI/Postgres/Redis wait must yield to other greenlets.
        from gevent import monkey

        monkey.patch_all()
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()

    from huey.consumer import Consumer

    from tasks import work
    from wardrobe import queue
    from wardrobe.clients.redis_client import connect
    from wardrobe.config import Config, ConfigError

    try:
        config = Config.from_env()
    except ConfigError as exc:
        sys.exit(f"wardrobe: {exc}")
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s"
    )
    from tasks import logs

    logs.install()
    # Before anything imports prometheus_client: this consumer's processes share one metrics directory.
    metrics_dir = config.export_metrics_dir(f"worker-{args.queue}")
    from wardrobe.ops import metrics

    metrics.wipe_multiproc_dir(metrics_dir)
    if config.worker_metrics_bind:
        metrics.start_worker_metrics_server(
            config.worker_metrics_bind, metrics_dir, role=f"worker-{args.queue}"
        )
    workers = args.workers or (config.image_workers if args.queue == "images" else config.ai_workers)
    client = connect(config.redis_url, pool_size=workers + 10, timeout=max(config.redis_timeout, 2.0))
    hueys = queue.build(client)
    tasks: dict = {}
    tasks.update(queue.register(hueys, work.runtime_builder(config, client, tasks, processes=workers)))

    if not args.no_periodic:
        _start_reaper(config, client, tasks)

    consumer = Consumer(
        hueys[args.queue],
        workers=workers,
        worker_type="process" if args.queue == "images" else "greenlet",
        periodic=False,  # our reaper replaces Huey's minute-grained periodic tasks
        check_worker_health=True,
        health_check_interval=5,
        max_tasks=config.image_worker_max_tasks if args.queue == "images" else None,
        flush_locks=args.flush_locks,
        initial_delay=0.05,
        max_delay=1.0,
    )
    consumer.run()


def _start_reaper(config, client, tasks) -> None:
    # A separate process, forked before the consumer forks or spawns anything (no threads to inherit).
    def run(parent: int) -> None:
        # Ctrl-C reaches the whole process group; the consumer shuts down on it and ends this daemon process as it
        # exits (SIGTERM), so here SIGINT would only print a KeyboardInterrupt traceback out of a sleep.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from tasks.reaper import Reaper
        from wardrobe.queue import Dispatcher
        from wardrobe.store.capsules import Capsules
        from wardrobe.store.db import Pool
        from wardrobe.store.items import Items
        from wardrobe.store.jobs import JobLedger

        pool = Pool(
            config.database_url,
            size=1,
            overflow=0,
            acquire_timeout=30,
            application_name="wardrobe-reaper",
            pooler=config.db_pooler,
        )
        ledger = JobLedger(pool)
        items, capsules = Items(pool), Capsules(pool)
        from wardrobe.ops import observability

        Reaper(
            ledger,
            Dispatcher(tasks, ledger, on_error=observability.dependency_error).send,
            client,
            interval=config.reaper_interval,
            grace=config.reaper_grace,
            stale=config.job_lease_seconds,
            observe_backlog=observability.queue_backlog,
            give_up=lambda job, error: (items if job["item_id"] else capsules).job_failed(job, error),
        ).run_forever(parent_pid=parent)

    process = multiprocessing.get_context("fork").Process(
        target=run, args=(os.getpid(),), name="reaper", daemon=True
    )
    process.start()


if __name__ == "__main__":
    main()
