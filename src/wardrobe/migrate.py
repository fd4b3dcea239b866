"""Versioned SQL migrations (yoyo-migrations), applied under yoyo's lock (a row in its yoyo_lock table) so concurrent runs
are safe. Run them straight against Postgres, not through a transaction-mode pooler."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import psycopg2
from yoyo import get_backend, read_migrations

# yoyo records each applied migration by the hash of its id in this table (yoyo.backends.base).
APPLIED_SQL = "SELECT migration_hash FROM _yoyo_migration"


class SchemaBehind(Exception):
    """The database lacks migrations this release ships: the code would query tables or columns not there yet."""


def migrations_dir() -> str:
    return str(resources.files("wardrobe") / "migrations")


def apply(database_url: str) -> list[str]:
    """Apply what is pending; returns the ids applied (empty when up to date)."""
    backend = get_backend(database_url)
    migrations = read_migrations(migrations_dir())
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def shipped() -> dict[str, str]:
    """hash -> id of every migration in this package, read from the files (no database involved)."""
    return {m.hash: m.id for m in read_migrations(migrations_dir())}


class SchemaCheck:
    """A readiness probe: raises `SchemaBehind` until every shipped migration is applied.

    It reads yoyo's table through the app's own pool (`pool.run`), never through yoyo's backend, which would
    create its tables on an empty database. Once current, the schema stays current for this process (migrations
    only go forward, and new ones arrive with a new release, so a new process), so later calls cost nothing; while
    behind, Postgres is asked at most once per `recheck` seconds.
    """

    def __init__(
        self,
        pool: Any,
        expected: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        recheck: float = 2.0,
    ) -> None:
        self._pool = pool
        self._expected = shipped() if expected is None else expected
        self._clock = clock
        self._recheck = recheck
        self._lock = threading.Lock()
        self._current = False
        self._checked: tuple[float, str] | None = None  # when it was last found behind, and what was missing

    def __call__(self) -> None:
        if self._current:
            return
        with self._lock:
            if self._current:
                return
            now = self._clock()
            if self._checked is None or now - self._checked[0] >= self._recheck:
                self._checked = (now, self._missing())
                self._current = not self._checked[1]
            if not self._current:
                raise SchemaBehind(self._checked[1])

    def _missing(self) -> str:
        try:
            rows = self._pool.run(
                lambda cur: (cur.execute(APPLIED_SQL), cur.fetchall())[1], transaction=False
            )
        except psycopg2.errors.UndefinedTable:
            rows = []  # a database no migration ever ran on
        applied = {row["migration_hash"] for row in rows}
        return ", ".join(sorted(i for h, i in self._expected.items() if h not in applied))
