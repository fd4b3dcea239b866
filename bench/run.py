"""The benchmark driver: `load` (one run), `sweep` (users per box) and `compare` (against the baseline).

Each command starts the stack it measures, seeds the population, runs Locust headless with a ramp-up, samples
every process, writes bench/results/<name>.json/.md/.png and stops everything it started, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import mix, report, seed
from bench.sampling import ProcessSampler, QueueSampler, scrape_cache_counts
from bench.stack import STACKS, Stack, StackSettings
from harness.processes import BIN, ROOT, Child
from tasks.cutout.removal import PRECISIONS, engine_for, resolve_precision

RESULTS = ROOT / "bench" / "results"
SWEEP_STEPS = [250, 500, 1000, 2000, 4000, 8000, 16000]
BASELINE_STEPS = [25, 50, 100, 250, 500, 1000, 2000]
# Locust keeps running this long after the measured window, so requests cut at its stop never count.
TAIL_SECONDS = 10
# After the last user is spawned, connections and caches settle for this long before the window opens.
SETTLE_SECONDS = 5
# Locust's own start (imports, the photo set) before its first request; only used to time the cache scrape.
STARTUP_SECONDS = 3


@dataclasses.dataclass
class Options:
    database: str = "wardrobe_bench"
    data_dir: Path = ROOT / "var" / "bench"
    results_dir: Path = RESULTS
    population: int = 20_000
    items_per_user: int = 40
    upload_every: float = 600.0
    capsule_every: float = 900.0
    onboarding_share: float = 0.01  # of the users: new accounts uploading photos_per_visit photos a visit
    photos_per_visit: str = "10-20"
    processes: int = 0  # 0: decide from the user count
    api_workers: int = 2
    images_nice: int | None = None  # None: SCHED_IDLE, as make run starts it
    image_workers: int = 1
    openai_keys: int = 2
    openai_latency_ms: int = 200
    cutout_precision: str = "auto"
    ramp: float = 0.0  # 0: decide from the user count
    quiet_wait: float = 0.0  # wait up to this long for an idle machine before each run

    @property
    def dsn(self) -> str:
        return f"postgresql:///{self.database}"


def _terminate_on_sigterm() -> None:
    # SIGTERM (make interrupted, CI timeout) unwinds like Ctrl-C, so every `finally` stops what it started.
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def forget_onboarding_accounts(dsn: str, population: int, user_base: int = seed.USER_BASE) -> int:
    """Onboarding users sign up as new accounts above the seeded ids (bench/locustfile.py, onboarding_floor), which
    the seed leaves alone: what earlier runs created goes, above all cutouts still queued, which the next run's
    images worker would take first. Returns the accounts deleted (their items, jobs and capsules go with them)."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM users WHERE id >= %s", (mix.onboarding_floor(user_base, population),))
            return cur.rowcount
    finally:
        conn.close()


def prepare_database(options: Options) -> dict[str, Any]:
    exists = subprocess.run(
        [
            "psql",
            "-qtAX",
            "-d",
            "postgres",
            "-c",
            f"SELECT 1 FROM pg_database WHERE datname = '{options.database}'",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if exists != "1":
        subprocess.run(["createdb", options.database], check=True)
    subprocess.run(
        [str(BIN / "wardrobe-migrate")],
        env={**os.environ, "WARDROBE_DATABASE_URL": options.dsn, "WARDROBE_DATA_DIR": str(options.data_dir)},
        check=True,
        capture_output=True,
    )
    forgotten = forget_onboarding_accounts(options.dsn, options.population)
    if forgotten:
        print(f"==> deleted {forgotten} onboarding accounts of earlier runs", file=sys.stderr)
    return seed.seed(
        options.dsn,
        options.data_dir / "images",
        users=options.population,
        items_per_user=options.items_per_user,
        log=lambda msg: print(f"==> {msg}", file=sys.stderr),
    )


def stack_for(target: str, options: Options, log_dir: Path) -> Stack:
    settings = StackSettings(
        database_url=options.dsn,
        data_dir=options.data_dir,
        log_dir=log_dir,
        api_workers=options.api_workers,
        images_nice=options.images_nice,
        image_workers=options.image_workers,
        openai_keys=options.openai_keys,
        openai_latency_ms=options.openai_latency_ms,
        cutout_precision=options.cutout_precision,
    )
    return STACKS[target](settings)


def ramp_for(users: int, options: Options) -> float:
    return options.ramp or float(min(60, max(5, math.ceil(users / 50))))


def processes_for(users: int, options: Options) -> int:
    # One Locust process drives ~1,500 sessions of this scenario before it becomes the bottleneck itself.
    return options.processes or (1 if users <= 1500 else 2)


def wait_for_quiet(limit: float, busy_below: float = 0.25) -> float:
    """Before a step: wait (up to `limit` s) until the machine is mostly idle, so other work on a shared machine
    does not end up in the numbers. Returns the busy share seen last; the results report what was not ours."""
    import psutil

    deadline = time.monotonic() + limit
    busy = psutil.cpu_percent(interval=3) / 100
    while busy >= busy_below and time.monotonic() < deadline:
        print(f"    machine {busy:.0%} busy before the run; waiting for it to calm down", file=sys.stderr)
        busy = psutil.cpu_percent(interval=10) / 100
    return busy


def measure(
    stack: Stack, target: str, users: int, duration: float, name: str, options: Options, work_dir: Path
) -> dict[str, Any]:
    """One Locust run against a running stack; returns the result (also written by the caller)."""
    ramp = ramp_for(users, options)
    processes = processes_for(users, options)
    busy_before = wait_for_quiet(options.quiet_wait) if options.quiet_wait else None
    samples_dir = work_dir / f"samples-{name}"
    shutil.rmtree(samples_dir, ignore_errors=True)
    samples_dir.mkdir(parents=True)
    argv = [
        str(BIN / "locust"),
        "-f",
        str(ROOT / "bench" / "locustfile.py"),
        "--headless",
        "--only-summary",
        "--host",
        stack.base_url,
        "-u",
        str(users),
        "-r",
        f"{users / ramp:.2f}",
        "-t",
        f"{int(ramp + SETTLE_SECONDS + duration + TAIL_SECONDS)}s",
        "--stop-timeout",
        "0",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
        "--bot-token",
        stack.settings.bot_token,
        "--population",
        str(options.population),
        "--upload-every",
        str(options.upload_every),
        "--capsule-every",
        str(options.capsule_every),
        "--onboarding-share",
        str(options.onboarding_share),
        "--photos-per-visit",
        options.photos_per_visit,
        "--samples-dir",
        str(samples_dir),
    ]
    if processes > 1:
        argv += ["--processes", str(processes)]
    log_path = stack.settings.log_dir / f"locust-{name}.log"
    locust_pid: dict[str, int] = {}
    sampler = ProcessSampler(lambda: {**stack.roles(), **locust_pid}).start()
    queues = QueueSampler(options.dsn).start() if target == "wardrobe" else None
    cache_before = None
    print(
        f"==> {name}: {users} users against {target} ({ramp:.0f} s ramp + {duration:.0f} s, "
        f"{processes} Locust process(es))",
        file=sys.stderr,
    )
    try:
        started = time.time()
        # Same session as the stack (one scheduler autogroup), a process group of its own.
        locust = Child(argv, {"PYTHONPATH": str(ROOT)}, log_path, name="locust", append=True, session=False)
        locust_pid["locust"] = locust.pid
        try:
            time.sleep(max(0.0, started + STARTUP_SECONDS + ramp + SETTLE_SECONDS - time.time()))
            cache_before = scrape_cache_counts(stack.base_url) if target == "wardrobe" else None
            locust.proc.wait(timeout=ramp + SETTLE_SECONDS + duration + TAIL_SECONDS + 120)
        except BaseException:
            locust.stop(timeout=10)
            raise
        cache_after = scrape_cache_counts(stack.base_url) if target == "wardrobe" else None
    finally:
        sampler.stop()
        if queues is not None:
            queues.stop()

    rows = report.read_samples(samples_dir)
    # The ramp starts with Locust's first request, not with its process: the window is timed from there.
    first = min((r[0] for r in rows), default=started)
    window_start = first + ramp + SETTLE_SECONDS
    window_end = window_start + duration
    result: dict[str, Any] = {
        "name": name,
        "kind": "load",
        "target": target,
        "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "params": {
            "users": users,
            "duration": duration,
            "ramp": ramp,
            "settle": SETTLE_SECONDS,
            "locust_processes": processes,
            "population": options.population,
            "items_per_user": options.items_per_user,
            "upload_every_s": options.upload_every,
            "onboarding_share": options.onboarding_share,
            "onboarding_users": mix.onboarding_users(users, options.onboarding_share),
            "photos_per_visit": options.photos_per_visit,
            "capsule_every_s": options.capsule_every,
            "api_workers": options.api_workers if target == "wardrobe" else "4 x 8 threads",
            "images_worker_priority": (
                ("SCHED_IDLE" if options.images_nice is None else f"nice {options.images_nice}")
                if target == "wardrobe"
                else None
            ),
            "image_workers": options.image_workers if target == "wardrobe" else None,
            "openai_keys": options.openai_keys if target == "wardrobe" else None,
            "cutout_precision": resolve_precision(options.cutout_precision) if target == "wardrobe" else None,
            "cutout_engine": engine_for(options.cutout_precision) if target == "wardrobe" else None,
            "openai_latency_ms": options.openai_latency_ms,
        },
        "latency": report.latency(rows, window_start, window_end),
        "timeline": report.timeline(rows, window_start, window_end),
        "processes": sampler.summary(window_start, window_end),
        "queue": queues.summary(window_start, window_end) if queues else {},
        "jobs_db": jobs_from_db(options.dsn, window_start, window_end),
        "cache": _cache_rate(cache_before, cache_after),
        "stack_problems": stack.check_alive(),
        "machine_busy_before": busy_before,
        "notes": [
            "Latency is measured by Locust on the same machine (loopback), from request start to last byte.",
            "upload→ready and capsule→ready are polled as the Mini App polls (after 0.6 s, then 1.3x longer each "
            "time up to 2.5 s, or later when the job says so): they are up to 2.5 s coarse; the jobs-table rows are "
            "exact.",
            "Uploads come from returning users (one per upload_every_s each) and from the onboarding users "
            "(photos_per_visit a visit, each visit a new account): uploads_per_s counts both.",
            "/images/ is served by the API here; production puts nginx's cache in front of it.",
        ],
    }
    uploads = result["latency"]["endpoints"].get("POST /api/v1/items [upload]", {}).get("requests", 0)
    result["rates"] = {
        "uploads_per_s": round(uploads / duration, 3),
        "uploads_per_user_hour": round(uploads / duration / users * 3600, 3),
        "requests_per_user_s": round(result["latency"]["overall"]["requests"] / duration / users, 3),
    }
    result["verdict"] = report.verdict(result)
    other = result["processes"].get("unaccounted_share") or 0
    if other > 0.1:
        result["notes"].insert(
            0,
            f"CONTAMINATED: {other:.0%} of the machine was used by work this run did not start (other builds or "
            "tests on a shared machine); the numbers understate what the box can do.",
        )
    if result["stack_problems"]:
        result["verdict"]["passed"] = False
    return result


def _cache_rate(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    lookups = sum(delta.values())
    if lookups <= 0:
        return None
    return {"hit_rate": delta.get("hit", 0.0) / lookups, "lookups": lookups, "by_result": delta}


def jobs_from_db(dsn: str, start: float, end: float) -> dict[str, Any]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                """
                SELECT kind, count(*), count(*) FILTER (WHERE state = 'failed'),
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
                           FILTER (WHERE state = 'succeeded'),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
                           FILTER (WHERE state = 'succeeded'),
                       max(extract(epoch FROM finished_at - created_at)) FILTER (WHERE state = 'succeeded'),
                       count(*) FILTER (WHERE state IN ('queued', 'running'))
                FROM jobs
                WHERE created_at >= to_timestamp(%s) AND created_at < to_timestamp(%s)
                GROUP BY kind
                """,
                (start, end),
            )
            return {
                kind: {
                    "count": count,
                    "failed": failed,
                    "p50": None if p50 is None else round(float(p50), 2),
                    "p95": None if p95 is None else round(float(p95), 2),
                    "max": None if top is None else round(float(top), 2),
                    "unfinished": unfinished,
                }
                for kind, count, failed, p50, p95, top, unfinished in cur.fetchall()
            }
    finally:
        conn.close()


def wait_for_drain(dsn: str, timeout: float = 120.0) -> None:
    """Between sweep steps: let the previous step's jobs finish so they do not load the next one."""
    import psycopg2

    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        while time.monotonic() < deadline:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
                if cur.fetchone()[0] == 0:
                    return
            time.sleep(2)
    finally:
        conn.close()


def _stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def load(target: str, users: int, duration: float, name: str | None, options: Options) -> dict[str, Any]:
    name = name or f"{target}-{users}u-{_stamp()}"
    print(f"==> seeding {options.database}", file=sys.stderr)
    seeded = prepare_database(options)
    with (
        tempfile.TemporaryDirectory(prefix="wardrobe-bench-") as work,
        stack_for(target, options, Path(work) / "logs") as stack,
    ):
        try:
            result = measure(stack, target, users, duration, name, options, Path(work))
        except BaseException:
            _keep_logs(Path(work) / "logs", options.results_dir / "logs" / name)
            raise
        result["seed"] = seeded
        overall = result["latency"]["overall"]
        if result["stack_problems"] or overall["requests"] == 0 or overall.get("failures"):
            _keep_logs(Path(work) / "logs", options.results_dir / "logs" / name)
    paths = report.write(result, options.results_dir, name)
    _print_summary(result, paths)
    return result


def _keep_logs(source: Path, dest: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.copytree(source, dest, dirs_exist_ok=True)
        print(f"==> logs kept in {dest}", file=sys.stderr)


def _step(result: dict[str, Any]) -> dict[str, Any]:
    lat = result["latency"]
    return {
        "users": result["params"]["users"],
        "passed": _step_passed(result),
        "worst_endpoint": result["verdict"]["worst_endpoint"],
        "worst_p95_ms": result["verdict"]["worst_p95_ms"],
        "overall_p95_ms": lat["overall"]["p95"],
        "overall_p99_ms": lat["overall"]["p99"],
        "rps": lat["overall"]["rps"],
        "errors": lat["errors"]["count"],
        "upload_to_ready_p95_s": lat["jobs_client"].get("upload→ready", {}).get("p95"),
        "locust_cpu_share": result["processes"].get("roles", {}).get("locust", {}).get("cpu_share"),
        "machine_busy": result["processes"].get("machine_busy"),
        "result": result["name"],
    }


def _step_passed(result: dict[str, Any]) -> bool:
    v = result["verdict"]
    return v["every_endpoint_p95_under_2s"] and v["zero_errors"] and not result["stack_problems"]


def sweep(
    target: str, steps: list[int], duration: float, name: str | None, options: Options, seeded: bool = False
) -> dict[str, Any]:
    """Step users up until a step fails; users per box is the largest passing step."""
    name = name or f"sweep-{target}-{_stamp()}"
    if not seeded:
        prepare_database(options)
    done: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="wardrobe-bench-") as work,
        stack_for(target, options, Path(work) / "logs") as stack,
    ):
        try:
            for users in steps:
                result = measure(stack, target, users, duration, f"{name}-{users}u", options, Path(work))
                report.write(result, options.results_dir / name, f"{users}u")
                done.append(_step(result))
                print(
                    f"    {users} users: worst p95 {done[-1]['worst_p95_ms']} ms ({done[-1]['worst_endpoint']}), "
                    f"{done[-1]['rps']} req/s, {done[-1]['errors']} errors",
                    file=sys.stderr,
                )
                if not done[-1]["passed"] or stack.check_alive():
                    break
                if target == "wardrobe":
                    wait_for_drain(options.dsn)
        except BaseException:
            _keep_logs(Path(work) / "logs", options.results_dir / "logs" / name)
            raise
    passing = [s["users"] for s in done if s["passed"]]
    summary = {
        "name": name,
        "kind": "sweep",
        "target": target,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "duration_per_step": duration,
        "steps": done,
        "users_per_box": max(passing) if passing else 0,
        "criterion": "every endpoint p95 < 2 s and zero errors",
    }
    write_sweep(summary, options.results_dir, name, {target: done})
    return summary


def write_sweep(summary: dict[str, Any], directory: Path, name: str, steps_by_target: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    report.sweep_chart(steps_by_target, directory / f"{name}.png")
    lines = [
        f"# {name}",
        "",
        f"{summary['started_at']} on {summary['machine']['cpu']}, {summary['machine']['cores']} cores.",
        "",
        f"![users vs p95]({name}.png)",
        "",
    ]
    for target, steps in steps_by_target.items():
        lines += [
            f"## {target}: users per box = {max([s['users'] for s in steps if s['passed']], default=0)}",
            "",
            "| users | pass | worst endpoint p95 ms | all-HTTP p95 ms | req/s | errors | upload→ready p95 s "
            "| Locust CPU share | machine busy |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in steps:
            lines.append(
                f"| {s['users']} | {'yes' if s['passed'] else 'no'} | {s['worst_p95_ms']} ({s['worst_endpoint']}) "
                f"| {s['overall_p95_ms']} | {s['rps']} | {s['errors']} | {s['upload_to_ready_p95_s']} "
                f"| {_pct(s['locust_cpu_share'])} | {_pct(s['machine_busy'])} |"
            )
        lines.append("")
    if "ratios" in summary:
        lines += ["## Ratios (wardrobe ÷ baseline)", ""]
        lines += [f"- {k}: {v}" for k, v in summary["ratios"].items()]
    (directory / f"{name}.md").write_text("\n".join(lines) + "\n")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def compare(duration: float, options: Options, steps: list[int], baseline_steps: list[int]) -> dict[str, Any]:
    """Both architectures, one session, same scenario and data: sweeps, then ratios."""
    name = f"compare-{_stamp()}"
    prepare_database(options)
    base = sweep("baseline", baseline_steps, duration, f"{name}-baseline", options, seeded=True)
    prepare_database(options)
    ours = sweep("wardrobe", steps, duration, f"{name}-wardrobe", options, seeded=True)
    ratios: dict[str, Any] = {
        "users_per_box": _ratio(ours["users_per_box"], base["users_per_box"]),
    }
    # At the largest user count both ran: latency and throughput side by side.
    common = sorted({s["users"] for s in ours["steps"]} & {s["users"] for s in base["steps"]})
    if common:
        at = common[-1]
        o = next(s for s in ours["steps"] if s["users"] == at)
        b = next(s for s in base["steps"] if s["users"] == at)
        ratios[f"p95 at {at} users (baseline ÷ wardrobe)"] = _ratio(b["overall_p95_ms"], o["overall_p95_ms"])
        ratios[f"throughput at {at} users"] = _ratio(o["rps"], b["rps"])
    ratios["throughput at each side's users per box"] = _ratio(_rps_at(ours), _rps_at(base))
    summary = {
        "name": name,
        "kind": "compare",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "duration_per_step": duration,
        "wardrobe": ours,
        "baseline": base,
        "users_per_box": ours["users_per_box"],
        "baseline_users_per_box": base["users_per_box"],
        "ratios": ratios,
        "steps": ours["steps"],
    }
    write_sweep(summary, options.results_dir, name, {"wardrobe": ours["steps"], "baseline": base["steps"]})
    print(f"\nusers per box: wardrobe {ours['users_per_box']}, baseline {base['users_per_box']}")
    for key, value in ratios.items():
        print(f"  {key}: {value}")
    return summary


def _rps_at(summary: dict[str, Any]) -> float | None:
    passing = [s for s in summary["steps"] if s["passed"]]
    return passing[-1]["rps"] if passing else None


def _ratio(a: float | None, b: float | None) -> float | str:
    if not a or not b:
        return "n/a"
    return round(a / b, 1)


def _print_summary(result: dict[str, Any], paths: dict[str, Path]) -> None:
    v, o = result["verdict"], result["latency"]["overall"]
    locust = result["processes"].get("roles", {}).get("locust", {})
    print(
        f"\n{'PASS' if v['passed'] else 'FAIL'}: {result['params']['users']} users, {o['rps']} req/s, "
        f"p50/p95/p99 {o['p50']}/{o['p95']}/{o['p99']} ms, worst endpoint p95 {v['worst_p95_ms']} ms "
        f"({v['worst_endpoint']}), {result['latency']['errors']['count']} errors, "
        f"Locust used {locust.get('cpu_share', 0):.0%} of the machine"
    )
    print(f"results: {paths['md']}")


def _options(args: argparse.Namespace) -> Options:
    return Options(
        database=args.database,
        data_dir=args.data_dir,
        results_dir=args.results_dir,
        population=args.population,
        items_per_user=args.items_per_user,
        upload_every=args.upload_every,
        capsule_every=args.capsule_every,
        onboarding_share=args.onboarding_share,
        photos_per_visit=args.photos_per_visit,
        processes=args.processes,
        api_workers=args.api_workers,
        images_nice=args.images_nice,
        image_workers=args.image_workers,
        openai_keys=args.openai_keys,
        openai_latency_ms=args.openai_latency_ms,
        cutout_precision=args.cutout_precision,
        ramp=args.ramp,
        quiet_wait=args.quiet_wait,
    )


def photos_per_visit(raw: str) -> str:
    """--photos-per-visit, checked here and passed on to Locust as written."""
    mix.photo_range(raw)
    return raw


def _int_list(raw: str) -> list[int]:
    return [int(part) for part in raw.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("load", "sweep", "compare"):
        p = sub.add_parser(command)
        p.add_argument(
            "--duration",
            type=float,
            default=120.0 if command == "load" else 60.0,
            help="measured seconds (per step), after the ramp-up",
        )
        p.add_argument("--database", default="wardrobe_bench")
        p.add_argument("--data-dir", type=Path, default=ROOT / "var" / "bench")
        p.add_argument("--results-dir", type=Path, default=RESULTS)
        p.add_argument("--population", type=int, default=20_000)
        p.add_argument("--items-per-user", type=int, default=40)
        p.add_argument("--upload-every", type=float, default=600.0, help="mean s between one user's uploads")
        p.add_argument("--capsule-every", type=float, default=900.0, help="mean s between capsule requests")
        p.add_argument(
            "--onboarding-share",
            type=mix.share,
            default=0.01,
            help="fraction of the users that are onboarding users, each visit a new account uploading "
            "--photos-per-visit photos (rounded up; 0: none)",
        )
        p.add_argument(
            "--photos-per-visit",
            type=photos_per_visit,
            default="10-20",
            help="photos an onboarding user uploads in a visit: N or N-M",
        )
        p.add_argument("--processes", type=int, default=0, help="Locust processes (0: by user count)")
        p.add_argument("--api-workers", type=int, default=2, help="gunicorn workers of the Wardrobe API")
        p.add_argument(
            "--images-nice",
            type=int,
            default=None,
            help="run the images worker at this nice beside the API instead of SCHED_IDLE (ai: nice 5)",
        )
        p.add_argument(
            "--image-workers",
            type=int,
            default=1,
            help="images worker processes beside the API, one inference thread each",
        )
        p.add_argument(
            "--openai-keys",
            type=int,
            default=2,
            help="OpenAI keys the workers rotate (each 500 RPM, 200k TPM): one key's TPM is nearly all "
            "that 1,000 users' average demand takes",
        )
        p.add_argument(
            "--openai-latency-ms",
            type=int,
            default=200,
            help="how long the OpenAI fake takes to answer each call, on both sides (real vision and capsule "
            "calls take seconds)",
        )
        p.add_argument(
            "--cutout-precision",
            choices=PRECISIONS,
            default="auto",
            help="the images worker's WARDROBE_CUTOUT_PRECISION (auto: bf16 where native); the baseline "
            "always runs rembg in float32",
        )
        p.add_argument("--ramp", type=float, default=0.0, help="ramp-up seconds (0: by user count)")
        p.add_argument(
            "--quiet-wait",
            type=float,
            default=600.0,
            help="wait up to this long for an idle machine (0: don't)",
        )
        if command == "load":
            p.add_argument("--users", type=int, default=1000)
            p.add_argument("--target", choices=sorted(STACKS), default="wardrobe")
            p.add_argument("--name")
        elif command == "sweep":
            p.add_argument("--steps", type=_int_list, default=SWEEP_STEPS)
            p.add_argument("--target", choices=sorted(STACKS), default="wardrobe")
            p.add_argument("--name")
        else:
            p.add_argument("--steps", type=_int_list, default=SWEEP_STEPS[:4])
            p.add_argument("--baseline-steps", type=_int_list, default=BASELINE_STEPS)
    args = parser.parse_args(argv)
    _terminate_on_sigterm()
    options = _options(args)
    try:
        if args.command == "load":
            result = load(args.target, args.users, args.duration, args.name, options)
            return 0 if result["verdict"]["passed"] else 1
        if args.command == "sweep":
            summary = sweep(args.target, args.steps, args.duration, args.name, options)
            print(f"\nusers per box ({target_label(args.target)}): {summary['users_per_box']}")
            return 0
        compare(args.duration, options, args.steps, args.baseline_steps)
        return 0
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130


def target_label(target: str) -> str:
    return "Wardrobe API, 2-core box" if target == "wardrobe" else "original architecture"


if __name__ == "__main__":
    sys.exit(main())
