"""Items of clothing: every SQL statement about the items table lives here."""

from __future__ import annotations

from typing import Any

from psycopg2.extras import Json

from wardrobe.clients.images import ImageStore
from wardrobe.store import jobs, pagination
from wardrobe.store.db import Pool
from wardrobe.store.users import bump_version

ITEM_COLUMNS = (
    "id, user_id, status, category, colors, season, style, pattern, material, formality, brand, notes, "
    "image_key, cutout_key, user_fields, analysis, created_at, updated_at"
)
EDITABLE = ("category", "colors", "season", "style", "pattern", "material", "formality", "brand", "notes")


def serialize(row: dict[str, Any]) -> dict[str, Any]:
    analysis = row.get("analysis") or {}
    return {
        "id": str(row["id"]),
        "status": row["status"],
        "category": row["category"],
        "colors": row["colors"],
        "season": row["season"],
        "style": row["style"],
        "pattern": row["pattern"],
        "material": row["material"],
        "formality": row["formality"],
        "brand": row["brand"],
        "notes": row["notes"],
        "source": analysis.get("source"),
        "image_url": ImageStore.url(row["image_key"]),
        "cutout_url": ImageStore.url(row["cutout_key"]),
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


class Items:
    def __init__(self, pool: Pool, max_attempts: int = 5) -> None:
        self._pool = pool
        self._max_attempts = max_attempts

    def create(
        self, user_id: int, image_key: str, fields: dict[str, Any], request_id: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The item and the job that processes it, in one transaction."""
        user_fields = [k for k, v in fields.items() if v is not None]

        def insert(cur: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            cur.execute(
                f"""
                INSERT INTO items (user_id, image_key, category, brand, notes, user_fields)
                VALUES (%s, %s, %s, %s, %s, %s)
                RETURNING {ITEM_COLUMNS}
                """,
                (
                    user_id,
                    image_key,
                    fields.get("category"),
                    fields.get("brand"),
                    fields.get("notes"),
                    user_fields,
                ),
            )
            item = cur.fetchone()
            job = jobs.insert(
                cur,
                user_id=user_id,
                kind="process_item",
                stage="cutout",
                max_attempts=self._max_attempts,
                item_id=item["id"],
                request_id=request_id,
            )
            bump_version(cur, user_id)
            return item, job

        return self._pool.run(insert)

    def list(
        self,
        user_id: int,
        *,
        limit: int,
        cursor: str | None = None,
        category: str | None = None,
        season: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        where, params = "user_id = %s", [user_id]
        if category:
            where += " AND category = %s"
            params.append(category)
        if season:
            where += " AND season = %s"
            params.append(season)
        after, after_params = pagination.after(cursor)

        def select(cur: Any) -> list[dict[str, Any]]:
            cur.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE {where}{after} ORDER BY created_at DESC, id DESC LIMIT %s",
                [*params, *after_params, limit + 1],
            )
            return cur.fetchall()

        return pagination.page(self._pool.run(select, transaction=False), limit)

    def get(self, user_id: int, item_id: str) -> dict[str, Any] | None:
        item_id = jobs.parse_id(item_id)
        if item_id is None:
            return None

        def select(cur: Any) -> Any:
            cur.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s AND user_id = %s", (item_id, user_id)
            )
            return cur.fetchone()

        return self._pool.run(select, transaction=False)

    def update(self, user_id: int, item_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        item_id = jobs.parse_id(item_id)
        if item_id is None:
            return None
        fields = [k for k in EDITABLE if k in changes]
        sets = ", ".join(f"{k} = %s" for k in fields)
        values = [Json(changes[k]) if k == "colors" else changes[k] for k in fields]

        def update(cur: Any) -> Any:
            cur.execute(
                f"""
                UPDATE items
                   SET {sets},
                       user_fields = ARRAY(SELECT DISTINCT unnest(user_fields || %s::text[])),
                       updated_at = clock_timestamp()
                 WHERE id = %s AND user_id = %s
             RETURNING {ITEM_COLUMNS}
                """,
                [*values, fields, item_id, user_id],
            )
            row = cur.fetchone()
            if row:
                bump_version(cur, user_id)
            return row

        return self._pool.run(update)

    def delete(self, user_id: int, item_id: str) -> bool:
        item_id = jobs.parse_id(item_id)
        if item_id is None:
            return False

        def delete(cur: Any) -> bool:
            cur.execute("DELETE FROM items WHERE id = %s AND user_id = %s", (item_id, user_id))
            if cur.rowcount:
                bump_version(cur, user_id)
            return bool(cur.rowcount)

        return self._pool.run(delete)


ANALYSED = ("category", "colors", "season", "style", "pattern", "material", "formality")


def for_job(cur: Any, item_id: Any) -> dict[str, Any] | None:
    cur.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s", (item_id,))
    return cur.fetchone()


def set_cutout(cur: Any, item_id: Any, cutout_key: str) -> None:
    cur.execute(
        "UPDATE items SET cutout_key = %s, updated_at = clock_timestamp() WHERE id = %s",
        (cutout_key, item_id),
    )


def apply_analysis(cur: Any, item_id: Any, attributes: dict[str, Any]) -> dict[str, Any] | None:
    """Fill in what the analysis found, except fields the user set: their word beats the model's."""
    cur.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s FOR UPDATE", (item_id,))
    row = cur.fetchone()
    if row is None:
        return None
    keep = set(row["user_fields"])
    fields = [f for f in ANALYSED if f in attributes and f not in keep]
    sets = "".join(f"{f} = %s, " for f in fields)
    values = [Json(attributes[f]) if f == "colors" else attributes[f] for f in fields]
    cur.execute(
        f"""
        UPDATE items SET {sets}analysis = %s, status = 'ready', updated_at = clock_timestamp()
         WHERE id = %s RETURNING {ITEM_COLUMNS}
        """,
        [*values, Json(attributes), item_id],
    )
    return cur.fetchone()


def mark_failed(cur: Any, item_id: Any) -> None:
    cur.execute(
        "UPDATE items SET status = 'failed', updated_at = clock_timestamp() WHERE id = %s", (item_id,)
    )


def wardrobe_for_capsules(cur: Any, user_id: int, limit: int = 500) -> list[dict[str, Any]]:
    cur.execute(
        f"SELECT {ITEM_COLUMNS} FROM items WHERE user_id = %s AND status = 'ready' AND category IS NOT NULL "
        "ORDER BY created_at DESC, id DESC LIMIT %s",
        (user_id, limit),
    )
    return cur.fetchall()
