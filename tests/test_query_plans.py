"""Every query a request (or the reaper) runs is index-backed at fleet scale: 1,000,000 items of 25,000 users.

The repositories run unchanged on a pool whose cursor EXPLAINs each statement before running it (and rolls back
after each unit of work, so the population stays as seeded). A plan fails on a Seq Scan of a large table, an
index walked end to end without a condition, or a Sort that no index feeds; a paginated list must get its order
from its index (no Sort at all). The population lives in its own database, `wardrobe_explain`, and is reused
while it has the shape below.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from wardrobe import migrate
from wardrobe.store.capsules import Capsules
from wardrobe.store.db import DictCursor
from wardrobe.store.items import Items
from wardrobe.store.jobs import JobLedger
from wardrobe.store.users import Users

pytestmark = pytest.mark.slow

DATABASE = "wardrobe_explain"
DSN = f"postgresql:///{DATABASE}"
USERS, ITEMS_PER_USER, CAPSULES_PER_USER = 25_000, 40, 3
FIRST_USER = 8_000_000_000
# Bump when the seed below changes: a population of another shape is rebuilt.
SHAPE = f"v1 {USERS}x{ITEMS_PER_USER} items, x{CAPSULES_PER_USER} capsules, a job per item and capsule"
LARGE_TABLES = {"items", "jobs", "capsules", "users"}

# The newest item of every 100th user is still being processed; its job sits in one of five places of the
# pipeline (by user): 0 queued for a cutout, 1 cutting out under a live lease, 2 analysing with an expired lease
# (the reaper resends it), 3 expired on its last attempt (the reaper fails it), 4 queued for the analysis.
SEED = [
    """
    INSERT INTO users (id, display_name, username, profile)
    SELECT u, 'User ' || u, 'user' || u, '{"style": ["casual"]}'::jsonb
      FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS u
    """,
    """
    INSERT INTO items (user_id, status, category, season, style, colors, brand, image_key, cutout_key, analysis,
                       created_at, updated_at)
    SELECT u, status,
           (ARRAY['top','top','top','bottom','bottom','dress','outerwear','shoes','shoes','bag','accessory'])
               [1 + h %% 11],
           (ARRAY['summer','winter','demi-season','all-season'])[1 + h / 11 %% 4],
           (ARRAY['casual','business','sport','evening','classic'])[1 + h / 44 %% 5],
           '[{"name": "navy", "hex": "#1f2a44"}]'::jsonb,
           (ARRAY['Zara','H&M','Uniqlo','COS',NULL])[1 + h / 220 %% 5],
           'seed/' || u || '/' || i || '.jpg', 'seed/' || u || '/' || i || '.png', '{"source": "seed"}'::jsonb,
           created, created
      FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS u,
           generate_series(1, %(per_user)s) AS i,
           LATERAL (SELECT hashint8(u * 1000 + i) & 2147483647 AS h) AS hashed,
           LATERAL (SELECT CASE WHEN i = 1 AND u %% 100 = 0 THEN 'processing'
                                WHEN h %% 250 = 0 THEN 'failed' ELSE 'ready' END AS status) AS s,
           LATERAL (SELECT CASE WHEN status = 'processing' THEN now() - make_interval(secs => (u %% 600)::int)
                                ELSE now() - make_interval(hours => (i * 7 + u %% 97)::int) END AS created) AS c
    """,
    """
    INSERT INTO jobs (user_id, kind, stage, state, item_id, attempts, max_attempts, run_after, enqueued_at,
                      locked_until, claim, started_at, finished_at, result, created_at, updated_at)
    SELECT user_id, 'process_item',
           CASE WHEN status = 'processing' AND k < 2 THEN 'cutout' ELSE 'analyze' END,
           CASE WHEN status = 'ready' THEN 'succeeded' WHEN status = 'failed' THEN 'failed'
                WHEN k IN (0, 4) THEN 'queued' ELSE 'running' END,
           id,
           CASE WHEN status = 'processing' AND k = 3 THEN 5 ELSE 1 END, 5,
           created_at + interval '2 seconds',
           created_at + interval '10 milliseconds',
           CASE WHEN status <> 'processing' THEN NULL
                WHEN k = 1 THEN now() + interval '5 minutes'
                WHEN k IN (2, 3) THEN now() - interval '1 minute' END,
           CASE WHEN status = 'processing' AND k IN (1, 2, 3) THEN gen_random_uuid() END,
           created_at + interval '20 milliseconds',
           CASE WHEN status <> 'processing' THEN created_at + interval '4 seconds' END,
           CASE WHEN status = 'ready' THEN '{"source": "seed"}'::jsonb END,
           created_at, created_at
      FROM items, LATERAL (SELECT (user_id / 100) %% 5 AS k) AS place
    """,
    """
    INSERT INTO capsules (user_id, state, occasion, season, size, name, outfits, source, wardrobe_version,
                          created_at, updated_at)
    SELECT u.id, 'ready', 'everyday', 'all-season', 1, 'Capsule ' || c, look.outfits, 'seed', 1,
           now() - make_interval(days => c), now() - make_interval(days => c)
      FROM users u, generate_series(1, %(capsules)s) AS c,
           LATERAL (SELECT jsonb_build_array(jsonb_build_object('name', 'Look 1', 'item_ids', jsonb_agg(id::text)))
                           AS outfits
                      FROM (SELECT id FROM items WHERE user_id = u.id
                             ORDER BY created_at DESC, id DESC LIMIT 3 OFFSET 3 * c) AS newest) AS look
    """,
    """
    INSERT INTO jobs (user_id, kind, stage, state, capsule_id, attempts, run_after, enqueued_at, started_at,
                      finished_at, created_at, updated_at)
    SELECT user_id, 'build_capsule', 'capsule', 'succeeded', id, 1, created_at, created_at, created_at,
           created_at + interval '3 seconds', created_at, created_at
      FROM capsules
    """,
]


def _connect(dbname: str) -> Any:
    conn = psycopg2.connect(f"postgresql:///{dbname}")
    conn.autocommit = True
    return conn


def _ensure_population() -> None:
    admin = _connect("postgres")
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        admin.close()
    applied = migrate.apply(DSN)
    conn = _connect(DATABASE)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS explain_population (shape text NOT NULL)")
            cur.execute("SELECT shape FROM explain_population")
            row = cur.fetchone()
            if row is None or row[0] != SHAPE:
                conn.autocommit = False
                cur.execute("SET LOCAL synchronous_commit = off")
                cur.execute("TRUNCATE users, items, jobs, capsules, explain_population CASCADE")
                params = {
                    "first": FIRST_USER,
                    "last": FIRST_USER + USERS - 1,
                    "per_user": ITEMS_PER_USER,
                    "capsules": CAPSULES_PER_USER,
                }
                for statement in SEED:
                    cur.execute(statement, params)
                cur.execute("INSERT INTO explain_population VALUES (%s)", (SHAPE,))
                conn.commit()
                conn.autocommit = True
                applied = ["seeded"]
            if applied:
                # The planner must see the population (and any new index) as it is.
                cur.execute("ANALYZE users, items, jobs, capsules")
    finally:
        conn.close()


class ExplainingPool:
    """Runs each unit of work in a transaction it rolls back, recording the plan of every statement."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.plans: list[tuple[str, dict[str, Any]]] = []
        plans = self.plans

        class Explaining(DictCursor):
            def execute(self, query: str, vars: Any = None) -> Any:
                if not query.lstrip().upper().startswith("SET "):
                    super().execute("EXPLAIN (FORMAT JSON) " + query, vars)
                    plans.append((" ".join(query.split()), super().fetchone()["QUERY PLAN"][0]["Plan"]))
                return super().execute(query, vars)

        self._cursor = Explaining

    def run(self, work: Callable[[Any], Any], *, transaction: bool = True) -> Any:
        try:
            with self._conn.cursor(cursor_factory=self._cursor) as cur:
                return work(cur)
        finally:
            self._conn.rollback()

    def read(self, user_id: int, work: Callable[[Any], Any]) -> Any:
        return self.run(work, transaction=False)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}


# An index walked end to end is fine while it is small (a partial index of unfinished jobs), not past this.
SMALL_INDEX = 10_000


def problems(plan: dict[str, Any], index_entries: dict[str, float], *, ordered: bool) -> list[str]:
    found = []
    for node in _nodes(plan):
        kind, relation = node["Node Type"], node.get("Relation Name")
        if kind == "Seq Scan" and relation in LARGE_TABLES:
            found.append(f"Seq Scan on {relation}")
        index = node.get("Index Name")
        if kind in INDEX_SCANS and "Index Cond" not in node and index_entries.get(index, 0) > SMALL_INDEX:
            found.append(f"{kind} of all {index_entries[index]:.0f} entries of {index} (no condition)")
        if kind in ("Sort", "Incremental Sort"):
            if ordered:
                found.append(f"{kind} on {node.get('Sort Key')}: the index should give this order")
            elif any(n.get("Relation Name") in LARGE_TABLES for n in _nodes(node)) and not any(
                n["Node Type"] in INDEX_SCANS for n in _nodes(node)
            ):
                found.append(f"{kind} on {node.get('Sort Key')} not fed by an index")
    return found


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    _ensure_population()
    conn = psycopg2.connect(DSN)
    with conn.cursor(cursor_factory=DictCursor) as cur:
        cur.execute("SELECT count(*) AS n FROM items")
        items = cur.fetchone()["n"]
        cur.execute(
            "SELECT c.relname AS name, c.reltuples AS entries FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        )
        index_entries = {row["name"]: row["entries"] for row in cur.fetchall()}
        user_id = FIRST_USER + USERS // 2 + 7
        cur.execute(
            "SELECT id, category, season FROM items WHERE user_id = %s ORDER BY created_at DESC", (user_id,)
        )
        user_items = cur.fetchall()
        cur.execute("SELECT id FROM capsules WHERE user_id = %s LIMIT 1", (user_id,))
        capsule_id = cur.fetchone()["id"]
        cur.execute(
            "SELECT * FROM jobs WHERE state = 'queued' AND stage = 'cutout' ORDER BY created_at LIMIT 1"
        )
        queued_cutout = cur.fetchone()
        cur.execute("SELECT * FROM jobs WHERE user_id = %s LIMIT 1", (user_id,))
        own_job = cur.fetchone()
    conn.rollback()
    assert items >= 1_000_000
    yield {
        "conn": conn,
        "index_entries": index_entries,
        "user_id": user_id,
        "item": user_items[5],
        "capsule_id": str(capsule_id),
        "queued_cutout": queued_cutout,
        "own_job": own_job,
    }
    conn.close()


def _first_page_cursor(items: Items, user_id: int) -> str:
    _, cursor = items.list(user_id, limit=20)
    assert cursor
    return cursor


# name -> (what the request does, given repositories on the explaining pool and the world; ordered: a list page
# whose order must come from its index)
SCENARIOS: dict[str, tuple[Callable[[types.SimpleNamespace, dict[str, Any]], Any], bool]] = {
    "items list": (lambda r, w: r.items.list(w["user_id"], limit=20), True),
    "items list by category": (
        lambda r, w: r.items.list(w["user_id"], limit=20, category=w["item"]["category"]),
        True,
    ),
    "items list by season": (
        lambda r, w: r.items.list(w["user_id"], limit=20, season=w["item"]["season"]),
        True,
    ),
    "items list by category and season": (
        lambda r, w: r.items.list(
            w["user_id"], limit=20, category=w["item"]["category"], season=w["item"]["season"]
        ),
        True,
    ),
    "items list, second page": (
        lambda r, w: r.items.list(w["user_id"], limit=20, cursor=w["cursor"]),
        True,
    ),
    "items list by category, second page": (
        lambda r, w: r.items.list(w["user_id"], limit=20, cursor=w["cursor"], category=w["item"]["category"]),
        True,
    ),
    "item get": (lambda r, w: r.items.get(w["user_id"], str(w["item"]["id"])), False),
    "item edit": (lambda r, w: r.items.update(w["user_id"], str(w["item"]["id"]), {"brand": "COS"}), False),
    "item delete": (lambda r, w: r.items.delete(w["user_id"], str(w["item"]["id"])), False),
    "upload": (lambda r, w: r.items.create(w["user_id"], "seed/new.jpg", {"category": "top"}), False),
    "capsules list": (lambda r, w: r.capsules.list(w["user_id"], limit=20), True),
    "capsule get": (lambda r, w: r.capsules.get(w["user_id"], w["capsule_id"]), False),
    "capsule request": (lambda r, w: r.capsules.request(w["user_id"], {"occasion": "work"}), False),
    "job get": (lambda r, w: r.jobs.get(w["user_id"], str(w["own_job"]["id"])), False),
    "job queue position": (lambda r, w: r.jobs.cutout_queue(w["queued_cutout"]), False),
    "user profile": (lambda r, w: r.users.profile(w["user_id"]), False),
    "user version": (lambda r, w: r.users.version(w["user_id"]), False),
    "first sight of a user": (
        lambda r, w: r.users.ensure(types.SimpleNamespace(id=w["user_id"], display_name="X", username=None)),
        False,
    ),
    "backlog (metrics)": (lambda r, w: r.jobs.backlog(statement_timeout_ms=1000), False),
    "reaper: unsent": (lambda r, w: r.jobs.unsent(10, 300), False),
    "reaper: dead": (lambda r, w: r.jobs.dead(), False),
    "worker: claim": (lambda r, w: r.jobs.claim(str(w["queued_cutout"]["id"]), "cutout", 300), False),
    "worker: items for a capsule": (lambda r, w: r.items.ready_for_capsules(w["user_id"]), False),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_query_is_index_backed_at_fleet_scale(world, name):
    pool = ExplainingPool(world["conn"])
    repos = types.SimpleNamespace(
        items=Items(pool), capsules=Capsules(pool), users=Users(pool), jobs=JobLedger(pool, clock=lambda: 0.0)
    )
    world = {**world, "cursor": _first_page_cursor(Items(ExplainingPool(world["conn"])), world["user_id"])}
    action, ordered = SCENARIOS[name]
    action(repos, world)
    assert pool.plans, f"{name} ran no SQL"
    bad = {
        sql: found
        for sql, plan in pool.plans
        if (found := problems(plan, world["index_entries"], ordered=ordered))
    }
    assert not bad, f"{name}: {bad}"


def test_a_cascading_item_delete_finds_its_jobs_by_index(world):
    """Deleting an item deletes its jobs (ON DELETE CASCADE): that lookup is planned like any other query."""
    pool = ExplainingPool(world["conn"])
    pool.run(lambda cur: cur.execute("DELETE FROM jobs WHERE item_id = %s", (world["item"]["id"],)))
    [(_, plan)] = pool.plans
    assert not problems(plan, world["index_entries"], ordered=False)
