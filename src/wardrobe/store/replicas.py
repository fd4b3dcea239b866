"""Reads that may be a moment old go to a streaming replica; writes, and every read inside a write, to the primary.

`ReplicaRouter` owns the primary's Pool and one Pool per replica, and answers like a Pool: `run` is the primary's,
`read(user_id, work)` is what the repositories call for lists, details and the profile. Nothing connects before
the first unit of work, and the replicas' health is read at most once per `check_interval` (in a background
thread, a greenlet under gevent), never per query.

Read-your-writes: after a unit of work that changed what a user sees (every such transaction calls
`users.bump_version`, which notes the user on the cursor), the router reads the end of the primary's WAL and raises
the user's mark in memcached to it (`WriteMarks`). A read of that user goes to a replica only once that replica has
replayed past the mark; until then to the primary. Why the write's LSN and not a per-user window ("primary for N
seconds after a write"), measured on loopback (README.md, "Read replicas"): a replica replayed a commit in 0.28 ms
(p95 0.42 ms), so with the LSN a writer's reads are back on the replica at the next health check (< 1 s), where a
window has to outlast the worst lag allowed plus the age of the health reading (8 s at the default), after every
upload. The LSN is also exact whatever the lag estimate says; a window is only as right as that estimate. It costs
the write one more primary round trip (the LSN, read after the commit: 203 µs, 36 µs of client CPU) and a
compare-and-swap in memcached (262 µs against a window's plain set, 124 µs); writes are a few percent of requests.

The marks live in the shared cache, not in the process, so they hold whichever backend answers. When memcached
has lost a mark (restart, a dead node) a read can be as old as the lag a replica is allowed, no older: a replica
lagging beyond `max_lag` is never read, and without memcached at all the API reads only from the primary.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from wardrobe.clients.cache import NullCache
from wardrobe.store.db import DatabaseUnavailable, Pool, PoolTimeout

if TYPE_CHECKING:
    from wardrobe.config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")

# WAL positions as byte offsets (numeric), so they compare and travel through memcached as plain integers.
# The insert position, read after the commit, is at or past the end of that commit's record.
WRITE_END = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint AS lsn"
PRIMARY_POSITION = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS lsn"
REPLICA_POSITION = """
SELECT pg_is_in_recovery() AS standby,
       (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint AS replayed,
       (pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::bigint AS received,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8 AS replay_age
"""
# What a read on a replica may meet that the primary would not: the replica down or its pool full, or the query
# cancelled by a recovery conflict (SQLSTATE 40001, the replica replaying a change to rows the query reads).
REPLICA_ERRORS = (DatabaseUnavailable, PoolTimeout, psycopg2.errors.SerializationFailure)
CHECK_INTERVAL = 1.0
# A health reading older than this many intervals (its checks hang) vouches for no replica.
STALE_INTERVALS = 3
UNKNOWN_LAG = math.inf


@dataclass(frozen=True)
class ReplicaState:
    name: str
    pool: Pool
    usable: bool = False
    # Seconds of the primary's writes it may lack, an upper bound; inf: unreachable or not replaying.
    lag: float = UNKNOWN_LAG
    replayed: int = 0  # how far into the primary's WAL it has replayed, in bytes


@dataclass(frozen=True)
class _Health:
    checked_at: float  # when the check began (the router's clock)
    replicas: tuple[ReplicaState, ...]


class _NoMetrics:
    def query(self, target: str, kind: str) -> None:
        pass

    def lag(self, replica: str, seconds: float) -> None:
        pass

    def fallback(self, reason: str) -> None:
        pass


class WriteMarks:
    """Where each user's latest write ends in the primary's WAL, in memcached: every backend sees every mark.

    A mark only rises (compare-and-swap), so two backends writing for one user cannot leave the older write's
    position behind. It expires after `ttl` seconds, once no replica the router would read can still lack the
    write (`mark_ttl`).
    """

    KIND = "write-mark"

    def __init__(self, cache: Any, ttl: int) -> None:
        self._cache = cache
        self._ttl = ttl

    def _key(self, user_id: int) -> str:
        return self._cache.key(self.KIND, user_id)

    def note(self, user_ids: Iterable[int], lsn: int) -> None:
        for user_id in user_ids:
            if not self._cache.raise_to(self._key(user_id), lsn, self._ttl, self.KIND):
                log.warning("could not mark user %s's write for read-your-writes", user_id)

    def last(self, user_id: int) -> int:
        value = self._cache.get(self._key(user_id), self.KIND)
        return value if type(value) is int else 0


def mark_ttl(max_lag: float, check_interval: float = CHECK_INTERVAL) -> int:
    """How long a mark must live: the lag a usable replica may have, plus the age of the reading that said so."""
    return math.ceil(max_lag + STALE_INTERVALS * check_interval) + 1


class ReplicaRouter:
    """The primary's Pool and a Pool per replica; see the module's docstring for what goes where and why."""

    def __init__(
        self,
        primary: Pool,
        replicas: Sequence[tuple[str, Pool]],
        marks: WriteMarks,
        *,
        max_lag: float,
        check_interval: float = CHECK_INTERVAL,
        observer: Any = None,
        clock: Callable[[], float] = time.monotonic,
        choose: Callable[[Sequence[ReplicaState]], ReplicaState] = random.choice,
    ) -> None:
        self._primary = primary
        self._marks = marks
        self._max_lag = max_lag
        self._interval = check_interval
        self._stale_after = STALE_INTERVALS * check_interval
        self._observe = observer or _NoMetrics()
        self._clock = clock
        self._choose = choose
        self._lock = threading.Lock()
        self._health = _Health(-math.inf, tuple(ReplicaState(name, pool) for name, pool in replicas))
        self._caught_up_at = {name: -math.inf for name, _ in replicas}
        self._checking = False

    # --- the primary: writes, and reads that must see them ---------------------------------------------------

    def run(self, work: Callable[[Any], T], *, transaction: bool = True) -> T:
        """`work` on the primary; the users whose version it bumped are marked once it has committed."""
        written: set[int] = set()

        def noting(cur: Any) -> T:
            written.clear()  # a retry on a fresh connection starts over
            # users.bump_version notes each user it bumped here (a PublishingPool above puts its own dict).
            if getattr(cur, "bumped_versions", None) is None:
                cur.bumped_versions = {}
            result = work(cur)
            written.update(cur.bumped_versions)
            return result

        result = self._primary.run(noting, transaction=transaction)
        self._observe.query("primary", "primary")
        if written:
            self._marks.note(written, self._write_end())
        return result

    def _write_end(self) -> int:
        try:
            row = self._primary.run(lambda cur: _one(cur, WRITE_END), transaction=False)
            return int(row["lsn"])
        except (DatabaseUnavailable, PoolTimeout, psycopg2.Error) as exc:
            # Committed, but where it ends is unknown: past any replica, so the user reads the primary until the
            # mark expires.
            log.warning("could not read the write's WAL position: %s", exc)
            return 2**62

    def ping(self) -> None:
        self._primary.ping()

    def close(self) -> None:
        self._primary.close()
        for replica in self._health.replicas:
            replica.pool.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._primary, name)

    # --- replicas --------------------------------------------------------------------------------------------

    def read(self, user_id: int, work: Callable[[Any], T]) -> T:
        """`work` (a read of `user_id`'s data that may be a moment old) on a healthy replica that has replayed the
        user's latest write; on the primary when there is none, or when the replica fails."""
        candidates = [r for r in self._current() if r.usable]
        if not candidates:
            return self._on_primary(work, "unhealthy")
        mark = self._marks.last(user_id)
        if mark:
            candidates = [r for r in candidates if r.replayed >= mark]
            if not candidates:
                return self._on_primary(work, "read_your_writes")
        replica = self._choose(candidates)
        try:
            result = replica.pool.run(work, transaction=False)
        except REPLICA_ERRORS as exc:
            log.warning("replica %s failed a read, reading from the primary: %s", replica.name, exc)
            self._set_unusable(replica.name)
            return self._on_primary(work, "error")
        self._observe.query(replica.name, "read")
        return result

    def _on_primary(self, work: Callable[[Any], T], reason: str) -> T:
        self._observe.fallback(reason)
        result = self._primary.run(work, transaction=False)
        self._observe.query("primary", "read")
        return result

    def replicas(self) -> tuple[ReplicaState, ...]:
        """The latest health reading (for tests and operators)."""
        return self._health.replicas

    def _current(self) -> tuple[ReplicaState, ...]:
        health = self._health
        age = self._clock() - health.checked_at
        if age >= self._interval:
            with self._lock:
                start = not self._checking
                self._checking = True
            if start:
                threading.Thread(
                    target=self._check_in_background, name="wardrobe-replica-health", daemon=True
                ).start()
        return health.replicas if age < self._stale_after else ()

    def _check_in_background(self) -> None:
        try:
            self.refresh()
        except Exception:  # a failed check leaves the last reading, which goes stale by itself
            log.exception("replica health check failed")
        finally:
            with self._lock:
                self._checking = False

    def refresh(self) -> None:
        """Read every replica's position and lag now (the background check calls this once per interval)."""
        started = self._clock()
        try:
            primary_at: int | None = int(
                self._primary.run(lambda cur: _one(cur, PRIMARY_POSITION), transaction=False)["lsn"]
            )
        except (DatabaseUnavailable, PoolTimeout, psycopg2.Error) as exc:
            log.warning("primary unreachable for the replica health check: %s", exc)
            primary_at = None  # each replica is then measured against what it has received
        states = tuple(self._check(replica, primary_at, started) for replica in self._health.replicas)
        with self._lock:
            if started >= self._health.checked_at:  # never replace a newer reading by an older one
                self._health = _Health(started, states)

    def _check(self, replica: ReplicaState, primary_at: int | None, now: float) -> ReplicaState:
        try:
            row = replica.pool.run(lambda cur: _one(cur, REPLICA_POSITION), transaction=False)
        except (DatabaseUnavailable, PoolTimeout, psycopg2.Error) as exc:
            log.warning("replica %s unreachable: %s", replica.name, exc)
            self._observe.lag(replica.name, UNKNOWN_LAG)
            return replace(replica, usable=False, lag=UNKNOWN_LAG)
        if not row["standby"] or row["replayed"] is None:
            log.warning(
                "replica %s is not replaying WAL (promoted, or not a standby): not read", replica.name
            )
            self._observe.lag(replica.name, UNKNOWN_LAG)
            return replace(replica, usable=False, lag=UNKNOWN_LAG, replayed=0)
        lag = self._lag(replica.name, row, primary_at, now)
        self._observe.lag(replica.name, lag)
        return replace(replica, usable=lag <= self._max_lag, lag=lag, replayed=int(row["replayed"]))

    def _lag(self, name: str, row: dict[str, Any], primary_at: int | None, now: float) -> float:
        """Seconds of writes the replica may lack: 0 when it has replayed all the primary had; otherwise the
        smaller of two upper bounds, the age of the last commit it replayed and the time since it was last seen
        caught up. The first alone would call a replica an hour behind when an idle primary writes a checkpoint
        record it has not replayed yet; the second alone resolves only to the check interval."""
        target = primary_at if primary_at is not None else row["received"]
        if target is None:  # neither the primary nor a WAL receiver to compare with: nothing vouches for it
            return UNKNOWN_LAG
        if row["replayed"] >= target:
            self._caught_up_at[name] = now
            return 0.0
        replay_age = row["replay_age"] if row["replay_age"] is not None else UNKNOWN_LAG
        return max(0.0, min(replay_age, now - self._caught_up_at[name]))

    def _set_unusable(self, name: str) -> None:
        with self._lock:
            health = self._health
            states = tuple(replace(r, usable=False) if r.name == name else r for r in health.replicas)
            self._health = _Health(health.checked_at, states)


def _one(cur: Any, sql: str) -> dict[str, Any]:
    cur.execute(sql)
    return cur.fetchone()


def replica_name(dsn: str, index: int) -> str:
    """host:port of a replica's DSN (its metrics label), or its place in the list when the DSN names no host."""
    try:
        parts = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        parts = {}
    host = parts.get("host") or parts.get("hostaddr")
    return f"{host}:{parts.get('port') or 5432}" if host else f"replica{index}"


def with_replicas(
    config: Config,
    primary: Pool,
    cache: Any,
    *,
    application_name: str,
    observer: Any = None,
    read_from_replicas: bool = True,
) -> Pool | ReplicaRouter:
    """The primary alone when no replica is configured; else the router over it and a Pool per replica (sized
    like the primary's), or, for the workers (`read_from_replicas=False`), a router that only marks their writes.

    Without a shared cache a mark could not reach the other backends: the replicas are then left unused, since
    only the primary can promise a user their own writes.
    """
    if not config.database_replica_urls:
        return primary
    if cache is None or isinstance(cache, NullCache):
        log.warning("replicas configured without memcached: every read stays on the primary")
        return primary
    replicas = [
        (
            replica_name(dsn, index),
            Pool.from_config(config, dsn, application_name=application_name),
        )
        for index, dsn in enumerate(config.database_replica_urls if read_from_replicas else ())
    ]
    return ReplicaRouter(
        primary,
        replicas,
        WriteMarks(cache, mark_ttl(config.replica_max_lag)),
        max_lag=config.replica_max_lag,
        observer=observer,
    )
