"""Run CPU-heavy calls (image decoding) on native threads so a gevent worker's hub keeps serving others."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wardrobe.green import gevent_active


class ThreadOffload:
    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._pool: Any = None

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not gevent_active():
            return fn(*args)  # plain WSGI server or tests: nothing to protect
        if self._pool is None:
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(self._threads)
        # Pillow releases the GIL while decoding/encoding, so this overlaps with request handling.
        return self._pool.spawn(fn, *args).get()
