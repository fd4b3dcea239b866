"""Items of clothing: every SQL statement about the items table lives here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg2.extras import Json

from wardrobe.clients.images import image_url
from wardrobe.store import jobs, pagination, parse_uuid, picked, timestamps, users
from wardrobe.store.db import Pool

ITEM_COLUMNS = (
    "id, user_id, status, category, colors, season, style, pattern, material, formality, brand, notes, "
    "image_key, cutout_key, user_fields, analysis, created_at, updated_at"
)
EDITABLE = ("category", "colors", "season", "style", "pattern", "material", "formality", "brand", "notes")
# What a job that failed for good leaves on its row.
MARK_FAILED = "UPDATE items SET status = 'failed', updated_at = clock_timestamp() WHERE id = %s"


def serialize(
    row: dict[str, Any], image_url: Callable[[str | None], str | None] = image_url
) -> dict[str, Any]:
    """`image_url`: the image store's (a CDN's URLs with WARDROBE_IMAGE_BASE_URL), else the API's /images/."""
    analysis = row.get("analysis") or {}
    return {
        "id": str(row["id"]),
        **picked(row, "status", *EDITABLE),
        "source": analysis.get("source"),
        "image_url": image_url(row["image_key"]),
        "cutout_url": image_url(row["cutout_key"]),
        **timestamps(row),
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

        def insert(cur: Any) -> dict[str, Any]:
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
            return cur.fetchone()

        return jobs.create_with_job(
            self._pool,
            jobs.PROCESS_ITEM,
            user_id,
            insert,
            max_attempts=self._max_attempts,
            request_id=request_id,
        )

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

        return pagination.page(self._pool.read(user_id, select), limit)

    def get(self, user_id: int, item_id: str) -> dict[str, Any] | None:
        item_id = parse_uuid(item_id)
        if item_id is None:
            return None

        def select(cur: Any) -> Any:
            cur.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s AND user_id = %s", (item_id, user_id)
            )
            return cur.fetchone()

        return self._pool.read(user_id, select)

    def update(self, user_id: int, item_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        item_id = parse_uuid(item_id)
        if item_id is None:
            return None
        fields = [k for k in EDITABLE if k in changes]
        sets = ", ".join(f"{k} = %s" for k in fields)
        values = [Json(changes[k]) if k == "colors" else changes[k] for k in fields]

        def update(cur: Any) -> Any:
            # The edit and its version bump in one statement: the transaction is two round trips, with COMMIT.
            cur.execute(
                f"""
                WITH changed AS (
                    UPDATE items
                       SET {sets},
                           user_fields = ARRAY(SELECT DISTINCT unnest(user_fields || %s::text[])),
                           updated_at = clock_timestamp()
                     WHERE id = %s AND user_id = %s
                 RETURNING {ITEM_COLUMNS}
                ), bumped AS ({users.bump_version_when("changed")})
                SELECT changed.*, (SELECT wardrobe_version FROM bumped) AS bumped_to FROM changed
                """,
                [*values, fields, item_id, user_id, user_id],
            )
            row = cur.fetchone()
            if row:
                users.noted_bumped(cur, user_id, row.pop("bumped_to"))
            return row

        return self._pool.run(update)

    def delete(self, user_id: int, item_id: str) -> bool:
        item_id = parse_uuid(item_id)
        if item_id is None:
            return False

        def delete(cur: Any) -> bool:
            cur.execute(
                f"""
                WITH gone AS (DELETE FROM items WHERE id = %s AND user_id = %s RETURNING id),
                     bumped AS ({users.bump_version_when("gone")})
                SELECT wardrobe_version AS bumped_to FROM bumped
                """,
                (item_id, user_id, user_id),
            )
            row = cur.fetchone()
            if row:
                users.noted_bumped(cur, user_id, row["bumped_to"])
            return row is not None

        return self._pool.run(delete)

    # --- what the workers record ---------------------------------------------------------------------------

    def for_job(self, item_id: Any) -> dict[str, Any] | None:
        def select(cur: Any) -> Any:
            cur.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s", (item_id,))
            return cur.fetchone()

        return self._pool.run(select, transaction=False)

    def cutout_done(self, item: dict[str, Any], job: dict[str, Any], cutout_key: str) -> bool:
        """The cutout is stored: the item points at it and its job moves on to the analysis."""

        return jobs.record(
            self._pool,
            job,
            lambda cur, job: jobs.advance(cur, job, "analyze"),
            lambda cur: cur.execute(
                "UPDATE items SET cutout_key = %s, updated_at = clock_timestamp() WHERE id = %s",
                (cutout_key, item["id"]),
            ),
        )

    def analysis_done(
        self, item: dict[str, Any], job: dict[str, Any], attributes: dict[str, Any], result: dict[str, Any]
    ) -> bool:
        """Fill in what the analysis found, except fields the user set (their word beats the model's); the
        item is ready and its job succeeded."""

        def fill_in(cur: Any) -> None:
            cur.execute("SELECT user_fields FROM items WHERE id = %s FOR UPDATE", (item["id"],))
            row = cur.fetchone()
            if row is None:
                return  # deleted meanwhile: nothing to fill in
            fields = [f for f in ANALYSED if f in attributes and f not in set(row["user_fields"])]
            sets = "".join(f"{f} = %s, " for f in fields)
            values = [Json(attributes[f]) if f == "colors" else attributes[f] for f in fields]
            cur.execute(
                f"""
                UPDATE items SET {sets}analysis = %s, status = 'ready', updated_at = clock_timestamp()
                 WHERE id = %s
                """,
                [*values, Json(attributes), item["id"]],
            )

        return jobs.record(self._pool, job, lambda cur, job: jobs.succeed(cur, job, result), fill_in)

    def job_failed(self, job: dict[str, Any], error: str) -> bool:
        return jobs.record_failure(self._pool, job, error, MARK_FAILED)

    def ready_for_capsules(self, user_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """The items an outfit can use: analysed, with a category."""

        def select(cur: Any) -> list[dict[str, Any]]:
            cur.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE user_id = %s AND status = 'ready' "
                "AND category IS NOT NULL ORDER BY created_at DESC, id DESC LIMIT %s",
                (user_id, limit),
            )
            return cur.fetchall()

        return self._pool.run(select, transaction=False)


ANALYSED = ("category", "colors", "season", "style", "pattern", "material", "formality")
