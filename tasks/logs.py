"""The consumers' log: Redis out of reach (down, or a Sentinel failover under way) is a warning line a second per
kind of event, not a traceback from every greenlet or process that touches the queue."""

from __future__ import annotations

import logging
import time

import redis.exceptions

# What Huey's consumer logs, the exception attached, when a queue or schedule read raises, or when the bookkeeping
# after a task (its result or lock data) does. Our tasks are idempotent and fenced by their claim, and the reaper
# resends what was not acknowledged, so none of these loses work while Redis is away.
_HUEY_EVENTS = (
    "Error reading from queue",
    "Error reading schedule.",
    "Unhandled error during execution of task %s.",
)
_OUTAGES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)


class RedisOutage(logging.Filter):
    def __init__(self, every: float = 1.0, clock=time.monotonic) -> None:
        super().__init__()
        self._every = every
        self._clock = clock
        self._next: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in _HUEY_EVENTS or not record.exc_info:
            return True
        exc = record.exc_info[1]
        if not isinstance(exc, _OUTAGES):
            return True  # anything else is a bug: its traceback stays
        event, now = record.msg, self._clock()
        if now < self._next.get(event, 0.0):
            self._dropped[event] = self._dropped.get(event, 0) + 1
            return False
        self._next[event] = now + self._every
        dropped = self._dropped.pop(event, 0)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "%s (Redis unreachable: %s: %s)%s"
        record.args = (
            event % record.args if record.args else event,
            type(exc).__name__,
            exc,
            f"; {dropped} more like it in the last {self._every:g} s" if dropped else "",
        )
        record.exc_info = record.exc_text = None
        return True


def install() -> None:
    """On the root handlers, so that it sees the records of Huey's per-process loggers too."""
    outage = RedisOutage()
    for handler in logging.getLogger().handlers:
        handler.addFilter(outage)
