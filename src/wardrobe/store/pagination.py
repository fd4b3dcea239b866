"""Opaque keyset cursors: (created_at, id) of the last row a page showed."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid


class InvalidCursor(ValueError):
    pass


def encode(created_at: dt.datetime, row_id: uuid.UUID | str) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[dt.datetime, str]:
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        when = dt.datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        return when, str(uuid.UUID(row_id))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursor("cursor is not one this API issued") from None


def after(cursor: str | None) -> tuple[str, list]:
    """The SQL condition (and its parameters) for rows after `cursor` in newest-first order."""
    if not cursor:
        return "", []
    created_at, row_id = decode(cursor)
    return " AND (created_at, id) < (%s, %s::uuid)", [created_at, row_id]


def page(rows: list, limit: int) -> tuple[list, str | None]:
    """Rows fetched with LIMIT limit+1 → the page and the cursor of the next one (None on the last page)."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode(rows[-1]["created_at"], rows[-1]["id"])
