"""Per-user rate limits shared by every backend: a sliding-window log in Redis, checked by one Lua script.

Sliding log (not GCRA) because the promise to users is "at most N per any T seconds", which a log keeps
exactly; at N <= a few dozen per rule a sorted set of timestamps per user is cheap.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis

DEFAULT_RULES: dict[str, tuple[int, int]] = {"upload": (30, 60), "capsule": (10, 60), "brands": (60, 60)}

# Time comes from Redis TIME so all backends share one clock; milliseconds keep scores exact in Lua's
# doubles (13 digits, inside the 14 Lua prints). Returns {allowed, remaining, ms until a slot frees}.
_SLIDING_WINDOW = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window_ms)
local used = redis.call('ZCARD', key)
local allowed = 0
if used < limit then
  redis.call('ZADD', key, now, t[1] .. '.' .. t[2] .. '.' .. ARGV[3])
  redis.call('PEXPIRE', key, window_ms)
  used = used + 1
  allowed = 1
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local free_in = window_ms
if oldest[2] then
  free_in = tonumber(oldest[2]) + window_ms - now
end
return {allowed, limit - used, free_in}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after: int | None = None


def _count_nothing(rule: str) -> None:
    pass


class UserRateLimiter:
    """`check(user_id, rule)` consumes one unit of the user's quota for that rule when allowed.

    When Redis is unreachable the check fails open (the request goes through) and `on_fail_open(rule)`
    is called, so an outage of the limiter never becomes an outage of the app.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        rules: Mapping[str, tuple[int, int]] = DEFAULT_RULES,
        on_fail_open: Callable[[str], None] = _count_nothing,
        key_prefix: str = "w:rl",
    ):
        for name, (limit, window) in rules.items():
            if limit < 1 or window < 1:
                raise ValueError(f"rule {name!r} needs limit >= 1 and window >= 1 s")
        self._rules = dict(rules)
        self._on_fail_open = on_fail_open
        self._prefix = key_prefix
        self._script = redis_client.register_script(_SLIDING_WINDOW)

    def check(self, user_id: int, rule: str) -> Decision:
        limit, window = self._rules[rule]
        key = f"{self._prefix}:{rule}:{user_id}"
        try:
            allowed, remaining, free_in_ms = self._script(
                keys=[key], args=[limit, window * 1000, secrets.token_hex(4)]
            )
        except (redis.ConnectionError, redis.TimeoutError):
            self._on_fail_open(rule)
            return Decision(allowed=True, limit=limit, remaining=limit, reset_seconds=0)
        reset = max(1, math.ceil(int(free_in_ms) / 1000))
        if allowed:
            return Decision(True, limit, int(remaining), reset)
        return Decision(False, limit, 0, reset, retry_after=reset)


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """Response headers with the IETF httpapi-ratelimit-headers draft names, plus Retry-After on denial."""
    headers = {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_seconds),
    }
    if not decision.allowed and decision.retry_after is not None:
        headers["Retry-After"] = str(decision.retry_after)
    return headers
