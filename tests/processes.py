"""Real processes for integration tests (gunicorn, consumers, a private redis-server, memcached), started and
waited for with the helpers the benchmarks use too (harness.processes), and a flushed database of the machine's
own Redis (`local_redis`)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from harness import processes as harness
from harness.processes import ROOT, free_port

__all__ = ["ROOT", "Memcached", "Process", "RedisServer", "free_port", "gunicorn", "local_redis", "worker"]

# A test's process: its own session, output in a fresh log file; stop(sig=SIGTERM, timeout=20) takes its group.
Process = harness.Child


def gunicorn(env: dict[str, str], log: Path, workers: int = 2) -> tuple[Process, str]:
    port = free_port()
    env = {**env, "WARDROBE_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": str(workers)}
    proc = Process(harness.gunicorn_argv(), env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        harness.wait_http(base + "/healthz", proc=proc.proc)
    except Exception:
        proc.stop()
        raise RuntimeError(proc.output()[-4000:]) from None
    return proc, base


class RedisServer:
    """A private redis-server on a free port, so a test can take it down and bring it back."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = log
        self.process: Process | None = None

    def start(self) -> RedisServer:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.process = Process(argv, {}, self._log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGKILL)
            self.process = None


def worker(queue: str, env: dict[str, str], log: Path, *extra: str) -> Process:
    return Process(harness.worker_argv(queue, *extra), env, log)


class Memcached:
    """One memcached process in the foreground, so the test owns its pid and can kill and restart it."""

    def __init__(self, port: int):
        self.port = port
        self.server = f"127.0.0.1:{port}"
        self._process: subprocess.Popen | None = None

    def start(self) -> Memcached:
        self._process = subprocess.Popen(harness.memcached_argv(self.port, 16))
        try:
            harness.wait_port(self.port, 10)
        except TimeoutError:
            raise RuntimeError(f"memcached did not start on port {self.port}") from None
        return self

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None


@contextmanager
def local_redis(db: int) -> Iterator[redis.Redis]:
    """A client of one database of the machine's own Redis, flushed before and after."""
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()
