"""Jobs: the Postgres record of background work (the outbox). Every SQL statement about jobs lives here.

A job row is committed with the row it works on; handing it to Redis happens after the commit and is recorded in
`enqueued_at`, so a job whose enqueue failed is found and sent again by the reaper.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from psycopg2.extras import Json

from wardrobe.store import parse_uuid, picked, timestamps, users
from wardrobe.store.db import Pool

log = logging.getLogger(__name__)

JOB_COLUMNS = (
    "id, user_id, kind, stage, state, item_id, capsule_id, attempts, max_attempts, error, result, request_id, "
    "run_after, enqueued_at, locked_until, claim, created_at, updated_at"
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


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of background work: its first stage, and which row it fills in."""

    name: str
    first_stage: str
    target: str  # the jobs column naming the row: item_id or capsule_id


PROCESS_ITEM = Kind("process_item", first_stage="cutout", target="item_id")
BUILD_CAPSULE = Kind("build_capsule", first_stage="capsule", target="capsule_id")


def create_with_job(
    pool: Pool,
    kind: Kind,
    user_id: int,
    create_row: Callable[[Any], dict[str, Any]],
    *,
    max_attempts: int,
    request_id: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A row that background work fills in and its job, in one transaction: `create_row(cur)` inserts the row,
    the job points at it, and the owner's version moves on. The caller enqueues the job after this returns."""

    def create(cur: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        row = create_row(cur)
        job = insert(
            cur,
            user_id=user_id,
            kind=kind.name,
            stage=kind.first_stage,
            max_attempts=max_attempts,
            request_id=request_id,
            **{kind.target: row["id"]},
        )
        users.bump_version(cur, user_id)
        return row, job

    return pool.run(create)


def record(
    pool: Pool,
    job: dict[str, Any],
    outcome: Callable[[Any, dict[str, Any]], bool],
    effect: Callable[[Any], None],
) -> bool:
    """What a claimed run did, in one transaction: the job's `outcome` (advance, succeed, fail), its `effect` on
    the row it works on, and the owner's version, so every cached read of theirs is renewed.

    Fenced by the run's claim: when the lease expired and another run took the job over, the outcome matches no
    row and nothing is written (returns False) — a late first run never overwrites the newer one's result.
    """

    def commit(cur: Any) -> bool:
        if not outcome(cur, job):
            return False
        effect(cur)
        users.bump_version(cur, job["user_id"])
        return True

    written = pool.run(commit)
    if not written:
        log.warning(
            "job %s (%s): this run's claim was taken over after its lease expired; its result is dropped",
            job["id"],
            job["stage"],
        )
    return written


def record_failure(pool: Pool, job: dict[str, Any], error: str, mark_row_failed: str) -> bool:
    """The job failed for good: `mark_row_failed` (SQL taking the row's id) marks what it worked on."""
    row_id = job["item_id"] or job["capsule_id"]
    return record(
        pool, job, lambda cur, job: fail(cur, job, error), lambda cur: cur.execute(mark_row_failed, (row_id,))
    )


# The outcomes of a claimed run, for `record`: each updates the job only while this run's claim holds it.
_CLAIMED = "WHERE id = %s AND claim = %s AND state = 'running'"


def advance(cur: Any, job: dict[str, Any], stage: str) -> bool:
    """Hand the job to its next stage."""
    cur.execute(
        f"""
        UPDATE jobs SET stage = %s, state = 'queued', attempts = 0, locked_until = NULL, enqueued_at = NULL,
                        claim = NULL, error = NULL, run_after = clock_timestamp(), updated_at = clock_timestamp()
         {_CLAIMED}
        """,
        (stage, job["id"], job["claim"]),
    )
    return cur.rowcount == 1


def succeed(cur: Any, job: dict[str, Any], result: dict[str, Any]) -> bool:
    cur.execute(
        f"""
        UPDATE jobs SET state = 'succeeded', result = %s, error = NULL, locked_until = NULL,
                        finished_at = clock_timestamp(), updated_at = clock_timestamp()
         {_CLAIMED}
        """,
        (Json(result), job["id"], job["claim"]),
    )
    return cur.rowcount == 1


def fail(cur: Any, job: dict[str, Any], error: str) -> bool:
    cur.execute(
        f"""
        UPDATE jobs SET state = 'failed', error = %s, locked_until = NULL,
                        finished_at = clock_timestamp(), updated_at = clock_timestamp()
         {_CLAIMED}
        """,
        (error[:500], job["id"], job["claim"]),
    )
    return cur.rowcount == 1


def serialize(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        **picked(row, "kind", "state", "stage", "attempts", "error", "result"),
        "item_id": str(row["item_id"]) if row["item_id"] else None,
        "capsule_id": str(row["capsule_id"]) if row["capsule_id"] else None,
        **timestamps(row),
    }


class Jobs:
    # How far back the cutout rate looks, and how long one process reuses it: polling users (once a second
    # each) cost one count per box every few seconds, not one per poll.
    RATE_WINDOW_SECONDS = 300
    RATE_CACHE_SECONDS = 5.0

    def __init__(self, pool: Pool, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._clock = clock
        self._rate: tuple[float, float] | None = None  # (measured at, cutouts per second)

    def get(self, user_id: int, job_id: str) -> dict[str, Any] | None:
        job_id = parse_uuid(job_id)
        if job_id is None:
            return None

        def select(cur: Any) -> Any:
            cur.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s AND user_id = %s", (job_id, user_id))
            return cur.fetchone()

        return self._pool.run(select, transaction=False)

    def cutout_queue(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """For an upload still waiting for its cutout: how many cutouts are ahead of it, how many were done per
        minute fleet-wide lately, and when its own may be done (None when nothing was done lately to go by)."""
        if job["stage"] != "cutout" or job["state"] not in ("queued", "running"):
            return None

        def select(cur: Any) -> int:
            cur.execute(
                """
                SELECT count(*) AS ahead FROM jobs
                 WHERE state IN ('queued', 'running') AND stage = 'cutout' AND created_at < %s
                """,
                (job["created_at"],),
            )
            return cur.fetchone()["ahead"]

        ahead = 0 if job["state"] == "running" else self._pool.run(select, transaction=False)
        per_second = self._cutout_rate()
        return {
            "ahead": ahead,
            "cutouts_per_minute": round(per_second * 60, 1),
            "estimate_seconds": round((ahead + 1) / per_second) if per_second > 0 else None,
        }

    def _cutout_rate(self) -> float:
        now = self._clock()
        if self._rate is not None and now - self._rate[0] < self.RATE_CACHE_SECONDS:
            return self._rate[1]

        def select(cur: Any) -> int:
            # now(), not clock_timestamp(): a volatile bound cannot be an index condition, so the window would be
            # found by reading every cutout ever done (tests/test_query_plans.py). The statement just began.
            cur.execute(
                """
                SELECT count(*) AS done FROM jobs
                 WHERE kind = 'process_item' AND stage = 'analyze'
                   AND run_after > now() - make_interval(secs => %s)
                """,
                (self.RATE_WINDOW_SECONDS,),
            )
            return cur.fetchone()["done"]

        per_second = self._pool.run(select, transaction=False) / self.RATE_WINDOW_SECONDS
        self._rate = (now, per_second)
        return per_second

    def mark_enqueued(self, job_ids: list[str]) -> None:
        if not job_ids:
            return

        def update(cur: Any) -> None:
            cur.execute(
                "UPDATE jobs SET enqueued_at = clock_timestamp() WHERE id = ANY(%s::uuid[])",
                ([str(j) for j in job_ids],),
            )

        self._pool.run(update, transaction=False)


class JobLedger(Jobs):
    """The workers' side of jobs: claim with a lease, advance, finish, retry, and what the reaper must resend."""

    def claim(self, job_id: str, stage: str, lease_seconds: int) -> dict[str, Any] | None:
        """Take the job if it is ours to run: queued and due, or running with an expired lease and attempts left.

        Returns None for a duplicate delivery, a finished job, one that moved to another stage, or one whose
        worker died on every attempt (the reaper fails it: see `dead`). The returned row carries a new `claim`,
        the fencing token every write of this run must name.
        """

        def update(cur: Any) -> Any:
            cur.execute(
                f"""
                UPDATE jobs
                   SET state = 'running', attempts = attempts + 1, claim = gen_random_uuid(),
                       locked_until = clock_timestamp() + make_interval(secs => %s),
                       started_at = COALESCE(started_at, clock_timestamp()), updated_at = clock_timestamp()
                 WHERE id = %s AND stage = %s AND attempts < max_attempts
                   AND ((state = 'queued' AND run_after <= clock_timestamp() + interval '1 second')
                        OR (state = 'running' AND locked_until < clock_timestamp()))
             RETURNING {JOB_COLUMNS}
                """,
                (lease_seconds, job_id, stage),
            )
            return cur.fetchone()

        return self._pool.run(update, transaction=False)

    def retry_later(
        self, job: dict[str, Any], error: str, delay: float, *, count_attempt: bool = True
    ) -> bool:
        """Back to the queue after `delay` seconds; a rate-limit deferral does not use up an attempt.

        False when this run's claim was taken over meanwhile: the newer run decides, so nothing is written.
        """

        def update(cur: Any) -> bool:
            cur.execute(
                f"""
                UPDATE jobs SET state = 'queued', error = %s, locked_until = NULL, claim = NULL,
                                attempts = attempts - %s,
                                run_after = clock_timestamp() + make_interval(secs => %s),
                                enqueued_at = clock_timestamp(), updated_at = clock_timestamp()
                 {_CLAIMED}
                """,
                (error[:500], 0 if count_attempt else 1, delay, job["id"], job["claim"]),
            )
            return cur.rowcount == 1

        return self._pool.run(update, transaction=False)

    def unsent(self, grace_seconds: float, stale_seconds: float, limit: int = 500) -> list[dict[str, Any]]:
        """Jobs that need (re)sending to Redis: never enqueued, lease expired, or enqueued long ago and idle."""

        def select(cur: Any) -> list[dict[str, Any]]:
            cur.execute(
                """
                SELECT id, stage, state, run_after FROM jobs
                 WHERE (state = 'queued' AND run_after <= clock_timestamp()
                        AND created_at < clock_timestamp() - make_interval(secs => %s)
                        AND (enqueued_at IS NULL OR enqueued_at < clock_timestamp() - make_interval(secs => %s)))
                    OR (state = 'running' AND locked_until < clock_timestamp() AND attempts < max_attempts)
                 ORDER BY run_after
                 LIMIT %s
                """,
                (grace_seconds, stale_seconds, limit),
            )
            return cur.fetchall()

        return self._pool.run(select, transaction=False)

    def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """Running jobs whose lease expired on their last attempt: the worker died (SIGKILL, out of memory, a
        native crash) every time it ran them. Nothing will claim them again; the reaper fails them."""

        def select(cur: Any) -> list[dict[str, Any]]:
            cur.execute(
                f"""
                SELECT {JOB_COLUMNS} FROM jobs
                 WHERE state = 'running' AND locked_until < clock_timestamp() AND attempts >= max_attempts
                 ORDER BY locked_until
                 LIMIT %s
                """,
                (limit,),
            )
            return cur.fetchall()

        return self._pool.run(select, transaction=False)

    def backlog(self, statement_timeout_ms: int | None = None) -> list[dict[str, Any]]:
        """Per stage: how many jobs wait and how old the oldest is (for metrics).

        `statement_timeout_ms`: a tighter server-side bound than the pool's, for a caller someone waits on (the
        API reads this while Prometheus waits for /metrics)."""

        def select(cur: Any) -> list[dict[str, Any]]:
            if statement_timeout_ms is not None:
                # LOCAL: the bound ends with this transaction; the pooled connection keeps its own.
                cur.execute("SET LOCAL statement_timeout = %s", (statement_timeout_ms,))
            cur.execute(
                """
                SELECT stage, count(*) AS waiting,
                       COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(run_after)), 0) AS oldest_age
                  FROM jobs WHERE state = 'queued' AND run_after <= clock_timestamp()
                 GROUP BY stage
                """
            )
            return cur.fetchall()

        return self._pool.run(select, transaction=statement_timeout_ms is not None)
