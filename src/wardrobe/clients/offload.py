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
        ok, value = self._pool.spawn(_outcome, fn, args).get()
        if ok:
            return value
        raise value


def _outcome(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    # An exception escaping a pool thread is printed by gevent's hub with its traceback even when the caller
    # handles it, as for every rejected upload (a 4xx, not a bug). Carried back as a value and raised in the
    # caller instead, it meets the app's error handlers, which log the bugs.
    try:
        return True, fn(*args)
    except Exception as exc:  # noqa: BLE001 - re-raised by the caller
        return False, exc
