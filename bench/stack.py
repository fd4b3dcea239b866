"""Starts and stops what a benchmark runs against: the Wardrobe stack or the original-architecture baseline, and
(`start_isolated`) the gunicorns and memcached of the same-run A/B benches and of the floor.

Postgres and Redis are the machine's own (assumed running); everything else is started here, each in its own
process group so that stopping it takes its children too, and stopped again even when the run fails.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

from harness.processes import (
    ROOT,
    Child,
    free_port,
    gunicorn_argv,
    memcached_argv,
    wait_http,
    wait_port,
    worker_argv,
)

BENCH_BOT_TOKEN = "7000000000:BENCH-bot-token-for-load-tests-only"
OPENAI_KEY = "sk-bench-local"
# Settings a developer's shell might export that would make an isolated child differ from what a run says.
_INHERITED_PREFIXES = ("WARDROBE_", "GUNICORN_", "PROMETHEUS_MULTIPROC_DIR")


def start_isolated(argv: list[str], env: dict[str, str], log: Path) -> Child:
    """A child of a micro-benchmark: in its own session (the terminal's Ctrl-C reaches only the bench), stopped
    with its whole group (SIGKILL after 15 s), sent SIGTERM should the bench die first, and given none of the
    WARDROBE_/GUNICORN_ settings of the shell it was started from."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
    return Child(argv, env, log, environ=environ, stop_timeout=15.0, die_with_parent=True)


@dataclasses.dataclass
class StackSettings:
    database_url: str
    data_dir: Path
    log_dir: Path
    redis_url: str = "redis://127.0.0.1:6379/3"
    api_workers: int = 2
    openai_rpm: int = 500  # per key, as OpenAI limits it
    openai_keys: int = 1  # keys the workers rotate through, each with its own RPM and TPM budget
    openai_latency_ms: int = 200
    u2net_home: Path = ROOT / "var" / "models"
    bot_token: str = BENCH_BOT_TOKEN
    with_workers: bool = True
    image_workers: int = 1  # processes of the images consumer (a shared box keeps one: see bench/README.md)
    worker_nice: bool = True  # below the API when they share a box
    # When worker_nice: None runs the images consumer SCHED_IDLE as scripts/run.sh does; N runs it at nice N
    # instead (the ai consumer is at nice 5 either way).
    images_nice: int | None = None
    cutout_precision: str = "auto"  # WARDROBE_CUTOUT_PRECISION of the images consumer
    defer_ai_worker: bool = False  # bench-jobs starts it once a backlog of analyses has built up


class Stack:
    """A set of started processes with one `stop()`; `roles()` maps role names to root pids for sampling."""

    kind = "stack"

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.started: list[Child] = []
        self.base_url = ""
        self.openai_url = ""
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        settings.data_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def spawn(
        self, role: str, argv: list[str], env: dict[str, str], stop_signal: int = signal.SIGTERM
    ) -> Child:
        started = Child(
            argv,
            env,
            self.settings.log_dir / f"{role}.log",
            name=role,
            append=True,
            # Own process group (stopped as one) but the same session: one autogroup for the whole bench, so
            # the scheduler honours the workers' nice against the API as it does under `make run`.
            session=False,
            stop_signal=stop_signal,
        )
        self.started.append(started)
        return started

    def openai_keys(self) -> list[str]:
        count = max(1, self.settings.openai_keys)
        return [OPENAI_KEY] + [f"{OPENAI_KEY}-{n}" for n in range(2, count + 1)]

    def start_openai(self) -> None:
        port = free_port()
        self.spawn(
            "openai-fake",
            [
                sys.executable,
                "-m",
                "tests.fakes.openai_server",
                "--port",
                str(port),
                "--rpm",
                str(self.settings.openai_rpm),
                "--latency-ms",
                str(self.settings.openai_latency_ms),
                "--keys",
                ",".join(self.openai_keys()),
            ],
            {},
        )
        wait_port(port, 20)
        self.openai_url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        # Workers first (they stop taking jobs), then the API, then what they depend on.
        for started in reversed(self.started):
            started.stop()
        self.started.clear()

    def roles(self) -> dict[str, int]:
        return {s.name: s.pid for s in self.started if s.alive()}

    def check_alive(self) -> list[str]:
        return [f"{s.name} exited with {s.proc.returncode}" for s in self.started if not s.alive()]

    def start(self) -> None:
        raise NotImplementedError


class WardrobeStack(Stack):
    """The API under gunicorn/gevent, both Huey workers at lower priority, memcached and the OpenAI fake."""

    kind = "wardrobe"

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            "WARDROBE_DATABASE_URL": s.database_url,
            "WARDROBE_DATA_DIR": str(s.data_dir),
            "WARDROBE_TELEGRAM_BOT_TOKEN": s.bot_token,
            "WARDROBE_REDIS_URL": s.redis_url,
            "WARDROBE_MEMCACHED_SERVERS": f"127.0.0.1:{self.memcached_port}",
            "WARDROBE_OPENAI_API_KEYS": ",".join(self.openai_keys()),
            "WARDROBE_OPENAI_BASE_URL": self.openai_url,
            "WARDROBE_OPENAI_RPM": str(s.openai_rpm),
            "WARDROBE_U2NET_HOME": str(s.u2net_home),
            "WARDROBE_BIND": f"127.0.0.1:{self.api_port}",
            "GUNICORN_WORKERS": str(s.api_workers),
            "WARDROBE_IMAGE_WORKERS": str(s.image_workers),
            # Beside the API one ONNX thread costs less CPU per cutout; bench-jobs gives the box to the workers.
            "WARDROBE_ONNX_THREADS": "1" if s.worker_nice else "0",
            "WARDROBE_CUTOUT_PRECISION": s.cutout_precision,
        }

    def start(self) -> None:
        import redis

        redis.Redis.from_url(self.settings.redis_url).flushdb()  # only the bench's own database index
        self.memcached_port = free_port()
        self.spawn("memcached", memcached_argv(self.memcached_port, 256, "-c", "16384", "-t", "2"), {})
        wait_port(self.memcached_port, 10)
        self.start_openai()
        self.api_port = free_port()
        env = self.env()
        if self.settings.with_workers:
            self.start_worker("images")
            if not self.settings.defer_ai_worker:
                self.start_worker("ai")
        api = self.spawn("api", gunicorn_argv(), env)
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        wait_http(self.base_url + "/healthz", 60, api)

    def start_worker(self, queue: str) -> None:
        # As scripts/run.sh does on a shared box: a backlog of images must not slow requests.
        priority: list[str] = []
        if self.settings.worker_nice:
            if queue == "images" and self.settings.images_nice is None:
                priority = ["chrt", "--idle", "0"]
            else:
                priority = ["nice", "-n", str(self.settings.images_nice if queue == "images" else 5)]
        self.spawn(f"worker-{queue}", [*priority, *worker_argv(queue)], self.env(), signal.SIGINT)


class BaselineStack(Stack):
    """The original architecture: Flask under gunicorn gthread, rembg and OpenAI inside the request."""

    kind = "baseline"

    def start(self) -> None:
        self.start_openai()
        self.api_port = free_port()
        s = self.settings
        env = {
            "BASELINE_DATABASE_URL": s.database_url,
            "BASELINE_DATA_DIR": str(s.data_dir),
            "BASELINE_BOT_TOKEN": s.bot_token,
            "BASELINE_OPENAI_API_KEY": OPENAI_KEY,
            "BASELINE_OPENAI_BASE_URL": self.openai_url,
            "BASELINE_BIND": f"127.0.0.1:{self.api_port}",
            "U2NET_HOME": str(s.u2net_home),
        }
        api = self.spawn("api", gunicorn_argv("bench/baseline/gunicorn.conf.py"), env)
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        wait_http(self.base_url + "/healthz", 120, api)


STACKS = {"wardrobe": WardrobeStack, "baseline": BaselineStack}
