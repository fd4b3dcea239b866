"""Capsules: sets of outfits built from a user's wardrobe. Every SQL statement about capsules lives here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg2.extras import Json

from wardrobe.clients.images import image_url
from wardrobe.store import items, jobs, pagination, parse_uuid, picked, timestamps
from wardrobe.store.db import Pool

CAPSULE_COLUMNS = (
    "id, user_id, state, occasion, season, size, name, description, outfits, source, wardrobe_version, "
    "created_at, updated_at"
)
# What a job that failed for good leaves on its row.
MARK_FAILED = "UPDATE capsules SET state = 'failed', updated_at = clock_timestamp() WHERE id = %s"


def serialize(
    row: dict[str, Any],
    wardrobe: dict[str, dict[str, Any]] | None = None,
    image_url: Callable[[str | None], str | None] = image_url,
) -> dict[str, Any]:
    outfits = row["outfits"]
    if wardrobe is not None:
        outfits = [
            {
                **o,
                "items": [
                    items.serialize(wardrobe[i], image_url) for i in o.get("item_ids", []) if i in wardrobe
                ],
            }
            for o in outfits
        ]
    return {
        "id": str(row["id"]),
        **picked(row, "state", "occasion", "season", "size", "name", "description"),
        "outfits": outfits,
        "source": row["source"],
        **timestamps(row),
    }


class Capsules:
    def __init__(self, pool: Pool, max_attempts: int = 5) -> None:
        self._pool = pool
        self._max_attempts = max_attempts

    def request(
        self, user_id: int, params: dict[str, Any], request_id: str | None = None
    ) -> tuple[dict, dict]:
        """A pending capsule and the job that builds it, in one transaction."""

        def insert(cur: Any) -> dict[str, Any]:
            cur.execute(
                f"""
                INSERT INTO capsules (user_id, occasion, season, size) VALUES (%s, %s, %s, %s)
                RETURNING {CAPSULE_COLUMNS}
                """,
                (user_id, params.get("occasion"), params.get("season"), params.get("size") or 3),
            )
            return cur.fetchone()

        return jobs.create_with_job(
            self._pool,
            jobs.BUILD_CAPSULE,
            user_id,
            insert,
            max_attempts=self._max_attempts,
            request_id=request_id,
        )

    def list(self, user_id: int, *, limit: int, cursor: str | None = None) -> tuple[list[dict], str | None]:
        after, after_params = pagination.after(cursor)

        def select(cur: Any) -> list[dict]:
            cur.execute(
                f"SELECT {CAPSULE_COLUMNS} FROM capsules WHERE user_id = %s{after} "
                "ORDER BY created_at DESC, id DESC LIMIT %s",
                [user_id, *after_params, limit + 1],
            )
            return cur.fetchall()

        return pagination.page(self._pool.read(user_id, select), limit)

    def get(self, user_id: int, capsule_id: str) -> tuple[dict, dict[str, dict]] | None:
        """The capsule and the items its outfits name (those still in the wardrobe)."""
        capsule_id = parse_uuid(capsule_id)
        if capsule_id is None:
            return None

        def select(cur: Any) -> tuple[dict, dict[str, dict]] | None:
            cur.execute(
                f"SELECT {CAPSULE_COLUMNS} FROM capsules WHERE id = %s AND user_id = %s",
                (capsule_id, user_id),
            )
            row = cur.fetchone()
            if row is None:
                return None
            ids = sorted({i for o in row["outfits"] for i in o.get("item_ids", [])})
            cur.execute(
                f"SELECT {items.ITEM_COLUMNS} FROM items WHERE user_id = %s AND id = ANY(%s::uuid[])",
                (user_id, ids),
            )
            return row, {str(r["id"]): r for r in cur.fetchall()}

        return self._pool.read(user_id, select)

    # --- what the workers record ---------------------------------------------------------------------------

    def for_job(self, capsule_id: Any) -> dict[str, Any] | None:
        def select(cur: Any) -> Any:
            cur.execute(f"SELECT {CAPSULE_COLUMNS} FROM capsules WHERE id = %s", (capsule_id,))
            return cur.fetchone()

        return self._pool.run(select, transaction=False)

    def complete(
        self,
        capsule: dict[str, Any],
        job: dict[str, Any],
        *,
        name: str,
        description: str,
        outfits: list,
        source: str,
        version: int,
        result: dict[str, Any],
    ) -> bool:
        """The capsule is ready with its outfits, built from the wardrobe at `version`; its job succeeded."""

        return jobs.record(
            self._pool,
            job,
            lambda cur, job: jobs.succeed(cur, job, result),
            lambda cur: cur.execute(
                """
                UPDATE capsules SET state = 'ready', name = %s, description = %s, outfits = %s, source = %s,
                                    wardrobe_version = %s, updated_at = clock_timestamp()
                 WHERE id = %s
                """,
                (name, description, Json(outfits), source, version, capsule["id"]),
            ),
        )

    def job_failed(self, job: dict[str, Any], error: str) -> bool:
        return jobs.record_failure(self._pool, job, error, MARK_FAILED)
