"""`make bench-session`: the API's CPU per request on the load test's session mix, the committed code (HEAD) against
the working tree, in one run.

Both variants are gunicorns of the API over one seeded database and one memcached (bench/ab.py starts them): "head"
imports `wardrobe` from `git archive HEAD` unpacked in the data dir (read-only for the checkout), "tree" from the
checkout. Rounds interleave them, each with a closed-loop window and a fixed-rate one. The mix is the load test's
returning users (bench/locustfile.py's MiniAppUser, without its brand autocomplete and without onboarding users), by
their weights per step: item views 12, next pages 6, filters 5, brand prefixes 3, capsules 3, item
edits 2, profile edits 1, /me 1; without uploads and capsule requests (their cost is the workers') and without
/images/ (nginx serves them in production). `python -m bench.session_ab` writes bench/results/session.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import subprocess
import time
import urllib.parse
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import ab
from bench.ab import BOT_TOKEN, USER_BASE, Segment, StackCpu, Variant
from bench.brands_bench import LOAD_TEST_QUERIES
from harness.processes import ROOT

CATEGORIES = ["top", "bottom", "dress", "outerwear", "shoes", "bag", "accessory"]
SEASONS = ["summer", "winter", "demi-season", "all-season"]
WEIGHTS = {
    "item": 12,
    "next_page": 6,
    "filter": 5,
    "brands": 3,
    "capsules": 3,
    "edit_item": 2,
    "edit_profile": 1,
    "me": 1,
}


class SessionMix:
    """Users drawn uniformly from the active ones; what each knows (items, cursor, capsules) is primed first."""

    def __init__(self, users: int) -> None:
        from wardrobe.web.auth import sign_init_data

        self.user_ids = [USER_BASE + i for i in range(users)]
        now = int(time.time())
        self.auth = {
            uid: "tma " + sign_init_data(BOT_TOKEN, {"id": uid, "first_name": "Bench"}, auth_date=now)
            for uid in self.user_ids
        }
        self.items: dict[int, list[str]] = {}
        self.cursor: dict[int, str] = {}
        self.capsules: dict[int, list[str]] = {}
        self._kinds = list(WEIGHTS)
        self._weights = [WEIGHTS[k] for k in self._kinds]

    def next(self, rng: random.Random, serial: int) -> tuple[str, str, str, bytes | None, int]:
        uid = rng.choice(self.user_ids)
        kind = rng.choices(self._kinds, self._weights)[0]
        items = self.items.get(uid) or []
        if kind == "item" and items:
            return kind, "GET", f"/api/v1/items/{rng.choice(items)}", None, uid
        if kind == "next_page" and uid in self.cursor:
            return kind, "GET", f"/api/v1/items?limit=20&cursor={self.cursor[uid]}", None, uid
        if kind == "filter":
            if rng.random() < 0.6:
                return kind, "GET", f"/api/v1/items?category={rng.choice(CATEGORIES)}", None, uid
            return kind, "GET", f"/api/v1/items?season={rng.choice(SEASONS)}", None, uid
        if kind == "brands":
            q = urllib.parse.quote(rng.choice(LOAD_TEST_QUERIES))
            return kind, "GET", f"/api/v1/brands?q={q}", None, uid
        if kind == "capsules":
            capsules = self.capsules.get(uid)
            if capsules and rng.random() < 0.7:
                return kind, "GET", f"/api/v1/capsules/{rng.choice(capsules)}", None, uid
            return kind, "GET", "/api/v1/capsules?limit=10", None, uid
        if kind == "edit_item" and items:
            body = json.dumps({"notes": f"worn {serial} times"}).encode()
            return kind, "PATCH", f"/api/v1/items/{rng.choice(items)}", body, uid
        if kind == "edit_profile":
            body = json.dumps({"sizes": {"top": rng.choice(["S", "M", "L"])}}).encode()
            return kind, "PATCH", "/api/v1/me", body, uid
        if kind == "me":
            return kind, "GET", "/api/v1/me", None, uid
        return "first_page", "GET", "/api/v1/items?limit=20", None, uid


class Driver(ab.Driver):
    """ab's driver (the same client and connections) over the session mix's requests."""

    _mix: SessionMix

    def _get(self, uid: int, path: str) -> Any:
        resp = self._client.get(path, headers={"Authorization": self._mix.auth[uid]})
        data = resp.read()
        resp.release()
        return json.loads(data) if resp.status_code == 200 else None

    def prime(self) -> None:
        from gevent.pool import Pool

        def learn(uid: int) -> None:
            page = self._get(uid, "/api/v1/items?limit=20")
            if page:
                self._mix.items[uid] = [i["id"] for i in page["items"]]
                if page.get("next_cursor"):
                    self._mix.cursor[uid] = urllib.parse.quote(page["next_cursor"], safe="")
            capsules = self._get(uid, "/api/v1/capsules?limit=10")
            if capsules:
                self._mix.capsules[uid] = [c["id"] for c in capsules["items"]]

        pool = Pool(self._connections)
        for uid in self._mix.user_ids:
            pool.spawn(learn, uid)
        pool.join()


def summarize(segment: Segment) -> dict[str, Any]:
    every = [ms for values in segment.latencies_ms.values() for ms in values]
    cpu = StackCpu.delta(*segment.cpu_marks) if len(segment.cpu_marks) == 2 else None
    done = segment.completed
    per_request = {part: seconds * 1000 / done for part, seconds in cpu.items()} if cpu and done else {}
    return {
        "requests": done,
        "errors": segment.errors,
        "statuses": segment.statuses,
        "shed": segment.shed,
        "throughput_rps": round(done / segment.seconds, 1),
        "p50_ms": ab.percentile(every, 50),
        "p95_ms": ab.percentile(every, 95),
        "p99_ms": ab.percentile(every, 99),
        "api_cpu_ms_per_request": round(per_request["api"], 4) if per_request else None,
        "cpu_ms_per_request_by_part": {k: round(v, 4) for k, v in per_request.items()},
        "api_cores": round(cpu["api"] / segment.seconds, 3) if cpu else None,
        "requests_by_kind": {k: len(v) for k, v in segment.latencies_ms.items()},
    }


def head_tree(data_root: Path) -> Path:
    """The committed code, unpacked beside the run (git archive only reads the repository)."""
    target = (data_root / "head").resolve()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    stamp = target / ".commit"
    if not stamp.exists() or stamp.read_text() != commit:
        subprocess.run(["rm", "-rf", str(target)], check=True)
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
        stamp.write_text(commit)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database-url", default="postgresql:///wardrobe_micro")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/4")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "micro")
    parser.add_argument("--out", type=Path, default=ab.RESULTS)
    parser.add_argument("--users", type=int, default=2000, help="seeded users")
    parser.add_argument("--active", type=int, default=1000, help="users the mix draws from")
    parser.add_argument("--items-per-user", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per variant")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--paced-rate", type=float, default=300.0, help="fixed-rate window, req/s (0: none)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    data_root = args.data_dir / "session"
    with ab.stopped_on_signals(), ExitStack() as stack:
        seeded = ab.prepare_database(args.database_url, data_root / "images", args.users, args.items_per_user)
        ab.flush_redis(args.redis_url)
        machine = ab.machine_facts(args.database_url)
        memcached, memcached_server = ab.start_memcached(data_root / "logs")
        stack.callback(memcached.stop)
        head = head_tree(data_root)
        variants = [
            Variant(
                "head", {"PYTHONPATH": f"{head / 'src'}:{head}"}, conf=str(head / "conf" / "gunicorn.conf.py")
            ),
            Variant("tree", {"WARDROBE_VERSION_CACHE_TTL": "0"}),  # the default: the version from Postgres
            Variant("tree-mc-version", {"WARDROBE_VERSION_CACHE_TTL": "300"}),
        ]
        common = {
            "WARDROBE_DATABASE_URL": args.database_url,
            "WARDROBE_REDIS_URL": args.redis_url,
            "WARDROBE_TELEGRAM_BOT_TOKEN": BOT_TOKEN,
            "WARDROBE_DB_POOL_SIZE": "16",
            "WARDROBE_DB_POOL_OVERFLOW": "0",
            "WARDROBE_PROFILE_HZ": "0",
            "WARDROBE_MEMCACHED_SERVERS": memcached_server,
            "WARDROBE_U2NET_HOME": str(data_root / "models"),
            # Per-user limits would turn the closed loop's brand searches into 429s.
            "WARDROBE_RATE_LIMIT_BRANDS": "100000/60",
        }
        for variant in variants:
            stack.callback(variant.stop)
            ab.start_api(variant, common, data_root, args.workers)
        mix = SessionMix(args.active)
        database = args.database_url.rsplit("/", 1)[1].split("?", 1)[0]
        probes = {v.name: StackCpu(v, database, memcached) for v in variants}
        drivers = {v.name: Driver(v.base, mix, args.connections) for v in variants}
        for driver in drivers.values():
            # Closed before the variants stop, so gunicorn need not wait out their keep-alive connections.
            stack.callback(driver.close)
        drivers["tree"].prime()
        rounds = []
        for index in range(args.rounds):
            row: dict[str, Any] = {}
            for name in ab.round_order([v.name for v in variants], index):
                seed = f"session-{index}-{name}"
                closed = drivers[name].closed(
                    args.seconds, args.warmup, random.Random(seed), probes[name].read
                )
                row[name] = {"closed": summarize(closed)}
                if args.paced_rate:
                    paced = drivers[name].paced(
                        args.paced_rate,
                        args.seconds,
                        args.warmup,
                        random.Random(seed + "p"),
                        probes[name].read,
                    )
                    row[name]["paced"] = summarize(paced)
                c = row[name]["closed"]
                p = row[name].get("paced", {})
                print(
                    f"  round {index + 1}/{args.rounds} {name:5} closed {c['throughput_rps']} req/s "
                    f"{c['api_cpu_ms_per_request']} ms API CPU/req | paced {p.get('api_cpu_ms_per_request')} ms, "
                    f"p95 {p.get('p95_ms')} ms, errors {c['errors'] + p.get('errors', 0)}",
                    flush=True,
                )
            rounds.append(row)
    result = {
        "bench": "session",
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "setup": {**vars(args), "seeded": seeded, "weights": WEIGHTS},
        "rounds": rounds,
        "summary": {
            window: {
                "variants": {
                    v.name: {
                        key: statistics.median(r[v.name][window][key] for r in rounds)
                        for key in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "api_cpu_ms_per_request")
                    }
                    for v in variants
                },
                "ratios": {
                    f"{b}/{a}": ab.paired_ratios(rounds, window, a, b, "api_cpu_ms_per_request")
                    for a, b in (("head", "tree"), ("head", "tree-mc-version"), ("tree", "tree-mc-version"))
                },
            }
            for window in (["closed", "paced"] if args.paced_rate else ["closed"])
        },
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    result["setup"] = json.loads(json.dumps(result["setup"], default=str))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "session.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.out / "session.md").write_text(text)
    print(text)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# API CPU per request on the session mix: HEAD against the working tree",
        "",
        "`head`: the committed code; `tree`: the working tree as configured by default (the version from Postgres "
        "on every list read, as in HEAD); `tree-mc-version`: the working tree with `WARDROBE_VERSION_CACHE_TTL=300` "
        "(the version from memcached, raised by every write).",
        "",
        f"Produced by `make bench-session` (`bench/session_ab.py`) at {result['measured_at']} on "
        f"{result['machine']['cpu_model']} ({result['machine']['nproc']} cores); raw numbers in `session.json`. "
        f"{result['setup']['rounds']} interleaved rounds; one gunicorn gevent worker per variant; "
        f"{result['setup']['active']} users drawn uniformly; loadavg at start "
        f"{' '.join(result['machine']['loadavg_at_start'])}.",
        "",
    ]
    for window, s in result["summary"].items():
        title = (
            "closed loop (saturated)"
            if window == "closed"
            else f"fixed rate {result['setup']['paced_rate']:.0f} req/s"
        )
        lines += [
            f"## {title}",
            "",
            "| variant | req/s | p50 ms | p95 ms | p99 ms | API CPU ms/request |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, v in s["variants"].items():
            lines.append(
                f"| {name} | {v['throughput_rps']:.0f} | {v['p50_ms']:.2f} | {v['p95_ms']:.2f} | {v['p99_ms']:.2f} "
                f"| {v['api_cpu_ms_per_request']:.3f} |"
            )
        lines += ["", "| API CPU per request, paired by round | median | rounds min-max |", "|---|---:|---:|"]
        for pair, r in s["ratios"].items():
            if r:
                lines.append(f"| {pair} | **x{r['median']:.2f}** | {r['min']:.2f}-{r['max']:.2f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ab.run_command(main)
