"""Postgres: the pool and every SQL statement, one module per aggregate.

Each aggregate's repository class (`Items`, `Capsules`, `Users`, `Jobs`/`JobLedger`) is how the API and the
workers reach its table; a method is one unit of work. The few statements that join another aggregate's
transaction (`jobs.insert`, `jobs.advance`, `users.bump_version`, ...) are module functions taking the cursor.
"""

from __future__ import annotations

import uuid
from typing import Any


def parse_uuid(raw: str) -> str | None:
    """The canonical form of an id from a URL, or None when it is not a UUID (the caller answers 404)."""
    try:
        return str(uuid.UUID(raw))
    except (ValueError, AttributeError, TypeError):
        return None


def picked(row: dict[str, Any], *names: str) -> dict[str, Any]:
    """The columns a resource shows as they are, in the order given."""
    return {name: row[name] for name in names}


def timestamps(row: dict[str, Any]) -> dict[str, str]:
    """The created/updated pair every resource shows, as ISO 8601."""
    return {"created_at": row["created_at"].isoformat(), "updated_at": row["updated_at"].isoformat()}
