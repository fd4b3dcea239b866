"""Users and their profiles: every SQL statement about the users table lives here."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from psycopg2.extras import Json

from wardrobe.store.db import Pool

if TYPE_CHECKING:
    from wardrobe.web.auth import TelegramUser

_PROFILE_FIELDS = ("style", "sizes", "favourite_colors", "gender")


def bump_version(cur: Any, user_id: int) -> int:
    """Called inside every transaction that changes what a user sees; the new version keys their caches."""
    cur.execute(
        "UPDATE users SET wardrobe_version = wardrobe_version + 1 WHERE id = %s RETURNING wardrobe_version",
        (user_id,),
    )
    row = cur.fetchone()
    return row["wardrobe_version"] if row else 0


class Users:
    def __init__(self, pool: Pool, known_capacity: int = 100_000) -> None:
        self._pool = pool
        # Ids known to have a row: after the first sight a request costs no write.
        self._known: OrderedDict[int, None] = OrderedDict()
        self._known_capacity = known_capacity
        self._lock = threading.Lock()

    def ensure(self, user: TelegramUser) -> None:
        with self._lock:
            if user.id in self._known:
                self._known.move_to_end(user.id)
                return

        def insert(cur: Any) -> None:
            cur.execute(
                "INSERT INTO users (id, display_name, username) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (user.id, user.display_name, user.username),
            )

        self._pool.run(insert, transaction=False)
        with self._lock:
            self._known[user.id] = None
            if len(self._known) > self._known_capacity:
                self._known.popitem(last=False)

    def forget(self, user_id: int) -> None:
        with self._lock:
            self._known.pop(user_id, None)

    def profile(self, user_id: int) -> dict[str, Any] | None:
        def select(cur: Any) -> Any:
            cur.execute(
                "SELECT id, display_name, username, profile, wardrobe_version, created_at FROM users WHERE id = %s",
                (user_id,),
            )
            return cur.fetchone()

        row = self._pool.run(select, transaction=False)
        return serialize(row) if row else None

    def version(self, user_id: int) -> int:
        def select(cur: Any) -> Any:
            cur.execute("SELECT wardrobe_version FROM users WHERE id = %s", (user_id,))
            return cur.fetchone()

        row = self._pool.run(select, transaction=False)
        return row["wardrobe_version"] if row else 0

    def capsule_context(self, user_id: int) -> dict[str, Any]:
        """What a capsule is built from besides the items: the preferences, and the version they belong to."""

        def select(cur: Any) -> Any:
            cur.execute("SELECT profile, wardrobe_version FROM users WHERE id = %s", (user_id,))
            return cur.fetchone()

        return self._pool.run(select, transaction=False) or {"profile": {}, "wardrobe_version": 0}

    def update_profile(self, user_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        prefs = {k: v for k, v in changes.items() if k in _PROFILE_FIELDS}

        def update(cur: Any) -> Any:
            cur.execute(
                """
                UPDATE users
                   SET display_name = COALESCE(%s, display_name),
                       profile = profile || %s,
                       wardrobe_version = wardrobe_version + 1,
                       updated_at = now()
                 WHERE id = %s
             RETURNING id, display_name, username, profile, wardrobe_version, created_at
                """,
                (changes.get("display_name"), Json(prefs), user_id),
            )
            return cur.fetchone()

        return serialize(self._pool.run(update))


def serialize(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "display_name": row["display_name"],
        "username": row["username"],
        "preferences": row["profile"],
        "created_at": row["created_at"].isoformat(),
    }
