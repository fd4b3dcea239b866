"""`make bench-partitioning`: does hash-partitioning items by user_id pay at 100,000 users?

Seeds 100,000 users' items into a database of its own (the real schema, by the migrations), copies them into a
table of the same columns and indexes hash-partitioned by user_id (`--partitions`), and times the hot item queries
on both, interleaved: the repository's SQL (store/items.py) for a list's first page, a category filter, the next
page, an item's detail, a PATCH, an upload's INSERT, and the workers' lookups by id alone. Each query runs for
`--samples` random users per round in a rotated order, and the medians of the round medians are reported with the
plan (how many partitions a statement touches) and the B-tree depth of each index.
Writes bench/results/partitioning.{json,md}; the database is dropped afterwards unless `--keep` (a base backup of
the cluster, as tests/test_replicas.py takes, copies every database).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

from wardrobe import migrate
from wardrobe.store.items import ITEM_COLUMNS

RESULTS = Path(__file__).resolve().parent / "results"
FIRST_USER = 9_000_000_000

SEED_USERS = """
INSERT INTO users (id, display_name) SELECT u, 'User ' || u FROM generate_series(%(first)s::bigint, %(last)s::bigint) u
"""
# The shape of tests/test_query_plans.py's population: categories, seasons and styles hashed per item, newest first.
SEED_ITEMS = """
INSERT INTO items (user_id, status, category, season, style, colors, brand, image_key, cutout_key, analysis,
                   created_at, updated_at)
SELECT u, 'ready',
       (ARRAY['top','top','top','bottom','bottom','dress','outerwear','shoes','shoes','bag','accessory'])[1 + h %% 11],
       (ARRAY['summer','winter','demi-season','all-season'])[1 + h / 11 %% 4],
       (ARRAY['casual','business','sport','evening','classic'])[1 + h / 44 %% 5],
       '[{"name": "navy", "hex": "#1f2a44"}]'::jsonb,
       (ARRAY['Zara','H&M','Uniqlo','COS',NULL])[1 + h / 220 %% 5],
       'seed/' || u || '/' || i || '.jpg', 'seed/' || u || '/' || i || '.png', '{"source": "seed"}'::jsonb,
       now() - make_interval(hours => (i * 7 + u %% 97)::int), now() - make_interval(hours => (i * 7 + u %% 97)::int)
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS u,
       generate_series(1, %(per_user)s) AS i,
       LATERAL (SELECT hashint8(u * 1000 + i) & 2147483647 AS h) AS hashed
"""
# Postgres wants the partition key in every unique index of a partitioned table: the primary key becomes
# (id, user_id), and a foreign key to items (jobs.item_id) would have to carry user_id too.
PARTITIONED = """
CREATE SCHEMA hashed;
CREATE TABLE hashed.items (LIKE public.items INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY HASH (user_id);
{partitions}
ALTER TABLE hashed.items ADD PRIMARY KEY (id, user_id);
{indexes}
INSERT INTO hashed.items SELECT * FROM public.items;
"""

LIST = f"SELECT {ITEM_COLUMNS} FROM items WHERE user_id = %s ORDER BY created_at DESC, id DESC LIMIT 21"
# name -> (SQL as store/items.py sends it, how to fill it from one of the user's items)
QUERIES: dict[str, tuple[str, Callable[[dict[str, Any]], tuple]]] = {
    "list page 1": (LIST, lambda r: (r["user_id"],)),
    "list by category": (
        f"SELECT {ITEM_COLUMNS} FROM items WHERE user_id = %s AND category = %s "
        "ORDER BY created_at DESC, id DESC LIMIT 21",
        lambda r: (r["user_id"], r["category"]),
    ),
    "list next page": (
        f"SELECT {ITEM_COLUMNS} FROM items WHERE user_id = %s AND (created_at, id) < (%s, %s::uuid) "
        "ORDER BY created_at DESC, id DESC LIMIT 21",
        lambda r: (r["user_id"], r["created_at"], r["id"]),
    ),
    "item detail": (
        f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s AND user_id = %s",
        lambda r: (r["id"], r["user_id"]),
    ),
    "worker: item by id": (f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s", lambda r: (r["id"],)),
    "PATCH": (
        "UPDATE items SET notes = %s, updated_at = clock_timestamp() WHERE id = %s AND user_id = %s",
        lambda r: ("bench", r["id"], r["user_id"]),
    ),
    "worker: mark by id": (
        "UPDATE items SET updated_at = clock_timestamp() WHERE id = %s",
        lambda r: (r["id"],),
    ),
    "upload INSERT": (
        "INSERT INTO items (user_id, image_key, category) VALUES (%s, 'bench/new.jpg', 'top') RETURNING id",
        lambda r: (r["user_id"],),
    ),
}
VARIANTS = {"unpartitioned": "public", "hashed": "hashed,public"}


def _admin(sql: str) -> None:
    conn = psycopg2.connect("postgresql:///postgres")
    conn.autocommit = True
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def seed(dsn: str, users: int, per_user: int, partitions: int) -> dict[str, float]:
    """The population and its partitioned copy; seconds each step took."""
    timings = {}
    migrate.apply(dsn)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    params = {"first": FIRST_USER, "last": FIRST_USER + users - 1, "per_user": per_user}
    for name, sql in (("users", SEED_USERS), ("items", SEED_ITEMS)):
        started = time.monotonic()
        cur.execute("SET synchronous_commit = off")
        cur.execute(sql, params)
        timings[f"seed {name}"] = time.monotonic() - started
    cur.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'items'")
    indexes = [
        row[0]
        .replace(" ON public.items ", " ON hashed.items ")
        .replace("CREATE INDEX ", "CREATE INDEX hashed_")
        for row in cur.fetchall()
        if "UNIQUE" not in row[0]
    ]
    started = time.monotonic()
    cur.execute(
        PARTITIONED.format(
            partitions="\n".join(
                f"CREATE TABLE hashed.items_{n} PARTITION OF hashed.items "
                f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {n});"
                for n in range(partitions)
            ),
            indexes="\n".join(f"{i};" for i in indexes),
        )
    )
    timings["partitioned copy"] = time.monotonic() - started
    started = time.monotonic()
    cur.execute("VACUUM ANALYZE public.items")
    cur.execute("VACUUM ANALYZE hashed.items")
    timings["vacuum analyze"] = time.monotonic() - started
    conn.close()
    return timings


def connect(dsn: str, search_path: str) -> Any:
    # The repository's SQL names `items`: the search path decides which table that is.
    conn = psycopg2.connect(dsn, options=f"-c search_path={search_path}")
    conn.autocommit = True
    return conn


def sample_rows(dsn: str, users: int, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """One item (its id, user, category, created_at) of each of `count` random users."""
    conn = connect(dsn, "public")
    cur = conn.cursor()
    rows = []
    for user_id in rng.sample(range(FIRST_USER, FIRST_USER + users), count):
        cur.execute(
            "SELECT id, user_id, category, created_at FROM items WHERE user_id = %s "
            "ORDER BY created_at DESC, id DESC OFFSET 20 LIMIT 1",
            (user_id,),
        )
        row = cur.fetchone() or None
        if row is None:
            cur.execute(
                "SELECT id, user_id, category, created_at FROM items WHERE user_id = %s LIMIT 1", (user_id,)
            )
            row = cur.fetchone()
        rows.append(dict(zip(("id", "user_id", "category", "created_at"), row, strict=True)))
    conn.close()
    return rows


def plans(conns: dict[str, Any], row: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per query and variant: the index scans its plan makes (one per partition it cannot prune)."""
    found: dict[str, dict[str, int]] = {}
    for name, (sql, args) in QUERIES.items():
        for variant, conn in conns.items():
            cur = conn.cursor()
            cur.execute("BEGIN")
            cur.execute("EXPLAIN (FORMAT JSON) " + sql, args(row))
            plan = cur.fetchone()[0][0]["Plan"]
            cur.execute("ROLLBACK")
            found.setdefault(name, {})[variant] = _count_scans(plan)
    return found


SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan"}


def _count_scans(plan: dict[str, Any]) -> int:
    own = 1 if plan["Node Type"] in SCANS else 0
    return own + sum(_count_scans(child) for child in plan.get("Plans", []))


def tree_depths(dsn: str) -> dict[str, dict[str, int]]:
    """B-tree levels below the root of each items index: the pages a probe reads on top of the leaf."""
    conn = connect(dsn, "public")
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    cur.execute(
        """
        SELECT n.nspname, c.relname, (bt_metap(c.oid::regclass::text)).level
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_index i ON i.indexrelid = c.oid
          JOIN pg_class t ON t.oid = i.indrelid
         WHERE c.relkind = 'i' AND (t.relname = 'items' AND n.nspname = 'public'
                                    OR t.relname = 'items_0' AND n.nspname = 'hashed')
        """
    )
    depths: dict[str, dict[str, int]] = {}
    for schema, index, level in cur.fetchall():
        depths.setdefault("unpartitioned" if schema == "public" else "hashed (one partition)", {})[index] = (
            level
        )
    conn.close()
    return depths


def measure(dsn: str, rows: list[dict[str, Any]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Round medians of each query's wall time per call (µs, client side: planning, execution, the round trip)."""
    conns = {variant: connect(dsn, path) for variant, path in VARIANTS.items()}
    medians: dict[str, dict[str, list[float]]] = {q: {v: [] for v in VARIANTS} for q in QUERIES}
    order = list(VARIANTS)
    for round_no in range(rounds):
        order = order[1:] + order[:1]
        for name, (sql, args) in QUERIES.items():
            for variant in order:
                cur = conns[variant].cursor()
                times = []
                for row in rows:
                    started = time.perf_counter()
                    cur.execute(sql, args(row))
                    if cur.description:
                        cur.fetchall()
                    times.append((time.perf_counter() - started) * 1e6)
                medians[name][variant].append(statistics.median(times))
        print(f"round {round_no + 1}/{rounds} done", flush=True)
    for conn in conns.values():
        conn.close()
    return medians


def machine() -> dict[str, Any]:
    """The load test's machine facts (bench/report.py), with the load average this run started at."""
    from bench import report

    return {**report.machine(), "arch": platform.machine(), "load_average": os.getloadavg()}


def report(result: dict[str, Any]) -> str:
    lines = [
        "# Hash-partitioning items by user_id: the hot item queries, unpartitioned vs partitioned",
        "",
        f"Produced by `make bench-partitioning` (`bench/partitioning.py`) at {result['finished_at']} on "
        f"{result['machine']['cpu']} ({result['machine']['cores']} cores); raw numbers in the .json beside this file.",
        "",
        f"{result['users']:,} users x {result['items_per_user']} items = {result['items']:,} items "
        f"({result['table_size']}, indexes {result['index_size']}); {result['partitions']} hash partitions. "
        f"{result['rounds']} interleaved rounds of {result['samples']} random users per query and variant; "
        "wall µs per statement on one connection, client side (planning, execution, the loopback round trip), "
        "median of the round medians.",
        "",
        "| query | unpartitioned µs | partitioned µs | partitioned/unpartitioned, paired by round (min-max) "
        "| index scans (unpart. / part.) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, by_variant in result["medians"].items():
        plain = statistics.median(by_variant["unpartitioned"])
        hashed = statistics.median(by_variant["hashed"])
        ratios = [h / p for h, p in zip(by_variant["hashed"], by_variant["unpartitioned"], strict=True)]
        scans = result["plans"][name]
        lines.append(
            f"| {name} | {plain:.0f} | {hashed:.0f} | x{statistics.median(ratios):.2f} "
            f"(x{min(ratios):.2f}-x{max(ratios):.2f}) | {scans['unpartitioned']} / {scans['hashed']} |"
        )
    lines += ["", "B-tree levels below the root (bt_metap):", ""]
    for variant, depths in result["depths"].items():
        lines.append(f"- {variant}: " + ", ".join(f"{k} {v}" for k, v in sorted(depths.items())))
    lines += [
        "",
        "Seeding: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["seed_seconds"].items()) + ".",
        f"Machine: load average {result['machine']['load_average'][0]:.2f} at the end "
        f"({result['machine']['load_average'][2]:.2f} over 15 min): other engineers' work shared the cores.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items-per-user", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--database", default="wardrobe_partitioning")
    parser.add_argument("--keep", action="store_true", help="leave the database in place afterwards")
    parser.add_argument("--name", default="partitioning", help="results as bench/results/NAME.{json,md}")
    args = parser.parse_args()
    dsn = f"postgresql:///{args.database}"
    rng = random.Random(19)
    started_at = datetime.datetime.now(datetime.UTC)
    _admin(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")
    _admin(f"CREATE DATABASE {args.database}")
    try:
        seconds = seed(dsn, args.users, args.items_per_user, args.partitions)
        print("seeded:", {k: round(v, 1) for k, v in seconds.items()}, flush=True)
        rows = sample_rows(dsn, args.users, args.samples, rng)
        probe = {variant: connect(dsn, path) for variant, path in VARIANTS.items()}
        found_plans = plans(probe, rows[0])
        for conn in probe.values():
            conn.close()
        medians = measure(dsn, rows, args.rounds)
        depths = tree_depths(dsn)
        conn = connect(dsn, "public")
        cur = conn.cursor()
        cur.execute(
            "SELECT count(*), pg_size_pretty(pg_table_size('items')), pg_size_pretty(pg_indexes_size('items')) "
            "FROM items"
        )
        items, table_size, index_size = cur.fetchone()
        conn.close()
    finally:
        if not args.keep:
            _admin(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "users": args.users,
        "items_per_user": args.items_per_user,
        "items": items,
        "table_size": table_size,
        "index_size": index_size,
        "partitions": args.partitions,
        "rounds": args.rounds,
        "samples": args.samples,
        "seed_seconds": seconds,
        "plans": found_plans,
        "depths": depths,
        "medians": medians,
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (RESULTS / f"{args.name}.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
