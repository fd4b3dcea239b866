"""The one owner of memcached: a fail-soft shared cache, its Null twin, versioned keys and a per-process LRU.

Callers build keys with `Cache.key(...)` and include the user's wardrobe version (authoritative in Postgres).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from pymemcache.client.hash import HashClient
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import MemcacheError, MemcacheIllegalInputError

from wardrobe import jsonio

KEY_PREFIX = "w:v1"
MAX_KEY_BYTES = 250
# Parts longer than this are hashed so that a key never approaches memcached's 250-byte limit.
_MAX_PART_CHARS = 64
_JSON_FLAG = 1

# Sentinel for "not in cache": None is a legitimate cached value.
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING", "__bool__": lambda self: False})()
# What `_call` answers when memcached failed, where False and None are answers memcached itself gives.
_FAILED: Any = object()

ErrorHook = Callable[[str], None]
ResultHook = Callable[[str, bool], None]


def _noop_error(kind: str) -> None:
    pass


def _noop_result(kind: str, hit: bool) -> None:
    pass


def _sha1(text: str) -> str:
    # A key-shortening digest, not a security boundary: sha1 keeps keys short and stable across backends.
    return hashlib.sha1(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


def _safe_part(part: object) -> str:
    if isinstance(part, (dict, list, tuple)):
        canonical = json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return _sha1(canonical)
    text = str(part)
    printable_ascii = text.isascii() and all(33 <= ord(ch) <= 126 for ch in text)
    if printable_ascii and len(text) <= _MAX_PART_CHARS:
        return text
    return _sha1(text)


def cache_key(*parts: object) -> str:
    """`w:v1:part:part:...`; dict/list parts and long or unsafe strings become their sha1."""
    built = ":".join([KEY_PREFIX, *(_safe_part(p) for p in parts)])
    if len(built) > MAX_KEY_BYTES:
        built = f"{KEY_PREFIX}:h:{_sha1(built)}"
    return built


class JsonSerde:
    """Values are JSON so any backend (or a human with telnet) can read them; no pickle from the network."""

    def serialize(self, key: bytes, value: Any) -> tuple[bytes, int]:
        if isinstance(value, bytes):
            return value, 0
        return jsonio.dumps(value), _JSON_FLAG

    def deserialize(self, key: bytes, value: bytes, flags: int) -> Any:
        if flags == 0:
            # incr/decr counters are stored as plain ASCII digits with the flags of their first write.
            return int(value) if value.isdigit() else value
        return jsonio.loads(value)


class _Rendezvous(RendezvousHash):
    """pymemcache's rendezvous hashing, minus the hashing while one node is up.

    With one memcached (each API box has its own) every key lands on it anyway, and the pure-Python murmur3 of
    the key was about 30 µs of CPU per cache call. A node marked dead is still removed, so a single dead node
    still answers None (HashClient's "all servers down").
    """

    def get_node(self, key: str) -> Any:
        if len(self.nodes) == 1:
            return self.nodes[0]
        return super().get_node(key)


class LocalLRU:
    """A small per-process LRU with a short TTL, for hot keys in front of memcached.

    Keys must embed the wardrobe version, so an entry can be old but never stale for a different version.
    The lock is never held across I/O, so it is safe for threads and (patched) greenlets alike.
    """

    def __init__(self, maxsize: int = 1024, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if maxsize < 1 or ttl <= 0:
            raise ValueError("maxsize must be >= 1 and ttl > 0")
        self._maxsize = maxsize
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return MISSING
            expires_at, value = entry
            if expires_at <= now:
                del self._entries[key]
                return MISSING
            self._entries.move_to_end(key)
            return value

    def set(self, key: str, value: Any) -> None:
        expires_at = self._clock() + self._ttl
        with self._lock:
            self._entries[key] = (expires_at, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Cache:
    """memcached through pymemcache's HashClient; every memcached failure becomes a miss or a no-op.

    `kind` names the cached thing ("items", "brands", ...) and labels the on_error/on_result hooks.
    """

    key = staticmethod(cache_key)

    def __init__(
        self,
        servers: Iterable[str],
        *,
        max_pool_size: int = 32,
        connect_timeout: float = 0.2,
        timeout: float = 0.2,
        retry_attempts: int = 2,
        retry_timeout: float = 1.0,
        dead_timeout: float = 10.0,
        local: LocalLRU | None = None,
        on_error: ErrorHook = _noop_error,
        on_result: ResultHook = _noop_result,
        client: Any = None,
    ):
        servers = list(servers)
        if not servers and client is None:
            raise ValueError("Cache needs at least one memcached server; use NullCache to disable caching")
        self._client = client or HashClient(
            [_parse_server(s) for s in servers],
            serde=JsonSerde(),
            use_pooling=True,
            max_pool_size=max_pool_size,
            connect_timeout=connect_timeout,
            timeout=timeout,
            retry_attempts=retry_attempts,
            retry_timeout=retry_timeout,
            dead_timeout=dead_timeout,
            ignore_exc=False,
            default_noreply=False,
            hasher=_Rendezvous,
        )
        # pymemcache's pool raises when exhausted instead of waiting; greenlets queue here for at most
        # `timeout` and then count a miss, so a burst never turns into errors from the pool.
        self._slots = threading.BoundedSemaphore(max_pool_size)
        self._slot_timeout = timeout
        self._local = local
        self._on_error = on_error
        self._on_result = on_result

    def _call(
        self, kind: str, fallback: Any, operation: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        if not self._slots.acquire(timeout=self._slot_timeout):
            self._on_error(kind)
            return fallback
        try:
            return operation(*args, **kwargs)
        except MemcacheIllegalInputError:
            raise
        except (MemcacheError, OSError, RuntimeError, ValueError, KeyError):
            # OSError: refused/timed out; ValueError: corrupted JSON; RuntimeError: pymemcache pool exhausted;
            # KeyError: HashClient's dead-server bookkeeping is not greenlet-safe: when a server comes back, two
            # requests retrying it at once both `_failed_clients.pop(server)` and the second raises (seen on the
            # fleet lab as a 500 right after an API host rebooted).
            self._on_error(kind)
            return fallback
        finally:
            self._slots.release()

    def get(self, key: str, kind: str, *, local: bool = False) -> Any:
        """The cached value or MISSING. With local=True the per-process LRU is consulted and filled first."""
        if local and self._local is not None:
            value = self._local.get(key)
            if value is not MISSING:
                self._on_result(kind, True)
                return value
        value = self._call(kind, MISSING, self._client.get, key, default=MISSING)
        hit = value is not MISSING
        self._on_result(kind, hit)
        if hit and local and self._local is not None:
            self._local.set(key, value)
        return value

    def get_many(
        self, keys: Iterable[str], kind: str, *, kinds: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The cached values found, in one round trip per server. `kinds` names what a key is counted as in the
        on_result hook, when not `kind`."""
        keys = list(keys)
        if not keys:
            return {}
        found = self._call(kind, {}, self._client.get_many, keys)
        for key in keys:
            self._on_result(kinds.get(key, kind) if kinds else kind, key in found)
        return found

    def get_local(self, key: str, kind: str) -> Any:
        """The per-process LRU's value or MISSING, without asking memcached; a hit is counted, a miss is not
        (the caller's memcached lookup counts it)."""
        if self._local is None:
            return MISSING
        value = self._local.get(key)
        if value is not MISSING:
            self._on_result(kind, True)
        return value

    def set_local(self, key: str, value: Any) -> None:
        if self._local is not None:
            self._local.set(key, value)

    def set(
        self, key: str, value: Any, ttl: int, kind: str, *, local: bool = False, wait: bool = True
    ) -> bool:
        """With wait=False memcached is not asked to confirm (noreply): True then means only "sent"."""
        if local and self._local is not None:
            self._local.set(key, value)
        return bool(self._call(kind, False, self._client.set, key, value, expire=int(ttl), noreply=not wait))

    def add(self, key: str, value: Any, ttl: int, kind: str) -> bool:
        """Store only if absent; True when this caller won (usable as a cross-backend lock)."""
        return bool(self._call(kind, False, self._client.add, key, value, expire=int(ttl), noreply=False))

    def delete(self, key: str, kind: str) -> bool:
        if self._local is not None:
            self._local.delete(key)
        return bool(self._call(kind, False, self._client.delete, key, noreply=False))

    def incr(self, key: str, kind: str, delta: int = 1, ttl: int = 0) -> int | None:
        """Increment a counter, creating it at `delta`; None when memcached is unavailable."""
        value = self._call(kind, None, self._client.incr, key, delta, noreply=False)
        if value is not None:
            return int(value)
        if self._call(kind, False, self._client.add, key, delta, expire=int(ttl), noreply=False):
            return delta
        # Lost the race to create it (or memcached is down): one more incr settles which.
        value = self._call(kind, None, self._client.incr, key, delta, noreply=False)
        return None if value is None else int(value)

    def raise_to(self, key: str, value: int, ttl: int, kind: str, attempts: int = 4) -> bool:
        """Store the number `value` unless the key already holds one at least as large.

        For versions that must never go backwards however concurrent writers' updates interleave: a plain set
        lets an older writer overwrite a newer one. True once memcached holds `value` or more; False when
        memcached failed or `attempts` compare-and-swaps all lost a race.
        """
        for _ in range(attempts):
            found = self._call(kind, _FAILED, self._client.gets, key)
            if not isinstance(found, tuple):  # failed, or a node in its retry pause (HashClient answers None)
                return False
            current, token = found
            if token is None:
                stored = self._call(
                    kind, _FAILED, self._client.add, key, value, expire=int(ttl), noreply=False
                )
            elif isinstance(current, int) and current >= value:
                return True
            else:
                stored = self._call(
                    kind, _FAILED, self._client.cas, key, value, token, expire=int(ttl), noreply=False
                )
            if stored is _FAILED:
                return False
            if stored:
                return True
        return False

    def ping(self) -> str:
        """'ok' when every memcached node answers, 'degraded' otherwise (for /readyz)."""
        for node in list(self._client.clients.values()):
            if not self._call("ping", False, node.version):
                return "degraded"
        if getattr(self._client, "_dead_clients", None):
            return "degraded"
        return "ok"

    def close(self) -> None:
        try:
            self._client.close()
        except (MemcacheError, OSError):
            pass


def _parse_server(spec: str) -> tuple[str, int]:
    host, _, port = spec.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"memcached server must be host:port, got {spec!r}")
    return host, int(port)


class NullCache:
    """The twin used when memcached is disabled: every read misses, every write is dropped."""

    key = staticmethod(cache_key)

    def __init__(self, on_result: ResultHook = _noop_result):
        self._on_result = on_result

    def get(self, key: str, kind: str, *, local: bool = False) -> Any:
        self._on_result(kind, False)
        return MISSING

    def get_many(
        self, keys: Iterable[str], kind: str, *, kinds: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return {}

    def get_local(self, key: str, kind: str) -> Any:
        return MISSING

    def set_local(self, key: str, value: Any) -> None:
        pass

    def set(
        self, key: str, value: Any, ttl: int, kind: str, *, local: bool = False, wait: bool = True
    ) -> bool:
        return False

    def add(self, key: str, value: Any, ttl: int, kind: str) -> bool:
        # Claiming every lock keeps callers that use add() as a refresh lock working without memcached.
        return True

    def delete(self, key: str, kind: str) -> bool:
        return False

    def incr(self, key: str, kind: str, delta: int = 1, ttl: int = 0) -> int | None:
        return None

    def raise_to(self, key: str, value: int, ttl: int, kind: str, attempts: int = 4) -> bool:
        return False

    def ping(self) -> str:
        return "disabled"

    def close(self) -> None:
        pass
