"""Real OS threads, locks and sleeps for the profiler, even after gevent has monkey-patched the stdlib.

A patched thread is a greenlet: it would only run when the hub is idle, so it could never sample a busy hub.
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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


class Handoff(Generic[T]):
    """Items handed over from a sampler tick, which must never block, and handled one at a time on a real OS
    thread of their own. A full queue drops the newest item: the tick never waits for disk or network."""

    def __init__(self, queue_size: int) -> None:
        self._queue: deque[T] = deque()
        self._queue_size = queue_size
        self._wake = Signal()
        self._stop: RealEvent | None = None
        self._finished: RealEvent | None = None

    @property
    def running(self) -> bool:
        return self._stop is not None and not self._stop.is_set()

    def offer(self, item: T) -> bool:
        if len(self._queue) >= self._queue_size:
            return False
        self._queue.append(item)
        self._wake.notify()
        return True

    def start(self) -> None:
        if not self.running:
            self._stop = RealEvent()
            self._finished = spawn(self._run)

    def stop(self, timeout: float) -> None:
        """Stop after handling what is queued, waiting at most `timeout` seconds."""
        if self._stop is None:
            return
        self._stop.set()
        self._wake.notify()
        if self._finished is not None:
            self._finished.wait(timeout)

    def handle(self, item: T) -> float:
        """Deal with one item; returns how long to pause before the next (0: none)."""
        raise NotImplementedError

    def _run(self) -> None:
        stop = self._stop
        assert stop is not None
        while True:
            if not self._queue:
                if stop.is_set():
                    return
                self._wake.wait(1.0)
                continue
            pause = self.handle(self._queue.popleft())
            if pause and stop.wait(pause):
                return
