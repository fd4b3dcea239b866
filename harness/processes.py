"""What tests and benchmarks share: starting and stopping child processes, free ports, waiting for a port or an
HTTP answer.

A `Child` runs in a process group of its own with its output in a log file; `stop_process` is the one way to stop
one: a graceful signal to the whole group, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (as of now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn_argv(conf: str = "conf/gunicorn.conf.py", *extra: str) -> list[str]:
    """The virtualenv's gunicorn with a config file from the repository."""
    return [str(BIN / "gunicorn"), "-c", str(ROOT / conf), *extra]


def worker_argv(queue: str, *extra: str) -> list[str]:
    """A Huey consumer of one queue, as the installed `wardrobe-worker` runs it."""
    return [str(BIN / "wardrobe-worker"), queue, *extra]


def memcached_argv(port: int, memory_mb: int, *extra: str) -> list[str]:
    """memcached in the foreground on 127.0.0.1:`port` (as root, where the tests and benchmarks run)."""
    return ["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-m", str(memory_mb), *extra]


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Stop `proc` and its process group: `sig`, up to `timeout` s for it to exit, then SIGKILL.

    One that has already exited is left alone; one that leads no group of its own gets the signals alone.
    """
    if proc.poll() is not None:
        return
    _signal_group(proc, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        proc.send_signal(sig)  # no group of that id: the process alone (a no-op once it has exited)


def _die_with_parent() -> None:
    # A backstop for `kill -9` of the parent: the child gets SIGTERM when the parent vanishes.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """A process started from the repository root, stdout and stderr to `log`, stopped with its whole group.

        session=True gives it a session of its own (the terminal's Ctrl-C reaches only the parent);
        session=False keeps it in the parent's session, in a group of its own, so that the scheduler's autogroup
        (and with it `nice` between children) is the same as the parent's. `environ` is the environment `env` is
        laid over (default: this process's); `stop()` sends `stop_signal` and waits `stop_timeout` s before SIGKILL,
    unless told otherwise.
    """

    def __init__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        log: Path,
        *,
        name: str = "",
        session: bool = True,
        append: bool = False,
        environ: Mapping[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 20.0,
        die_with_parent: bool = False,
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.name = name or log.stem
        self.log = log
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        with log.open("ab" if append else "wb") as handle:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**(os.environ if environ is None else environ), **env},
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=session,
                process_group=None if session else 0,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int | None = None, timeout: float | None = None) -> None:
        stop_process(
            self.proc,
            self.stop_signal if sig is None else sig,
            self.stop_timeout if timeout is None else timeout,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]


Watched = subprocess.Popen | Child


def wait_until(
    ready: Callable[[], bool],
    what: str,
    timeout: float,
    proc: Watched | None = None,
    interval: float = 0.1,
) -> None:
    """Poll `ready` until it returns true (an OSError counts as not yet).

    TimeoutError after `timeout` s; RuntimeError as soon as `proc` exits, with the end of its log if it is a
    `Child`.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        popen = proc.proc if isinstance(proc, Child) else proc
        if popen is not None and popen.poll() is not None:
            tail = f"\n{proc.tail()}" if isinstance(proc, Child) else ""
            raise RuntimeError(f"process exited with {popen.returncode} before {what} was ready{tail}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready within {timeout} s")


def wait_port(port: int, timeout: float = 10.0, proc: Watched | None = None) -> None:
    """Until something accepts connections on 127.0.0.1:`port`."""

    def listening() -> bool:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True

    wait_until(listening, f"port {port}", timeout, proc, interval=0.05)


def wait_http(url: str, timeout: float = 30.0, proc: Watched | None = None) -> None:
    """Until `url` answers a GET with a success (urllib raises on 4xx and 5xx, which count as not yet)."""

    def answers() -> bool:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (http URLs of our own children)
            return resp.status < 500

    wait_until(answers, url, timeout, proc)
