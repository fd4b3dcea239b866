"""Jobs: the Postgres record of background work (the outbox). Every SQL statement about jobs lives here.

A job row is committed with the row it works on; handing it to Redis happens after the commit and is recorded in
`enqueued_at`, so a job whose enqueue failed is found and sent again by the reaper.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg2.extras import Json

from .db import Pool

JOB_COLUMNS = (
    "id, user_id, kind, stage, state, item_id, capsule_id, attempts, max_attempts, error, result, request_id, "
    "run_after, enqueued_at, locked_until, created_at, updated_at"
)


def insert(
    cur: Any,
    *,
    user_id: int,
    kind: str,
    stage: str,
    max_attempts: int,
    item_id: Any = None,
    capsule_id: Any = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    cur.execute(
        f"""
        INSERT INTO jobs (user_id, kind, stage, max_attempts, item_id, capsule_id, request_id)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        RETURNING {JOB_COLUMNS}
        """,
        (user_id, kind, stage, max_attempts, item_id, capsule_id, request_id),
    )
    return cur.fetchone()


def serialize(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "kind": row["kind"],
        "state": row["state"],
        "stage": row["stage"],
        "attempts": row["attempts"],
        "error": row["error"],
        "result": row["result"],
        "item_id": str(row["item_id"]) if row["item_id"] else None,
        "capsule_id": str(row["capsule_id"]) if row["capsule_id"] else None,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def parse_id(raw: str) -> str | None:
    try:
        return str(uuid.UUID(raw))
    except (ValueError, AttributeError, TypeError):
        return None


class Jobs:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def get(self, user_id: int, job_id: str) -> dict[str, Any] | None:
        job_id = parse_id(job_id)
        if job_id is None:
            return None

        def select(cur: Any) -> Any:
            cur.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s AND user_id = %s", (job_id, user_id))
            return cur.fetchone()

        return self._pool.run(select, transaction=False)

    def mark_enqueued(self, job_ids: list[str]) -> None:
        if not job_ids:
            return

        def update(cur: Any) -> None:
            cur.execute(
                "UPDATE jobs SET enqueued_at = clock_timestamp() WHERE id = ANY(%s::uuid[])",
                ([str(j) for j in job_ids],),
            )

        self._pool.run(update, transaction=False)


__all__ = ["JOB_COLUMNS", "Jobs", "Json", "insert", "parse_id", "serialize"]
