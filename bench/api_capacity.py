"""`make bench-api`: users per API core. The API alone on core 1, everything else on core 0, users stepped up until
a step fails; then the same for a minimal Falcon + gevent + psycopg2 app and for the floor (a constant answer).

- The API is conf/gunicorn.conf.py with one gevent worker (GUNICORN_WORKERS defaults to one per core), the load
  test's session mix without cutouts (API boxes in the fleet don't run them): returning users upload nothing, the
  onboarding users (--onboarding-share) upload as in the load test and their uploads are accepted (202), but no
  images worker runs, so their jobs stay queued and each is polled until the user gives up (a wait, not an error);
  capsule requests stay, answered by the ai worker on core 0. Its own memcached, the OpenAI fake and Locust start as children of this driver, which pins itself to
  core 0 first, so they run there too; the machine's Postgres and Redis are pinned to core 0 for the run and given
  back their affinity afterwards.
- The minimal app (bench/minimal_app.py) reads one user's row per request; the floor (bench/floorapp.py) answers a
  constant. Both run under bench/floor.conf.py (one gevent worker, the API's one-send patch), driven by
  bench/locustfile_reader.py's users: one request per 1-3 s of think time.
- A step passes when every endpoint's p95 is under 2 s and no request fails; users per core is the last step that
  passed before the first that did not. Per step: latency and throughput over the steady window (after the ramp),
  the pinned API's CPU per request (/proc, its whole process tree), the CPU of everything else, each core's busy.

Writes bench/results/api-<stamp>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from bench import mix, report, run
from bench.ab import stopped_on_signals
from bench.procfs import postgres_backends_cpu
from bench.sampling import ProcessSampler
from bench.seed import USER_BASE
from bench.stack import StackSettings, WardrobeStack, start_isolated
from harness.processes import BIN, ROOT, Child, free_port, gunicorn_argv, wait_http

API_CORE = 1
OTHER_CORE = 0
STEPS = [500, 1000, 1500, 2000]  # with 15 s steps, all three targets in under 10 minutes
TARGETS = ("api", "minimal", "floor")
RAMP_USERS_PER_S = 100.0
MIN_RAMP_SECONDS = 3.0
SETTLE_SECONDS = run.SETTLE_SECONDS
# Locust runs this long past the window, so requests cut at its stop are not in it.
TAIL_SECONDS = 5.0
# Every simulated user holds a keep-alive connection of its own: without nginx in front (which multiplexes them
# onto a few upstream connections) the API's 2,000 per worker would cap a one-worker run at 2,000 users.
WORKER_CONNECTIONS = 20_000
REDIS_URL = "redis://127.0.0.1:6379/6"  # apart from make bench (3) and the micro-benchmarks (4)
SHARED_SERVICES = ("postgres", "redis-server")
LOCUSTFILE_MIX = ROOT / "bench" / "locustfile.py"
LOCUSTFILE_READER = ROOT / "bench" / "locustfile_reader.py"


# ------------------------------------------------------------------------------------------------ pinning


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` and of its descendants onto `cpus` (what `taskset -a -p` does, for a whole tree);
    processes and threads they start later inherit it."""
    try:
        tree = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return
    for proc in tree:
        for tid in _threads(proc):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


def cpus_of(pid: int) -> str:
    """The CPUs `pid` may run on, as /proc/PID/status lists them ("1", "0-1")."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _shared_threads() -> dict[int, str]:
    found = {}
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in SHARED_SERVICES:
            for tid in _threads(proc.pid):
                found[tid] = proc.info["name"]
    return found


class SharedServices:
    """The machine's Postgres and Redis (every thread) on `cpus` while the run lasts. `pin()` again before each
    step catches a server restarted meanwhile; `restore()` gives every thread its affinity back, and backends forked
    meanwhile (they inherit the postmaster's) the machine's CPUs."""

    def __init__(self, cpus: set[int]) -> None:
        self._cpus = cpus
        self._saved: dict[int, set[int]] = {}
        self.counts: dict[str, int] = {}

    def pin(self) -> None:
        counts: dict[str, int] = {}
        for tid, name in _shared_threads().items():
            with contextlib.suppress(OSError):
                self._saved.setdefault(tid, os.sched_getaffinity(tid))
                os.sched_setaffinity(tid, self._cpus)
                counts[name] = counts.get(name, 0) + 1
        self.counts = counts

    def restore(self) -> None:
        everywhere = set(range(os.cpu_count() or 1))
        for tid in _shared_threads():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, self._saved.get(tid, everywhere))


# ----------------------------------------------------------------------------------------------- sampling


class PinnedSampler(ProcessSampler):
    """The load test's process sampler, plus each core's busy time and this database's Postgres backends alone
    (the shared Postgres row counts every database on the machine)."""

    def __init__(self, roles: Callable[[], dict[str, int]], database: str) -> None:
        super().__init__(roles)
        self._database = database

    def sample(self) -> dict:
        entry = super().sample()
        entry["core_busy"] = [
            t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0)
            for t in psutil.cpu_times(percpu=True)
        ]
        entry["pg_backends"] = postgres_backends_cpu(self._database)
        return entry

    def extra(self, start: float, end: float) -> dict[str, Any]:
        window = [s for s in self.samples if start <= s["t"] <= end and "core_busy" in s]
        if len(window) < 2:
            return {"core_busy": None, "postgres_this_db_cores": None}
        first, last = window[0], window[-1]
        wall = last["t"] - first["t"]
        pg = sum(t - first["pg_backends"].get(pid, 0.0) for pid, t in last["pg_backends"].items())
        return {
            "core_busy": [
                round((b - a) / wall, 3) for a, b in zip(first["core_busy"], last["core_busy"], strict=True)
            ],
            "postgres_this_db_cores": round(pg / wall, 3),
        }


# ----------------------------------------------------------------------------------------------- targets


@dataclasses.dataclass
class Served:
    """A running target: where it answers, the processes to sample (role "api" is the pinned server) and how
    Locust drives it."""

    base_url: str
    api_pid: int
    roles: Callable[[], dict[str, int]]
    problems: Callable[[], list[str]]
    locustfile: Path
    locust_args: list[str]


class ApiStack(WardrobeStack):
    """The load test's stack with the ai worker only (an API box runs no cutouts) and room for every user's
    connection on the one worker."""

    def env(self) -> dict[str, str]:
        return {**super().env(), "GUNICORN_WORKER_CONNECTIONS": str(WORKER_CONNECTIONS)}

    def start(self) -> None:
        super().start()  # settings.with_workers is off: memcached, the OpenAI fake, the API
        self.start_worker("ai")


@contextlib.contextmanager
def serve_api(options: run.Options, log_dir: Path) -> Iterator[Served]:
    settings = StackSettings(
        database_url=options.dsn,
        data_dir=options.data_dir,
        log_dir=log_dir,
        redis_url=REDIS_URL,
        api_workers=1,
        openai_keys=options.openai_keys,
        openai_latency_ms=options.openai_latency_ms,
        with_workers=False,
    )
    with ApiStack(settings) as stack:
        yield Served(
            base_url=stack.base_url,
            api_pid=stack.roles()["api"],
            roles=stack.roles,
            problems=stack.check_alive,
            locustfile=LOCUSTFILE_MIX,
            locust_args=[
                "--bot-token",
                settings.bot_token,
                "--upload-every",
                "inf",  # returning users upload nothing: cutouts are the worker boxes' work
                # Onboarding users do: the API accepts their uploads; with no images worker their jobs stay queued.
                "--onboarding-share",
                str(options.onboarding_share),
                "--photos-per-visit",
                options.photos_per_visit,
                "--capsule-every",
                str(options.capsule_every),
            ],
        )


@contextlib.contextmanager
def serve_reference(name: str, app_uri: str | None, log_dir: Path) -> Iterator[Served]:
    port = free_port()
    argv = gunicorn_argv(
        "bench/floor.conf.py",
        "-b",
        f"127.0.0.1:{port}",
        "--worker-connections",
        str(WORKER_CONNECTIONS),
        *([app_uri] if app_uri else []),
    )
    child = start_isolated(argv, {}, log_dir / f"{name}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/users/{USER_BASE}", 30, child)
        yield Served(
            base_url=base,
            api_pid=child.pid,
            roles=lambda: {"api": child.pid} if child.alive() else {},
            problems=lambda: [] if child.alive() else [f"{name} exited with {child.proc.returncode}"],
            locustfile=LOCUSTFILE_READER,
            locust_args=[],
        )
    finally:
        child.stop()


def serve(target: str, options: run.Options, log_dir: Path) -> contextlib.AbstractContextManager[Served]:
    if target == "api":
        return serve_api(options, log_dir)
    if target == "minimal":
        return serve_reference("minimal", f"bench.minimal_app:create_app({options.dsn!r})", log_dir)
    return serve_reference("floor", None, log_dir)  # bench/floor.conf.py's own app: bench/floorapp.py


# ------------------------------------------------------------------------------------------------- a step


def step(served: Served, target: str, users: int, seconds: float, options: run.Options, work: Path) -> dict:
    """One Locust run of `users` against a running target; the summary of its steady window."""
    ramp = max(MIN_RAMP_SECONDS, users / RAMP_USERS_PER_S)
    samples_dir = work / f"samples-{target}-{users}u"
    shutil.rmtree(samples_dir, ignore_errors=True)
    samples_dir.mkdir(parents=True)
    argv = [
        str(BIN / "locust"),
        "-f",
        str(served.locustfile),
        "--headless",
        "--only-summary",
        "--host",
        served.base_url,
        "-u",
        str(users),
        "-r",
        f"{users / ramp:.2f}",
        "-t",
        f"{int(ramp + SETTLE_SECONDS + seconds + TAIL_SECONDS)}s",
        "--stop-timeout",
        "0",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
        "--population",
        str(options.population),
        "--samples-dir",
        str(samples_dir),
        *served.locust_args,
    ]
    began = time.monotonic()
    busy_before = (
        run.wait_for_quiet(options.quiet_wait) if options.quiet_wait else psutil.cpu_percent(interval=1) / 100
    )
    locust_pid: dict[str, int] = {}
    sampler = PinnedSampler(lambda: {**served.roles(), **locust_pid}, options.database).start()
    affinity: dict[str, str] = {}
    print(
        f"==> {target}: {users} users ({ramp:.0f} s ramp + {SETTLE_SECONDS} s + {seconds:g} s)",
        file=sys.stderr,
    )
    try:
        # Same session as the driver, a process group of its own; on core 0 with the driver.
        locust = Child(
            argv,
            {"PYTHONPATH": str(ROOT)},
            work / "logs" / f"locust-{target}.log",
            append=True,
            session=False,
        )
        locust_pid["locust"] = locust.pid
        try:
            time.sleep(ramp)
            backends = postgres_backends_cpu(options.database)
            affinity = {
                "api": cpus_of(served.api_pid),
                "locust": cpus_of(locust.pid),
                "postgres backend": cpus_of(next(iter(backends), 0)),
            }
            locust.proc.wait(timeout=ramp + SETTLE_SECONDS + seconds + TAIL_SECONDS + 120)
        except BaseException:
            locust.stop(timeout=10)
            raise
    finally:
        sampler.stop()
    rows = report.read_samples(samples_dir)
    first = min((r[0] for r in rows), default=time.time())
    start = first + ramp + SETTLE_SECONDS
    end = start + seconds
    latency = report.latency(rows, start, end)
    processes = sampler.summary(start, end)
    extra = sampler.extra(start, end)
    verdict = report.verdict({"latency": latency})
    problems = served.problems()
    overall = latency["overall"]
    roles = processes.get("roles", {})
    api_cores = roles.get("api", {}).get("cpu_cores")
    others = {role: r["cpu_cores"] for role, r in sorted(roles.items()) if role != "api"}
    kernel = (processes.get("kernel_irq_share") or 0.0) * (processes.get("cores") or 0)
    return {
        "users": users,
        "passed": verdict["every_endpoint_p95_under_2s"] and verdict["zero_errors"] and not problems,
        "rps": overall["rps"],
        "requests": overall["requests"],
        "p50_ms": overall["p50"],
        "p95_ms": overall["p95"],
        "p99_ms": overall["p99"],
        "worst_endpoint": verdict["worst_endpoint"],
        "worst_p95_ms": verdict["worst_p95_ms"],
        "overall_p95_ms": overall["p95"],  # the name report.sweep_chart reads
        "errors": latency["errors"]["count"],
        "error_kinds": latency["errors"]["kinds"][:5],
        "endpoints": {
            k: {"requests": e["requests"], "p95_ms": e["p95"]} for k, e in latency["endpoints"].items()
        },
        "jobs_client": latency["jobs_client"],
        "api_cores": api_cores,
        "api_cpu_ms_per_request": round(api_cores / overall["rps"] * 1000, 4)
        if api_cores and overall["rps"]
        else None,
        "other_cores": others,
        "kernel_irq_cores": round(kernel, 3),
        "everything_else_cores": round(sum(others.values()) + kernel, 3),
        "postgres_this_db_cores": extra["postgres_this_db_cores"],
        "core_busy": extra["core_busy"],
        "machine_busy": processes.get("machine_busy"),
        "other_work_share": processes.get("unaccounted_share"),
        "machine_busy_before": round(busy_before, 3),
        "affinity": affinity,
        "window": {"ramp_s": ramp, "settle_s": SETTLE_SECONDS, "seconds": seconds},
        "problems": problems,
        "wall_s": round(time.monotonic() - began, 1),
    }


def sweep(
    target: str,
    steps: list[int],
    seconds: float,
    options: run.Options,
    work: Path,
    before_step: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    done: list[dict[str, Any]] = []
    with serve(target, options, work / "logs") as served:
        pin(served.api_pid, {API_CORE})
        pinned = {"api tree": cpus_of(served.api_pid)}
        for users in steps:
            before_step()
            done.append(step(served, target, users, seconds, options, work))
            s = done[-1]
            print(
                f"    {target} {users} users: {s['rps']} req/s, p95 {s['p95_ms']} ms (worst {s['worst_p95_ms']} ms "
                f"{s['worst_endpoint']}), {s['errors']} errors, API {s['api_cpu_ms_per_request']} ms CPU/request, "
                f"cores busy {s['core_busy']}",
                file=sys.stderr,
            )
            if not s["passed"]:
                break
    return {
        "steps": done,
        "users_per_core": users_per_core(done),
        "cpu_bound_users_per_core": cpu_bound_users(done),
        "pinned": pinned,
    }


def users_per_core(steps: list[dict[str, Any]]) -> int:
    """The last passing step before the first failing one (0 if the first fails)."""
    passed = 0
    for s in steps:
        if not s["passed"]:
            break
        passed = s["users"]
    return passed


# ---------------------------------------------------------------------------------------------- reporting


def _avx512() -> bool:
    with contextlib.suppress(OSError):
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    return False


def _top() -> list[str]:
    """The first lines of top's second frame (its first shows CPU since boot, not now)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["top", "-bn2", "-d1"], capture_output=True, text=True, timeout=15).stdout
        return out[out.rfind("top - ") :].splitlines()[:20]
    return []


def cpu_bound_users(steps: list[dict[str, Any]]) -> int | None:
    """Users one core would carry at 100 % busy: a core's second over the CPU a user's requests cost, from the
    passing steps (slow answers make users ask less often): the most requests per user any saw, their median CPU
    per request. An estimate that contention on a shared machine moves less than latency; not latency-tested."""
    passed = [s for s in steps if s["passed"] and s["users"] and s["rps"] and s["api_cpu_ms_per_request"]]
    costs = sorted(s["api_cpu_ms_per_request"] for s in passed)
    rates = [s["rps"] / s["users"] for s in passed]
    if not costs or not rates:
        return None
    return round(1000 / (costs[len(costs) // 2] * max(rates)))


def comparison(targets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """CPU per request of the three at the largest step all of them passed, and where the API's lies: 0 at the
    floor, 1 at the minimal app."""

    def passing(name: str) -> dict[int, float]:
        return {
            s["users"]: s["api_cpu_ms_per_request"]
            for s in targets.get(name, {}).get("steps", [])
            if s["passed"] and s["api_cpu_ms_per_request"]
        }

    by = {name: passing(name) for name in TARGETS}
    common = set.intersection(*(set(v) for v in by.values())) if all(by.values()) else set()
    if not common:
        return {"at_users": None}
    at = max(common)
    api, minimal, floor = (by[name][at] for name in TARGETS)
    return {
        "at_users": at,
        "cpu_ms_per_request": {"api": api, "minimal": minimal, "floor": floor},
        "api_over_floor": round(api / floor, 2),
        "api_over_minimal": round(api / minimal, 2),
        "minimal_over_floor": round(minimal / floor, 2),
        # 0: the API costs what the floor does; 1: what the minimal app does; above 1: more than a one-row read.
        "position_floor_to_minimal": round((api - floor) / (minimal - floor), 2)
        if minimal != floor
        else None,
    }


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    c = result["comparison"]
    lines = [
        f"# {result['name']}: users per API core",
        "",
        f"{result['started_at']} to {result['finished_at']} (UTC) on {m['cpu']}, {m['cores']} cores "
        f"(AVX-512: {'yes' if m['avx512'] else 'no'}), {m['memory_gb']} GB; load average at start "
        f"{result['loadavg_at_start']}. The API (or the reference app) on core {API_CORE}; Locust, Postgres, Redis, "
        f"memcached, the ai worker and the OpenAI fake on core {OTHER_CORE} (pinned: {result['shared_pinned']}). "
        f"Steps {', '.join(map(str, result['params']['steps']))} users, ramp {RAMP_USERS_PER_S:.0f} users/s, "
        f"{SETTLE_SECONDS} s to settle, {result['params']['step_seconds']:g} s measured; think time 1-3 s. "
        "A step passes with every endpoint's p95 under 2 s and no error.",
        "",
        "| | users per core | CPU-bound estimate | at the last passing step: req/s | CPU per request | p95 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in TARGETS:
        t = result["targets"].get(name)
        if not t:
            continue
        last = next((s for s in t["steps"] if s["users"] == t["users_per_core"]), None)
        top = "" if t["steps"][-1]["passed"] is False else " (every step passed: at least)"
        lines.append(
            f"| {LABELS[name]} | **{t['users_per_core']:,}**{top} | {_cell(t.get('cpu_bound_users_per_core'), '{:,}')} "
            f"| {_cell(last and last['rps'])} "
            f"| {_cell(last and last['api_cpu_ms_per_request'], '{:.3f} ms')} | {_cell(last and last['p95_ms'], '{:,.0f} ms')} |"
        )
    if c.get("at_users"):
        cpu = c["cpu_ms_per_request"]
        lines += [
            "",
            f"At {c['at_users']:,} users (the largest step all three passed): the API costs {cpu['api']:.3f} ms of CPU "
            f"a request, the minimal app {cpu['minimal']:.3f} ms, the floor {cpu['floor']:.3f} ms: the API is "
            f"{c['api_over_floor']}x the floor and {c['api_over_minimal']}x the minimal app; on a scale from the floor "
            f"(0) to the minimal app (1) it sits at **{c['position_floor_to_minimal']}**.",
        ]
    other = max(
        (s["other_work_share"] or 0 for t in result["targets"].values() for s in t["steps"]), default=0
    )
    if other > 0.1:
        lines += [
            "",
            f"**CONTAMINATED: up to {other:.0%} of the machine was used by work this run did not start (other builds "
            "and tests on a shared machine, unpinned, on both cores): the figures understate what a core can do.**",
        ]
    for note in result["notes"]:
        lines += ["", f"- {note}"]
    for name in TARGETS:
        t = result["targets"].get(name)
        if not t:
            continue
        lines += [
            "",
            f"## {LABELS[name]}",
            "",
            f"Pinned: {t['pinned']}.",
            "",
            "| users | pass | req/s | p50 / p95 / p99 ms | worst endpoint p95 | errors | API cores | API CPU/request "
            "| everything else (cores) | core 0 / core 1 busy | other work | busy before |",
            "|---:|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for s in t["steps"]:
            rest = ", ".join(f"{k} {v:.2f}" for k, v in s["other_cores"].items() if v >= 0.005)
            # A core at 95 % or more is marked: on core 0 that is the load generator's side running out.
            cores = " / ".join(f"**{b:.0%}**" if b >= 0.95 else f"{b:.0%}" for b in s["core_busy"] or [])
            lines.append(
                f"| {s['users']:,} | {'yes' if s['passed'] else '**no**'} | {s['rps']} "
                f"| {_cell(s['p50_ms'])} / {_cell(s['p95_ms'])} / {_cell(s['p99_ms'])} "
                f"| {_cell(s['worst_p95_ms'], '{:,.0f}')} ({s['worst_endpoint']}) | {s['errors']} "
                f"| {_cell(s['api_cores'], '{:.2f}')} | {_cell(s['api_cpu_ms_per_request'], '{:.3f} ms')} "
                f"| {s['everything_else_cores']:.2f}: {rest}, kernel irq {s['kernel_irq_cores']:.2f}; "
                f"this database's Postgres backends {_cell(s['postgres_this_db_cores'], '{:.2f}')} "
                f"| {cores} | {_cell(s['other_work_share'], '{:.0%}')} | {s['machine_busy_before']:.0%} |"
            )
        errors = [e for s in t["steps"] for e in s["error_kinds"]]
        if errors:
            lines += [
                "",
                "Errors: " + "; ".join(f"{e['name']} {e['error']} x{e['count']}" for e in errors[:8]) + ".",
            ]
    lines += [
        "",
        "## The machine at the start (`top -bn2 -d1`, the second frame's first lines)",
        "",
        "```",
        *result["top_at_start"],
        "```",
    ]
    return "\n".join(lines) + "\n"


LABELS = {
    "api": "Wardrobe API (session mix, no cutouts)",
    "minimal": "minimal Falcon + gevent + psycopg2 app (one row)",
    "floor": "floor (constant answer)",
}
NOTES = [
    "CPU-bound estimate: 1 core-second over (median CPU per request x the most requests per user-second, both "
    "from the passing steps): the users one core would carry at 100 % busy with nothing else on it. Not "
    "latency-tested.",
    "CPU per request is the pinned server's CPU (master and worker, /proc utime + stime) over the window, divided "
    "by the HTTP requests answered in it. The API's requests include /images/ (nginx serves those in production), "
    "the capsule job polls and the onboarding users' uploads and upload job polls (their cutouts stay queued: no "
    "images worker runs, so they poll until --job-timeout or the step's end and count as waits, not errors).",
    "The reference apps' users make one request per think time; the mix's users make several per action (open "
    "the app, thumbnails), so at equal users the API answers more requests: compare CPU per request, and users "
    "per core only within a target.",
    "Everything else shares core 0: when core 0 is near 100 % busy, Locust itself lags and latency grows from the "
    "load generator's side, so a failing step of a reference app says little about the app.",
    "No nginx in front: every simulated user holds its own keep-alive connection, so the worker allows "
    f"{WORKER_CONNECTIONS:,} connections (the API's default is 2,000 per worker).",
    "`other work` is machine CPU used by processes this run did not start (other builds and tests on a shared "
    "machine); they are not pinned and take from both cores.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=run._int_list, default=STEPS, help="users per step (comma-separated)")
    parser.add_argument("--step-seconds", type=float, default=15.0, help="measured seconds per step")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="which of api,minimal,floor (in this order)"
    )
    parser.add_argument("--database", default="wardrobe_bench_api")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "bench-api")
    parser.add_argument("--results-dir", type=Path, default=run.RESULTS)
    parser.add_argument("--population", type=int, default=20_000)
    parser.add_argument(
        "--onboarding-share",
        type=mix.share,
        default=0.01,
        help="fraction of the users that are onboarding users, uploading --photos-per-visit photos a visit "
        "(rounded up; 0: none)",
    )
    parser.add_argument(
        "--photos-per-visit", type=run.photos_per_visit, default="10-20", help="N or N-M photos a visit"
    )
    parser.add_argument("--name", help="results file name (default api-<stamp>)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each step, wait up to this long for an idle machine",
    )
    args = parser.parse_args(argv)
    targets = [t for t in TARGETS if t in args.targets.split(",")]
    options = run.Options(
        database=args.database,
        data_dir=args.data_dir,
        results_dir=args.results_dir,
        population=args.population,
        quiet_wait=args.quiet_wait,
        onboarding_share=args.onboarding_share,
        photos_per_visit=args.photos_per_visit,
    )
    name = args.name or f"api-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}"
    # Locust holds a socket per user; the servers are this process's children and inherit the limit.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {OTHER_CORE})  # before any thread or child: all of them inherit core 0
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    top = _top()
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with stopped_on_signals(), tempfile.TemporaryDirectory(prefix="wardrobe-bench-api-") as tmp:
        work = Path(tmp)
        try:
            print(f"==> seeding {options.database}", file=sys.stderr)
            seeded = run.prepare_database(options)
            results: dict[str, Any] = {}
            shared = SharedServices({OTHER_CORE})
            try:
                for target in targets:
                    results[target] = sweep(target, args.steps, args.step_seconds, options, work, shared.pin)
            finally:
                shared.restore()
        except BaseException:
            run._keep_logs(work / "logs", options.results_dir / "logs" / name)
            raise
        if any(s["problems"] or s["errors"] for t in results.values() for s in t["steps"]):
            run._keep_logs(work / "logs", options.results_dir / "logs" / name)
    result = {
        "name": name,
        "kind": "api_capacity",
        "started_at": started,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {**report.machine(), "avx512": _avx512()},
        "loadavg_at_start": loadavg,
        "top_at_start": top,
        "params": {
            "steps": args.steps,
            "step_seconds": args.step_seconds,
            "ramp_users_per_s": RAMP_USERS_PER_S,
            "settle_s": SETTLE_SECONDS,
            "think_time_s": [1, 3],
            "api_core": API_CORE,
            "other_core": OTHER_CORE,
            "api_workers": 1,
            "worker_connections": WORKER_CONNECTIONS,
            "population": options.population,
            "uploads": (
                f"onboarding users only ({options.onboarding_share:g} of the users, rounded up; "
                f"{options.photos_per_visit} photos a visit, each visit a new account); returning users none "
                "(--upload-every inf); no images worker, so the uploads' jobs stay queued"
                if options.onboarding_share > 0
                else "none (--upload-every inf, --onboarding-share 0)"
            ),
            "onboarding_share": options.onboarding_share,
            "photos_per_visit": options.photos_per_visit,
            "capsule_every_s": options.capsule_every,
            "database": options.database,
        },
        "shared_pinned": shared.counts,
        "seed": seeded,
        "targets": results,
        "users_per_api_core": results.get("api", {}).get("users_per_core"),
        "comparison": comparison(results),
        "notes": NOTES,
    }
    options.results_dir.mkdir(parents=True, exist_ok=True)
    (options.results_dir / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (options.results_dir / f"{name}.md").write_text(markdown(result))
    report.sweep_chart({t: r["steps"] for t, r in results.items()}, options.results_dir / f"{name}.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped, Postgres and Redis unpinned", file=sys.stderr)
        sys.exit(130)
