"""Real OS threads, locks and sleeps for the profiler, even after gevent has monkey-patched the stdlib.

A patched thread is a greenlet: it would only run when the hub is idle, so it could never sample a busy hub.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def _original(module: str, name: str) -> Any:
    try:
        from gevent import monkey
    except ImportError:
        return getattr(importlib.import_module(module), name)
    return monkey.get_original(module, name)


start_new_thread: Callable[..., int] = _original("_thread", "start_new_thread")
get_ident: Callable[[], int] = _original("_thread", "get_ident")
allocate_lock: Callable[[], Any] = _original("_thread", "allocate_lock")
sleep: Callable[[float], None] = _original("time", "sleep")

# Idents of the threads the profiling package runs itself; the sampler leaves them out of every profile.
OWN_THREADS: set[int] = set()


class RealEvent:
    """A one-shot flag an OS thread can block on without involving any gevent hub."""

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Block the calling OS thread up to `timeout` seconds; True once the flag is set."""
        if self._set:
            return True
        if self._lock.acquire(True, max(timeout, 0.0)):
            self._lock.release()
        return self._set


def spawn(target: Callable[[], None]) -> RealEvent:
    """Run `target` on a new OS thread; the returned event is set when it has finished."""
    finished = RealEvent()

    def run() -> None:
        OWN_THREADS.add(get_ident())
        try:
            target()
        finally:
            OWN_THREADS.discard(get_ident())
            finished.set()

    start_new_thread(run, ())
    return finished


class Signal:
    """A re-armable wake-up: any number of `notify` calls before a `wait` wake it once."""

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()

    def notify(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # already notified and not yet consumed

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(True, max(timeout, 0.0))
