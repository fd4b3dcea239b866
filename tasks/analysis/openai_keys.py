"""Request and token budgets of our OpenAI keys, kept in Redis so every worker on every box shares them.

Each key is paced by GCRA (one Lua script per decision, time from Redis `TIME`), and can be blocked for a
while after a 429 or when OpenAI's rate-limit headers say it is exhausted.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis import Redis

_US = 1_000_000

# Per key alias i the script sees four Redis keys: request TAT, token TAT, blocked-until, observed limits.
# All times are microseconds since the epoch by Redis's own clock, so boxes with skewed clocks agree.
_GCRA_PARAMS = """
local function budget(config_limit, observed, headroom, window)
  local limit = config_limit
  if observed and observed > 0 and observed < limit then limit = observed end
  local planned = limit * (1 - headroom)
  local interval = window / planned
  local burst = math.max(1, math.floor(limit * headroom / 2))
  return interval, burst * interval
end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- A time already past means the same as no key at all (an idle budget, an expired block).
local function store(key, value, now)
  if value <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%.0f', value), 'PX', math.ceil((value - now) / 1000) + 1000)
  end
end
"""

_ACQUIRE = (
    _GCRA_PARAMS
    + """
-- KEYS[1] rotation counter, then 4 keys per alias. ARGV: rpm, tpm, window_us, headroom, tokens, max_wait_us
local rpm, tpm, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local headroom, tokens, max_wait = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_us()
local count = (#KEYS - 1) / 4
local start = redis.call('INCR', KEYS[1]) % count
redis.call('PEXPIRE', KEYS[1], 86400000)
local best, best_wait, best_room, best_req, best_tok
for j = 0, count - 1 do
  local i = (start + j) % count
  local base = 2 + i * 4
  local limits = redis.call('HMGET', KEYS[base + 3], 'rpm', 'tpm')
  local r_int, r_cap = budget(rpm, tonumber(limits[1]), headroom, window)
  local r_tat = tonumber(redis.call('GET', KEYS[base]) or '0')
  local blocked = tonumber(redis.call('GET', KEYS[base + 2]) or '0')
  -- The earliest moment this key may send: after any block, and when both budgets conform.
  local at = math.max(now, blocked)
  at = math.max(at, math.max(r_tat, at) + r_int - r_cap)
  local t_int, t_cap, t_tat, cost
  if tpm > 0 and tokens > 0 then
    t_int, t_cap = budget(tpm, tonumber(limits[2]), headroom, window)
    cost = tokens * t_int
    t_cap = math.max(t_cap, cost)
    t_tat = tonumber(redis.call('GET', KEYS[base + 1]) or '0')
    at = math.max(at, math.max(t_tat, at) + cost - t_cap)
  end
  -- Stamp both budgets at the moment the request will really go, so a wait on one never lets the
  -- other admit more than its share in any window.
  local new_req = math.max(r_tat, at) + r_int
  local room = (r_cap - (new_req - at)) / r_cap
  local new_tok
  if cost then
    new_tok = math.max(t_tat, at) + cost
    room = math.min(room, (t_cap - (new_tok - at)) / t_cap)
  end
  local wait = at - now
  if best == nil or wait < best_wait - 1000 or (wait <= best_wait + 1000 and room > best_room) then
    best, best_wait, best_room, best_req, best_tok = i, wait, room, new_req, new_tok
  end
end
if best_wait > max_wait then
  return {-1, math.ceil(best_wait)}
end
local base = 2 + best * 4
store(KEYS[base], best_req, now)
if best_tok then store(KEYS[base + 1], best_tok, now) end
return {best, math.ceil(best_wait)}
"""
)

_OBSERVE = (
    _GCRA_PARAMS
    + """
-- KEYS: request TAT, token TAT, blocked-until, limits of one alias.
-- ARGV: rpm, tpm, window_us, headroom, then per budget (requests, tokens): limit, remaining, reset_us.
-- -1 means the header was absent; -2 an unusable (negative) value.
local rpm, tpm, window, headroom = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_us()
local blocked = tonumber(redis.call('GET', KEYS[3]) or '0')
local function tighten(config_limit, field, tat_key, limit, remaining, reset)
  if config_limit <= 0 or limit == 0 or limit < -1 then return end
  if limit > 0 then
    redis.call('HSET', KEYS[4], field, limit)
    redis.call('PEXPIRE', KEYS[4], 3600000)
  end
  if remaining < 0 then return end
  if remaining == 0 then
    if reset > 0 then blocked = math.max(blocked, now + reset) end
    return
  end
  local interval, cap = budget(config_limit, limit, headroom, window)
  local floor = now + cap - remaining * interval
  local tat = tonumber(redis.call('GET', tat_key) or '0')
  if floor > tat then store(tat_key, floor, now) end
end
tighten(rpm, 'rpm', KEYS[1], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
tighten(tpm, 'tpm', KEYS[2], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]))
if blocked > now then store(KEYS[3], blocked, now) end
return 1
"""
)

_COOL_DOWN = (
    _GCRA_PARAMS
    + """
-- KEYS[1] blocked-until of one alias. ARGV[1] seconds in microseconds.
local now = now_us()
local until_ = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now + tonumber(ARGV[1]))
store(KEYS[1], until_, now)
return math.ceil(until_ - now)
"""
)

_RECORD_USAGE = (
    _GCRA_PARAMS
    + """
-- KEYS: token TAT, limits of one alias. ARGV: tpm, window_us, headroom, tokens actually used minus estimated.
local tpm, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local headroom, delta = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_us()
local interval = budget(tpm, tonumber(redis.call('HGET', KEYS[2], 'tpm')), headroom, window)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
-- A refund can only give back time still ahead of us; an extra charge starts from now if the key was idle.
local new_tat
if delta >= 0 then new_tat = math.max(tat, now) + delta * interval else new_tat = tat + delta * interval end
store(KEYS[1], new_tat, now)
return 1
"""
)

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Seconds in a Go-style duration as OpenAI sends them ("6m0s", "12ms", "23h18m29.144s").

    A bare number is taken as seconds, as in Retry-After. Raises ValueError on anything else.
    """
    text = text.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)
    except ValueError:
        pass
    total, pos = 0.0, 0
    while pos < len(body):
        match = _GO_DURATION_PART.match(body, pos)
        if match is None:
            raise ValueError(f"not a duration: {text!r}")
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError("empty duration")
    return sign * total


def key_alias(api_key: str) -> str:
    """A stable short name for a key: the same on every box whatever the order of the configured keys."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Lease:
    """Permission to send one request now with this key; `waited` is how long acquiring slept."""

    alias: str
    api_key: str = field(repr=False)
    estimated_tokens: int
    waited: float = 0.0


@dataclass(frozen=True)
class NoBudget:
    """No key may send now; ask again after `retry_after` seconds (reschedule, don't spin).

    Falsy, so `if not pool.acquire(n)` reads the same as with a plain `None`.
    """

    retry_after: float

    def __bool__(self) -> bool:
        return False


class OpenAIKeyPool:
    """Shared pacing of our OpenAI keys: `acquire` before each request, report back what OpenAI said.

    Per window (60 s for OpenAI's per-minute limits) a key plans for `limit * (1 - headroom)` requests or
    tokens, sent smoothly, with bursts of up to `limit * headroom / 2`; the other half of the headroom absorbs
    the jitter between our grant and OpenAI's count, so no window sees more than the limit.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Sequence[str],
        rpm: int,
        tpm: int,
        prefix: str = "wardrobe:openai",
        window: float = 60.0,
        headroom: float = 0.1,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if not keys:
            raise ValueError("an OpenAIKeyPool needs at least one key")
        if rpm < 1 or tpm < 0 or window <= 0 or not 0 <= headroom < 1:
            raise ValueError("rpm >= 1, tpm >= 0 (0 = no token budget), window > 0, 0 <= headroom < 1")
        self._keys = {key_alias(key): key for key in keys}
        self.aliases: tuple[str, ...] = tuple(self._keys)
        self._rpm, self._tpm, self._headroom = rpm, tpm, headroom
        self._window_us = int(window * _US)
        # A hash tag keeps one pool's keys in one slot, so the multi-key script also runs on Redis Cluster.
        tag = "{" + prefix + "}"
        self._rotation = f"{tag}:rotation"
        self._state = {
            alias: (
                f"{tag}:{alias}:requests",
                f"{tag}:{alias}:tokens",
                f"{tag}:{alias}:blocked",
                f"{tag}:{alias}:limits",
            )
            for alias in self.aliases
        }
        # Looked up now rather than bound as a default, so gevent's patched sleep is used when the pool is
        # built after monkey-patching.
        self._sleep = sleep or time.sleep
        self._acquire = redis.register_script(_ACQUIRE)
        self._observe = redis.register_script(_OBSERVE)
        self._cool_down = redis.register_script(_COOL_DOWN)
        self._record_usage = redis.register_script(_RECORD_USAGE)

    def acquire(self, estimated_tokens: int, max_wait: float = 0.0) -> Lease | NoBudget:
        """A key with budget for one request of about `estimated_tokens` (prompt + max completion).

        If the best key frees up within `max_wait` seconds, its slot is reserved and this sleeps until then;
        otherwise nothing is reserved and the caller gets `NoBudget.retry_after`.
        """
        keys = [self._rotation]
        for alias in self.aliases:
            keys.extend(self._state[alias])
        index, wait_us = self._acquire(
            keys=keys,
            args=[
                self._rpm,
                self._tpm,
                self._window_us,
                self._headroom,
                max(0, int(estimated_tokens)),
                int(max_wait * _US),
            ],
        )
        wait = max(0.0, int(wait_us) / _US)
        if int(index) < 0:
            return NoBudget(retry_after=wait)
        if wait > 0:
            self._sleep(wait)
        alias = self.aliases[int(index)]
        return Lease(
            alias=alias, api_key=self._keys[alias], estimated_tokens=int(estimated_tokens), waited=wait
        )

    def observe_headers(self, alias: str, headers: Mapping[str, str]) -> None:
        """Tighten our view of a key from OpenAI's x-ratelimit-* headers (never loosen it)."""
        args: list[float] = [self._rpm, self._tpm, self._window_us, self._headroom]
        for budget in ("requests", "tokens"):
            args.append(_header_number(headers, f"x-ratelimit-limit-{budget}"))
            args.append(_header_number(headers, f"x-ratelimit-remaining-{budget}"))
            reset = headers.get(f"x-ratelimit-reset-{budget}")
            try:
                args.append(int(max(0.0, parse_go_duration(reset)) * _US) if reset else -1)
            except ValueError:
                args.append(-1)
        self._observe(keys=list(self._state[alias]), args=args)

    def cool_down(self, alias: str, seconds: float) -> float:
        """No request on this key for `seconds` (extends, never shortens, a block); returns the block left."""
        left = self._cool_down(keys=[self._state[alias][2]], args=[int(max(0.0, seconds) * _US)])
        return int(left) / _US

    def record_usage(self, alias: str, tokens: int, estimated_tokens: int = 0) -> None:
        """Correct the token budget once the response says how many tokens the request really used."""
        if self._tpm <= 0 or tokens == estimated_tokens:
            return
        state = self._state[alias]
        self._record_usage(
            keys=[state[1], state[3]],
            args=[self._tpm, self._window_us, self._headroom, int(tokens) - int(estimated_tokens)],
        )


def _header_number(headers: Mapping[str, str], name: str) -> float:
    raw = headers.get(name)
    if raw is None:
        return -1
    try:
        value = float(raw)
    except ValueError:
        return -1
    # Zero or negative limits (some Azure deployments) mean "unknown"; -2 tells the script to ignore them.
    return value if value >= 0 else -2
