"""Versioned SQL migrations (yoyo-migrations), applied under yoyo's lock (a row in its yoyo_lock table) so concurrent runs
are safe. Run them straight against Postgres, not through a transaction-mode pooler."""

from __future__ import annotations

from importlib import resources

from yoyo import get_backend, read_migrations


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
