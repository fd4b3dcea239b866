"""Start real processes for integration tests (gunicorn, consumers) and wait until they answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


class Process:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._handle = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._handle.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def gunicorn(env: dict[str, str], log: Path, workers: int = 2) -> tuple[Process, str]:
    port = free_port()
    env = {**env, "WARDROBE_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": str(workers)}
    proc = Process([str(BIN / "gunicorn"), "-c", str(ROOT / "conf/gunicorn.conf.py")], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", proc=proc.proc)
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
    return Process([str(BIN / "wardrobe-worker"), queue, *extra], env, log)


class Memcached:
    """One memcached process in the foreground, so the test owns its pid and can kill and restart it."""

    def __init__(self, port: int):
        self.port = port
        self.server = f"127.0.0.1:{port}"
        self._process: subprocess.Popen | None = None

    def start(self) -> Memcached:
        self._process = subprocess.Popen(
            ["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(self.port), "-m", "16"]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"memcached did not start on port {self.port}")

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None
