"""A bounded, greenlet-safe Postgres connection pool that waits instead of failing (psycopg2#1220).

Size + overflow connections at most; an acquire that waits longer than `acquire_timeout` raises `PoolTimeout`,
which the API turns into 503 + Retry-After. A connection that broke (Postgres restarted) is dropped together
with its idle siblings and the unit of work is retried once on a fresh one, so the service recovers by itself.

Behind a transaction-mode pooler (PgBouncer, `pooler="transaction"`) a client holds a server connection only
while a transaction is open, so nothing may live in the session: the timeouts are set per transaction with
SET LOCAL, and every unit of work, reads included, is one explicit transaction.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions

from wardrobe.green import gevent_active

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors that mean the connection (or the server) is gone, not that the SQL is wrong.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


class DictCursor(psycopg2.extensions.cursor):
    """Rows as plain dicts, each built in C by `dict(zip(...))`.

    psycopg2's RealDictCursor fills every row one column at a time through a Python `__setitem__`: 40 % of the
    client's CPU for a 20-item page (511 vs 312 us), and one of the larger Python costs of a loaded worker.
    """

    # Sent in front of the next statement, in the same round trip (Pool.run's BEGIN); None once it has been.
    _pending: str | None = None

    def begin_with_next_statement(self, begin: str) -> None:
        self._pending = begin + "; "

    @property
    def began(self) -> bool:
        return self._pending is None

    def execute(self, query: Any, vars: Any = None) -> None:
        if self._pending is not None:
            if not isinstance(query, str | bytes):
                query = query.as_string(self)  # psycopg2.sql composition
            prefix, self._pending = self._pending, None
            query = (prefix.encode() if isinstance(query, bytes) else prefix) + query
        super().execute(query, vars)

    def executemany(self, query: Any, vars_list: Any) -> None:
        if self._pending is not None:
            super().execute(self._pending)
            self._pending = None
        super().executemany(query, vars_list)

    def _columns(self) -> list[str]:
        return [column[0] for column in self.description]

    def fetchone(self) -> dict[str, Any] | None:
        row = super().fetchone()
        return None if row is None else dict(zip(self._columns(), row, strict=True))

    def fetchmany(self, size: int | None = None) -> list[dict[str, Any]]:
        rows = super().fetchmany(self.arraysize if size is None else size)
        return self._dicts(rows)

    def fetchall(self) -> list[dict[str, Any]]:
        return self._dicts(super().fetchall())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.fetchall())

    def _dicts(self, rows: list[tuple]) -> list[dict[str, Any]]:
        if not rows:
            return []
        columns = self._columns()
        return [dict(zip(columns, row, strict=True)) for row in rows]


# How the pool reaches Postgres: directly, or through a pooler that lends server connections per transaction.
POOLERS = ("none", "transaction")


class PoolTimeout(Exception):
    """No connection became free within the acquire timeout."""


class DatabaseUnavailable(Exception):
    """Postgres cannot be reached right now."""


class Pool:
    def __init__(
        self,
        dsn: str,
        *,
        size: int = 20,
        overflow: int = 10,
        acquire_timeout: float = 2.0,
        connect_timeout: float = 3.0,
        statement_timeout_ms: int = 5000,
        idle_tx_timeout_ms: int = 10000,
        application_name: str = "wardrobe",
        connect: Callable[..., Any] = psycopg2.connect,
        observer: Any = None,
        pooler: str = "none",
        overflow_idle_seconds: float = 30.0,
    ) -> None:
        if pooler not in POOLERS:
            raise ValueError(f"pooler must be one of {', '.join(POOLERS)}, not {pooler!r}")
        self._dsn = dsn
        self._size = size
        self._max = size + overflow
        self._acquire_timeout = acquire_timeout
        self._connect_timeout = connect_timeout
        # Direct: the timeouts ride on the startup packet, free. Behind a transaction pooler that packet either is
        # refused (PgBouncer knows no `options`) or would set them on a server connection other clients share, so
        # each unit of work, reads included, is a transaction that sets its own with SET LOCAL, in the same round
        # trip as its BEGIN and its first statement (PostgreSQL applies a SET LOCAL to the statements after it in
        # the same message): a read costs one round trip more (its COMMIT) to a pooler on the Postgres host, a
        # transaction nothing more. Role-level settings (ALTER ROLE ... SET statement_timeout) would cost nothing,
        # but they would live in the database instead of the app's settings, bind migrations and psql too, and
        # could not differ per process (API, workers) or per call (the backlog's tighter bound); the server-wide
        # statement_timeout of the postgres role stays the backstop for anything that bypasses the pool.
        self._per_transaction = pooler == "transaction"
        self._options = (
            f"-c statement_timeout={int(statement_timeout_ms)} "
            f"-c idle_in_transaction_session_timeout={int(idle_tx_timeout_ms)}"
        )
        # Sent with the first statement of a transaction (DictCursor), never alone: a transaction of n statements is
        # n + 1 round trips (its COMMIT), not psycopg2's n + 2 (a BEGIN of its own).
        self._begin = (
            f"BEGIN; SET LOCAL statement_timeout = {int(statement_timeout_ms)}; "
            f"SET LOCAL idle_in_transaction_session_timeout = {int(idle_tx_timeout_ms)}"
            if self._per_transaction
            else "BEGIN"
        )
        self._application_name = application_name
        self._connect = connect
        self._observer = observer
        # (when it came back, connection), the most recent on the right. Connections beyond `size` stay idle for
        # `overflow_idle_seconds` before they are closed: closing each as it came back made a busy worker open and
        # close a Postgres backend (a fork, and the login on both sides) for nearly every query once more than
        # `size` were in use (2,578 sessions in one 2-minute bench-api run).
        self._idle: deque[tuple[float, Any]] = deque()
        self._overflow_idle = overflow_idle_seconds
        # Chosen at construction, after gevent has patched the API workers. Under gevent the pool is shared by
        # greenlets of one thread, and the sections under `_lock` never yield, so they need no lock; the slots are
        # gevent's own semaphore (in C) rather than threading's, which gevent's patch leaves pure Python over a
        # Condition: together about 4 % of an API worker's CPU on the session mix (py-spy).
        if gevent_active():
            from gevent.lock import BoundedSemaphore

            self._slots: Any = BoundedSemaphore(self._max)
            self._lock: Any = contextlib.nullcontext()
        else:
            self._slots = threading.BoundedSemaphore(self._max)
            self._lock = threading.Lock()
        self.in_use = 0
        self.waiting = 0
        if observer is not None:
            observer.watch(self)  # reads in_use and waiting when it publishes them

    @classmethod
    def from_config(cls, config: Any, dsn: str, *, application_name: str, observer: Any = None) -> Pool:
        """The API's pool to `dsn` (the primary or a replica), sized and bounded by the settings."""
        return cls(
            dsn,
            size=config.db_pool_size,
            overflow=config.db_pool_overflow,
            acquire_timeout=config.db_acquire_timeout,
            connect_timeout=config.db_connect_timeout,
            statement_timeout_ms=config.db_statement_timeout_ms,
            idle_tx_timeout_ms=config.db_idle_tx_timeout_ms,
            application_name=application_name,
            observer=observer,
            pooler=config.db_pooler,
        )

    @property
    def max_connections(self) -> int:
        return self._max

    def _open(self) -> Any:
        kwargs = {
            "connect_timeout": max(1, int(self._connect_timeout)),
            "application_name": self._application_name,
        }
        if not self._per_transaction:
            kwargs["options"] = self._options
        try:
            if gevent_active():
                # libpq's connect_timeout is ignored in green mode (psycogreen#2): bound it ourselves.
                import gevent

                with gevent.Timeout(self._connect_timeout, DatabaseUnavailable("connect timed out")):
                    conn = self._connect(self._dsn, **kwargs)
            else:
                conn = self._connect(self._dsn, **kwargs)
        except psycopg2.Error as exc:
            raise DatabaseUnavailable(
                str(exc).strip().splitlines()[0] if str(exc) else "connect failed"
            ) from exc
        conn.autocommit = True
        return conn

    def _acquire(self) -> Any:
        started = time.monotonic()
        with self._lock:
            self.waiting += 1
        try:
            got = self._slots.acquire(timeout=self._acquire_timeout)
        finally:
            with self._lock:
                self.waiting -= 1
        if self._observer is not None:
            self._observer.acquired(time.monotonic() - started)
        if not got:
            raise PoolTimeout(f"no database connection free within {self._acquire_timeout:g}s")
        try:
            with self._lock:
                conn = self._idle.pop()[1] if self._idle else None
            if conn is None or conn.closed:
                conn = self._open()
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self.in_use += 1
        return conn

    def _release(self, conn: Any, *, broken: bool = False) -> None:
        with self._lock:
            self.in_use -= 1
        try:
            healthy = not broken and not conn.closed
            if healthy:
                _end_transaction(conn)
            now = time.monotonic()
            expired = [] if healthy else [conn]
            with self._lock:
                if healthy:
                    self._idle.append((now, conn))
                # The least recently used go first: the busy ones are taken from the other end.
                while len(self._idle) > self._size and now - self._idle[0][0] > self._overflow_idle:
                    expired.append(self._idle.popleft()[1])
            for old in expired:
                old.close()
        except psycopg2.Error:
            conn.close()
        finally:
            self._slots.release()

    def discard_idle(self) -> None:
        """Close every idle connection: after one broke, its siblings are suspect too."""
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for _, conn in idle:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self._acquire()
        broken = False
        try:
            yield conn
        except CONNECTION_ERRORS:
            broken = True
            raise
        finally:
            self._release(conn, broken=broken or bool(conn.closed))

    def run(self, work: Callable[[Any], T], *, transaction: bool = True) -> T:
        """Run `work(cursor)` in one transaction (or autocommit), retrying once on a dead connection.

        Retrying is safe because a connection that died before COMMIT committed nothing.
        """
        explicit = transaction or self._per_transaction
        for attempt in (1, 2):
            conn = self._acquire()
            broken = False
            committing = False
            try:
                # The connection stays in autocommit as far as psycopg2 knows: the BEGIN is ours and goes out with
                # the first statement (psycopg2's own would be a round trip of its own).
                with conn.cursor(cursor_factory=DictCursor) as cur:
                    if explicit:
                        cur.begin_with_next_statement(self._begin)
                    result = work(cur)
                    if explicit and cur.began:
                        committing = True
                        cur.execute("COMMIT")
                return result
            except CONNECTION_ERRORS as exc:
                if not conn.closed:
                    raise  # the server answered (timeout, cancel): the connection is fine, the query is not
                broken = True
                self.discard_idle()
                if attempt == 2 or committing:
                    raise DatabaseUnavailable(
                        str(exc).strip().splitlines()[0] if str(exc) else "lost"
                    ) from exc
                log.warning("database connection lost, retrying on a fresh one: %s", exc)
            finally:
                self._release(conn, broken=broken or bool(conn.closed))  # rolls back whatever is still open
        raise AssertionError("unreachable")  # pragma: no cover

    def read(self, user_id: int, work: Callable[[Any], T]) -> T:
        """A read of `user_id`'s data that may be a moment old (a list, a detail, the profile). One server here, so
        it is `run` in autocommit; store/replicas.py's router sends it to a replica that has the user's writes."""
        return self.run(work, transaction=False)

    def ping(self) -> None:
        self.run(lambda cur: cur.execute("SELECT 1"), transaction=False)

    def close(self) -> None:
        self.discard_idle()


def _end_transaction(conn: Any) -> None:
    """Roll back whatever is open, also a transaction begun by our own BEGIN (psycopg2's rollback() ignores it:
    it believes the connection is in autocommit)."""
    if conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        return
    if conn.autocommit:
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")
    else:
        conn.rollback()
