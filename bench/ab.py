"""Same-run A/B benchmarks of GET /api/v1/items: what bench/cache_bench.py and bench/profiler_bench.py share.

Each variant of the API is its own gunicorn over one seeded database; rounds interleave them. Here: starting the
variants (and the memcached they share), the request mix, the load driver, CPU by part of the stack, the rounds,
their summary and the command line. A bench gives its plan (variants and defaults) and its Markdown to `main`.
Everything it starts is stopped again, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import datetime
import itertools
import json
import math
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench import report
from bench.procfs import postgres_backends_cpu, proc_cpu, tree_cpu
from bench.stack import start_isolated
from harness.processes import ROOT, Child, free_port, gunicorn_argv, memcached_argv, wait_http, wait_port

RESULTS = ROOT / "bench" / "results"
BOT_TOKEN = "7000000001:MICRO-bot-token-for-ab-benchmarks-only"
USER_BASE = 7_100_000_000  # apart from the load test's ids, should both ever share a database
ITEMS_PATH = "/api/v1/items"
ITEMS_PATCH_PREFIX = ITEMS_PATH + "/"


# ---------------------------------------------------------------------------------------------- the stack


def start_memcached(log_dir: Path, memory_mb: int = 256) -> tuple[Child, str]:
    port = free_port()
    child = start_isolated(memcached_argv(port, memory_mb, "-c", "4096"), {}, log_dir / "memcached.log")
    wait_port(port, 10, child)
    return child, f"127.0.0.1:{port}"


# The windows of the A/B runs over item pages: 7 s saturated and paced after 1 s of warm-up, hit rates read.
PAGE_WINDOWS: dict[str, Any] = {"seconds": 7.0, "warmup": 1.0, "paced": True, "with_cache_metrics": True}


@dataclasses.dataclass
class Variant:
    """One way of running the API; `env` is what differs from the common settings."""

    name: str
    env: dict[str, str]
    base: str = ""
    child: Child | None = None
    # The gunicorn settings file: the committed code's own when a variant runs it (its hooks match its modules).
    conf: str = "conf/gunicorn.conf.py"

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def cpu_seconds(self) -> float:
        """CPU used so far by the gunicorn master and its workers, reaped ones included (cutime/cstime)."""
        assert self.child is not None
        return tree_cpu(self.child.pid)


class StackCpu:
    """CPU seconds so far, by part of the stack, for one driven instance: its gunicorn, the database's
    backends, memcached and the load generator itself. Read from /proc, so it costs no I/O the driver waits on.
    """

    def __init__(self, variant: Variant, database: str, memcached: Child | None) -> None:
        self._variant = variant
        self._database = database
        self._memcached = memcached

    def read(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "api": self._variant.cpu_seconds(),
            # The idle variants' backends are idle: all of this database's count.
            "postgres": postgres_backends_cpu(self._database),
            "memcached": proc_cpu(self._memcached.pid, children=False) if self._memcached else 0.0,
            "driver": usage.ru_utime + usage.ru_stime,
        }

    @staticmethod
    def delta(start: dict[str, Any], end: dict[str, Any]) -> dict[str, float]:
        pg = sum(t - start["postgres"].get(pid, 0.0) for pid, t in end["postgres"].items())
        return {
            "api": end["api"] - start["api"],
            "postgres": pg,
            "memcached": end["memcached"] - start["memcached"],
            "driver": end["driver"] - start["driver"],
        }


def start_api(variant: Variant, common: dict[str, str], data_root: Path, workers: int) -> None:
    port = free_port()
    env = {
        **common,
        **variant.env,
        # Each instance has its own data dir, so its multiprocess metrics are its own.
        "WARDROBE_DATA_DIR": str(data_root / variant.name),
        "WARDROBE_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(workers),
    }
    # Recycling is off so that a worker restart never lands inside one variant's window.
    argv = gunicorn_argv(variant.conf, "--max-requests", "0")
    variant.child = start_isolated(argv, env, data_root / "logs" / f"{variant.name}.log")
    variant.base = f"http://127.0.0.1:{port}"
    wait_http(variant.base + "/healthz", 30, variant.child)


def prepare_database(database_url: str, images_dir: Path, users: int, items_per_user: int) -> dict[str, Any]:
    import psycopg2

    from bench.seed import seed
    from wardrobe.migrate import apply

    name = database_url.rsplit("/", 1)[1].split("?", 1)[0]
    admin = psycopg2.connect(database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()
    apply(database_url)
    return seed(
        database_url, images_dir, users=users, items_per_user=items_per_user, user_base=USER_BASE, log=print
    )


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ the request mix


class Mix:
    """GET first and second pages of item lists for Zipf-skewed users, and a few PATCHes that bump versions.

    Cursors and item ids are learned from first pages; they mean the same thing on every variant (one database).
    """

    def __init__(self, users: int, *, skew: float, second_page: float, writes: float) -> None:
        self.user_ids = [USER_BASE + i for i in range(users)]
        # Hot users are scattered over the id range rather than being the lowest ids.
        random.Random(0).shuffle(self.user_ids)
        self._cum = list(itertools.accumulate(1.0 / (rank**skew) for rank in range(1, users + 1)))
        self.second_page = second_page
        self.writes = writes
        now = int(time.time())
        from wardrobe.web.auth import sign_init_data

        self.auth = {
            uid: "tma " + sign_init_data(BOT_TOKEN, {"id": uid, "first_name": "Bench"}, auth_date=now)
            for uid in self.user_ids
        }
        self.cursor: dict[int, str] = {}
        self.item_ids: dict[int, list[str]] = {}

    def user(self, rng: random.Random) -> int:
        return self.user_ids[bisect.bisect_left(self._cum, rng.random() * self._cum[-1])]

    def next(self, rng: random.Random, serial: int) -> tuple[str, str, str, bytes | None, int]:
        """(kind, method, path, body, user id); kind is first | second | write."""
        uid = self.user(rng)
        roll = rng.random()
        if roll < self.writes and uid in self.item_ids:
            item = rng.choice(self.item_ids[uid])
            body = json.dumps({"notes": f"micro edit {serial}"}).encode()
            return "write", "PATCH", f"{ITEMS_PATCH_PREFIX}{item}", body, uid
        if roll < self.writes + self.second_page and uid in self.cursor:
            return "second", "GET", f"{ITEMS_PATH}?cursor={self.cursor[uid]}", None, uid
        return "first", "GET", ITEMS_PATH, None, uid

    def learn(self, uid: int, body: bytes) -> None:
        page = json.loads(body)
        self.item_ids[uid] = [item["id"] for item in page["items"]]
        if page.get("next_cursor"):
            self.cursor[uid] = urllib.parse.quote(page["next_cursor"], safe="")


# ------------------------------------------------------------------------------------------- the load driver


@dataclasses.dataclass
class Segment:
    """What one variant did in one window of one round."""

    seconds: float
    latencies_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    errors: int = 0
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    shed: int = 0
    cpu_marks: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def record(self, kind: str, status: int, ms: float) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status >= 400 or status == 0:
            self.errors += 1
            return
        self.latencies_ms.setdefault(kind, []).append(ms)

    @property
    def completed(self) -> int:
        return sum(len(v) for v in self.latencies_ms.values())

    def reads_ms(self) -> list[float]:
        return self.latencies_ms.get("first", []) + self.latencies_ms.get("second", [])


class Driver:
    """geventhttpclient against one instance: closed loop (N connections flat out) or open loop (fixed rate)."""

    def __init__(self, base: str, mix: Mix, connections: int) -> None:
        from geventhttpclient import URL, HTTPClient

        self._client = HTTPClient.from_url(
            URL(base), concurrency=connections, connection_timeout=5, network_timeout=10
        )
        self._mix = mix
        self._connections = connections

    def close(self) -> None:
        self._client.close()

    def _one(self, rng: random.Random, serial: int, segment: Segment | None, started: float | None) -> None:
        kind, method, path, body, uid = self._mix.next(rng, serial)
        headers = {"Authorization": self._mix.auth[uid]}
        if body is not None:
            headers["Content-Type"] = "application/json"
        began = time.perf_counter() if started is None else started
        try:
            resp = self._client.request(method, path, body=body, headers=headers)
            status = resp.status_code
            data = resp.read()
            resp.release()
        except Exception:  # any transport failure is one error in the tally, not the end of the run
            status, data = 0, b""
        elapsed_ms = (time.perf_counter() - began) * 1000
        if kind == "first" and status == 200 and uid not in self._mix.item_ids:
            self._mix.learn(uid, data)
        if segment is not None:
            segment.record(kind, status, elapsed_ms)

    def closed(
        self, seconds: float, warmup: float, rng: random.Random, cpu: Callable[[], dict[str, Any]]
    ) -> Segment:
        import gevent

        serial = itertools.count()
        segment = Segment(seconds)
        t0 = time.perf_counter()
        # CPU is read at the measured window's edges, so the warm-up's work is not charged to its requests.
        markers = [
            gevent.spawn_later(at, lambda: segment.cpu_marks.append(cpu()))
            for at in (warmup, warmup + seconds)
        ]
        measure_from, until = t0 + warmup, t0 + warmup + seconds

        def user_loop() -> None:
            while True:
                now = time.perf_counter()
                if now >= until:
                    return
                self._one(rng, next(serial), segment if now >= measure_from else None, None)

        gevent.joinall([gevent.spawn(user_loop) for _ in range(self._connections)] + markers)
        return segment

    def prime(self) -> int:
        """One first page per user, so every user's cursor and item ids are known before anything is timed."""
        import gevent
        from gevent.pool import Pool

        pool = Pool(self._connections)
        for uid in self._mix.user_ids:
            pool.spawn(self._learn, uid)
        pool.join()
        gevent.sleep(0)
        return len(self._mix.item_ids)

    def _learn(self, uid: int) -> None:
        resp = self._client.get(ITEMS_PATH, headers={"Authorization": self._mix.auth[uid]})
        data = resp.read()
        resp.release()
        if resp.status_code == 200:
            self._mix.learn(uid, data)

    def paced(
        self,
        rate: float,
        seconds: float,
        warmup: float,
        rng: random.Random,
        cpu: Callable[[], dict[str, Any]],
        cap: int = 2000,
    ) -> Segment:
        """Requests start on a fixed schedule; latency counts from the scheduled start (no coordinated omission)."""
        import gevent
        from gevent.pool import Pool

        segment = Segment(seconds)
        pool = Pool(cap)
        t0 = time.perf_counter()
        markers = [
            gevent.spawn_later(at, lambda: segment.cpu_marks.append(cpu()))
            for at in (warmup, warmup + seconds)
        ]
        total = int((warmup + seconds) * rate)
        first_measured = int(warmup * rate)
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            target = segment if i >= first_measured else None
            if pool.full():
                if target is not None:
                    segment.shed += 1
                continue
            pool.spawn(self._one, rng, i, target, due)
        pool.join(timeout=30)
        gevent.joinall(markers)
        return segment


# ---------------------------------------------------------------------------------------------- measuring


def scrape_cache(base: str) -> dict[str, float]:
    """wardrobe_cache_requests_total{kind="items"} by result, from the instance's own /metrics (loopback)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    counts = {"hit": 0.0, "miss": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "wardrobe_cache_requests_total" and sample.labels.get("kind") == "items":
                counts[sample.labels["result"]] = counts.get(sample.labels["result"], 0.0) + sample.value
    return counts


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))  # nearest rank
    return ordered[rank - 1]


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def summarize_segment(segment: Segment, cache: dict[str, float] | None) -> dict[str, Any]:
    reads = segment.reads_ms()
    cpu = StackCpu.delta(*segment.cpu_marks) if len(segment.cpu_marks) == 2 else None
    per_request = {}
    if cpu and segment.completed:
        per_request = {part: round(seconds * 1000 / segment.completed, 3) for part, seconds in cpu.items()}
    out: dict[str, Any] = {
        "requests": segment.completed,
        "reads": len(reads),
        "writes": len(segment.latencies_ms.get("write", [])),
        "errors": segment.errors,
        "statuses": segment.statuses,
        "throughput_rps": _r(segment.completed / segment.seconds, 1),
        "p50_ms": _r(percentile(reads, 50)),
        "p95_ms": _r(percentile(reads, 95)),
        "p99_ms": _r(percentile(reads, 99)),
        # The API's own CPU, and the server side's (API + Postgres backends + memcached), per request.
        "cpu_ms_per_request": per_request.get("api"),
        "stack_cpu_ms_per_request": _r(sum(v for k, v in per_request.items() if k != "driver"), 3)
        if per_request
        else None,
        "cpu_ms_per_request_by_part": per_request,
    }
    if segment.shed:
        out["shed"] = segment.shed
    if cache is not None:
        looked = cache["hit"] + cache["miss"]
        out["cache_lookups"] = int(looked)
        out["hit_rate"] = _r(cache["hit"] / looked, 4) if looked else None
    return out


def measure(
    variant: Variant,
    probe: StackCpu,
    run: Callable[[Callable[[], dict[str, Any]]], Segment],
    with_cache: bool,
) -> dict[str, Any]:
    # The hit rate is a ratio, so scraping around the whole window (warm-up included) does not bias it.
    before_cache = scrape_cache(variant.base) if with_cache else None
    segment = run(probe.read)
    delta = None
    if before_cache is not None:
        after = scrape_cache(variant.base)
        delta = {k: after.get(k, 0.0) - before_cache.get(k, 0.0) for k in ("hit", "miss")}
    return summarize_segment(segment, delta)


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return _r(statistics.median(values), 4) if values else None


def spread_of(rows: list[dict[str, Any]], key: str) -> list[float] | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return [min(values), max(values)] if values else None


def paired_ratios(
    rounds: list[dict[str, dict[str, Any]]], window: str, a: str, b: str, key: str
) -> dict[str, Any] | None:
    """b/a per round (the two ran minutes apart at most, so drift mostly cancels): median, min, max."""
    ratios = []
    for rnd in rounds:
        va, vb = rnd[a][window].get(key), rnd[b][window].get(key)
        if va and vb is not None:
            ratios.append(vb / va)
    if not ratios:
        return None
    return {
        "median": round(statistics.median(ratios), 4),
        "min": round(min(ratios), 4),
        "max": round(max(ratios), 4),
        "per_round": [round(x, 4) for x in ratios],
    }


# ------------------------------------------------------------------------------------------------ machine


def machine_facts(database_url: str) -> dict[str, Any]:
    import psycopg2

    box = report.machine()
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version")
        pg = cur.fetchone()[0]
    memcached = subprocess.run(["memcached", "-V"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True
        ).stdout
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": box["cpu"],
        "mem_gb": box["memory_gb"],
        "kernel": box["kernel"],
        "python": box["python"],
        "postgres": pg,
        "memcached": memcached,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "git_commit": commit + ("-dirty" if dirty else ""),
    }


# ---------------------------------------------------------------------------------------------- the runs


@dataclasses.dataclass
class Plan:
    """What a benchmark compares and how its rounds are laid out (`configured` applies the command line)."""

    name: str
    question: str
    variants: list[Variant]
    baseline: str
    rounds: int
    seconds: float
    warmup: float
    _: dataclasses.KW_ONLY
    paced: bool = False  # a fixed-rate window after each closed-loop one
    with_cache_metrics: bool = False
    paced_seconds: float = 0.0

    def configured(self, args: argparse.Namespace) -> Plan:
        """The plan with what the command line sets (0 keeps the plan's own)."""
        return dataclasses.replace(
            self,
            rounds=args.rounds or self.rounds,
            seconds=args.seconds or self.seconds,
            warmup=args.warmup or self.warmup,
            paced_seconds=args.paced_seconds if self.paced else 0,
        )


def round_order(names: list[str], index: int) -> list[str]:
    """Rotate the start and reverse every other round (ABC, CBA-rotated...), so no variant always goes first."""
    shift = index % len(names)
    order = names[shift:] + names[:shift]
    return order if index % 2 == 0 else order[::-1]


def run_plan(plan: Plan, args: argparse.Namespace, mix: Mix, probes: dict[str, StackCpu]) -> dict[str, Any]:
    drivers = {v.name: Driver(v.base, mix, args.connections) for v in plan.variants}
    names = [v.name for v in plan.variants]
    by_name = {v.name: v for v in plan.variants}
    try:
        known = drivers[names[-1]].prime()
        print(f"  primed {known} users' cursors through {names[-1]}", flush=True)
        # Calibration doubles as warm-up: pools open, users are known to every worker, memcached fills.
        calibration = {}
        for name in names:
            seg = drivers[name].closed(
                args.calibrate_seconds, 1.0, random.Random(f"cal-{name}"), probes[name].read
            )
            calibration[name] = round(seg.completed / seg.seconds, 1)
            print(f"  calibrate {name}: {calibration[name]} req/s", flush=True)
        rate = args.paced_rate or round(args.paced_fraction * min(calibration.values()), -1)
        rounds: list[dict[str, dict[str, Any]]] = []
        for index in range(plan.rounds):
            rnd: dict[str, dict[str, Any]] = {}
            for name in round_order(names, index):
                variant, driver = by_name[name], drivers[name]
                seed = f"{plan.name}-{index}-{name}"
                rnd[name] = {
                    "loadavg_before": Path("/proc/loadavg").read_text().split()[0],
                    "closed": measure(
                        variant,
                        probes[name],
                        lambda cpu, d=driver, s=seed: d.closed(
                            plan.seconds, plan.warmup, random.Random(s), cpu
                        ),
                        plan.with_cache_metrics,
                    ),
                }
                if plan.paced:
                    rnd[name]["paced"] = measure(
                        variant,
                        probes[name],
                        lambda cpu, d=driver, s=seed: d.paced(
                            rate, plan.paced_seconds, plan.warmup, random.Random(s + "p"), cpu
                        ),
                        plan.with_cache_metrics,
                    )
                c = rnd[name]["closed"]
                line = f"  round {index + 1}/{plan.rounds} {name:15} {c['throughput_rps']:8} req/s p95 {c['p95_ms']} ms"
                if "paced" in rnd[name]:
                    line += f" | paced p95 {rnd[name]['paced']['p95_ms']} ms"
                if c.get("hit_rate") is not None:
                    line += f" | hit {c['hit_rate']:.1%}"
                print(line, flush=True)
            rounds.append(rnd)
    finally:
        for driver in drivers.values():
            driver.close()
    return {"calibration_rps": calibration, "paced_rate_rps": rate if plan.paced else None, "rounds": rounds}


# What the summary pairs by round (B/A); its medians are of these, the hit rate and the errors.
RATIO_KEYS = (
    "throughput_rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "cpu_ms_per_request",
    "stack_cpu_ms_per_request",
)


def summarize(plan: Plan, measured: dict[str, Any]) -> dict[str, Any]:
    rounds = measured["rounds"]
    windows = ["closed", "paced"] if plan.paced else ["closed"]
    keys = [*RATIO_KEYS, "hit_rate", "errors"]
    summary: dict[str, Any] = {}
    for window in windows:
        per_variant = {}
        for variant in plan.variants:
            rows = [rnd[variant.name][window] for rnd in rounds]
            per_variant[variant.name] = {
                **{f"median_{k}": median_of(rows, k) for k in keys},
                "throughput_range": spread_of(rows, "throughput_rps"),
                "p95_range": spread_of(rows, "p95_ms"),
                "errors_total": sum(r["errors"] for r in rows),
                "requests_total": sum(r["requests"] for r in rows),
            }
        ratios = {}
        for variant in plan.variants:
            if variant.name == plan.baseline:
                continue
            ratios[f"{variant.name}/{plan.baseline}"] = {
                key: paired_ratios(rounds, window, plan.baseline, variant.name, key) for key in RATIO_KEYS
            }
        summary[window] = {"variants": per_variant, "ratios": ratios}
    return summary


# --------------------------------------------------------------------------------------------------- main


@contextmanager
def stopped_on_signals() -> Iterator[None]:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so the finally blocks stop every child."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    """The options of both benches (each uses the ones that concern it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--database-url", default="postgresql:///wardrobe_micro")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/4")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "micro")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items-per-user", type=int, default=40)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="gunicorn workers per variant"
    )
    parser.add_argument(
        "--db-pool-size", type=int, default=8, help="per worker; keeps all variants under 100"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=0, help="0: 5 for cache, 40 for profiler")
    parser.add_argument(
        "--seconds", type=float, default=0, help="measured closed-loop window (0: 7 s, profiler 2.5 s)"
    )
    parser.add_argument("--paced-seconds", type=float, default=5.0, help="measured fixed-rate window (cache)")
    parser.add_argument(
        "--warmup", type=float, default=0, help="unmeasured lead-in of every window (0: 1 s, profiler 0.5 s)"
    )
    parser.add_argument("--calibrate-seconds", type=float, default=4.0)
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=200,
        help="fixed-rate window (cache); 0: a fraction of the slowest",
    )
    parser.add_argument("--paced-fraction", type=float, default=0.35)
    parser.add_argument("--skew", type=float, default=0.9, help="Zipf exponent of user popularity")
    parser.add_argument("--second-page", type=float, default=0.28)
    parser.add_argument("--writes", type=float, default=0.02)
    parser.add_argument("--target", type=float, default=3.0, help="profiler overhead target, %%")
    return parser.parse_args(argv)


# A bench's plan for the memcached server its variants share, and its Markdown of a finished run.
PlanFor = Callable[[str], Plan]
MarkdownOf = Callable[[Plan, dict[str, Any], argparse.Namespace], str]


def main(
    name: str, plan_for: PlanFor, markdown: MarkdownOf, description: str, argv: list[str] | None
) -> None:
    """Run one bench: seed, start memcached and every variant, drive the rounds, write RESULTS/<name>.json/.md."""
    args = parse_args(argv, description)
    started = time.monotonic()
    data_root = args.data_dir / name
    with stopped_on_signals(), ExitStack() as stack:
        print(f"[{name}] database {args.database_url}", flush=True)
        seeded = prepare_database(args.database_url, data_root / "images", args.users, args.items_per_user)
        flush_redis(args.redis_url)
        machine = machine_facts(args.database_url)
        memcached, memcached_server = start_memcached(data_root / "logs")
        stack.callback(memcached.stop)
        plan = plan_for(memcached_server).configured(args)
        common = {
            "WARDROBE_DATABASE_URL": args.database_url,
            "WARDROBE_REDIS_URL": args.redis_url,
            "WARDROBE_TELEGRAM_BOT_TOKEN": BOT_TOKEN,
            "WARDROBE_DB_POOL_SIZE": str(args.db_pool_size),
            "WARDROBE_DB_POOL_OVERFLOW": "0",
            "WARDROBE_PROFILE_HZ": "0",
            "WARDROBE_MEMCACHED_SERVERS": memcached_server,
            "WARDROBE_U2NET_HOME": str(data_root / "models"),
        }
        for variant in plan.variants:
            stack.callback(variant.stop)
            start_api(variant, common, data_root, args.workers)
        print(f"[{name}] started " + ", ".join(f"{v.name} {v.base}" for v in plan.variants), flush=True)
        mix = Mix(args.users, skew=args.skew, second_page=args.second_page, writes=args.writes)
        database = args.database_url.rsplit("/", 1)[1].split("?", 1)[0]
        probes = {v.name: StackCpu(v, database, memcached) for v in plan.variants}
        measured = run_plan(plan, args, mix, probes)
    result = {
        "bench": plan.name,
        "question": plan.question,
        "machine": machine,
        "setup": {
            "users": args.users,
            "items_per_user": args.items_per_user,
            "seeded": seeded,
            "workers": args.workers,
            "db_pool_size": args.db_pool_size,
            "connections": args.connections,
            "rounds": plan.rounds,
            "seconds": plan.seconds,
            "paced_seconds": plan.paced_seconds if plan.paced else None,
            "paced_rate": args.paced_rate if plan.paced else None,
            "paced_fraction": args.paced_fraction if plan.paced and not args.paced_rate else None,
            "warmup": plan.warmup,
            "skew": args.skew,
            "first_page": 1 - args.second_page - args.writes,
            "second_page": args.second_page,
            "writes": args.writes,
            "variants": {v.name: v.env for v in plan.variants},
        },
        **measured,
        "summary": summarize(plan, measured),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{plan.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(plan, result, args)
    (args.out / f"{plan.name}.md").write_text(text)
    print(text)
    print(f"[{name}] wrote {args.out / plan.name}.json/.md in {result['wall_seconds']} s", flush=True)


def run_command(main: Callable[[], None]) -> None:
    """`python -m bench.<bench>`: Ctrl-C and SIGTERM exit 130 once everything started is stopped."""
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
