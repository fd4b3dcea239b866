"""`make bench-floor`: the least an API request can cost on this box, against what the targets would let it cost.

Measured: gunicorn with one worker of the kind the API runs (gunicorn's gevent worker, with the API's one-send
patch) around bench/floorapp.py, a WSGI app that answers every request with a constant JSON body: no routing,
auth, database, cache or logging. For reference the same app also runs under gunicorn's other gevent worker
(gevent's own pywsgi server). wrk keeps 1,000 keep-alive connections busy from the other core; the worker's CPU
(utime + stime from /proc) over each window, divided by the requests wrk completed in it, is the floor. Rounds
alternate the variants; medians and ranges are reported.

Arithmetic, from committed results: a load run's CPU of everything else on the box (the load generator,
Postgres, memcached, Redis, the AI worker, the bench driver, the kernel's loopback work) per request and of the
images worker per upload, scaled to N users, leaves the box's cores minus that for the API. Divided by N users'
requests per second, that is what one API request may cost with the machine 100 % busy. N: 10x the baseline's
users per box (from the compare run nearest in time to the load run: hosts differ) and the 5,000-user stretch. Writes bench/results/floor.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.capacity import results_of
from bench.procfs import children, proc_cpu
from bench.report import machine, md_table
from bench.stack import start_isolated
from harness.processes import ROOT, Child, free_port, gunicorn_argv, wait_http

RESULTS = ROOT / "bench" / "results"
VARIANTS = {
    "gevent": "gevent",  # what conf/gunicorn.conf.py runs
    "gevent-pywsgi": "gunicorn.workers.ggevent.GeventPyWSGIWorker",
}
# Load-run roles whose CPU grows with requests; the images worker's grows with uploads; the API is what is left.
PER_REQUEST = ("locust", "postgres (shared)", "memcached", "redis (shared)", "worker-ai", "bench driver")
PER_UPLOAD = ("worker-images",)
UPLOAD = "POST /api/v1/items [upload]"


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))


def _worker_pid(master: int) -> int:
    workers = children(master)
    if len(workers) != 1:
        raise RuntimeError(f"expected one gunicorn worker under {master}, found {workers}")
    return workers[0]


def start_server(name: str, worker_class: str, log_dir: Path) -> tuple[Child, str, int]:
    port = free_port()
    argv = gunicorn_argv("bench/floor.conf.py", "-k", worker_class, "-b", f"127.0.0.1:{port}")
    child = start_isolated(argv, {}, log_dir / f"floor-{name}.log")
    url = f"http://127.0.0.1:{port}/"
    wait_http(url, 30, child)
    return child, url, _worker_pid(child.pid)


def drive(url: str, worker: int, seconds: float, connections: int) -> dict[str, float]:
    started = proc_cpu(worker, children=False)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", url],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=_raise_fd_limit,
    ).stdout
    cpu = proc_cpu(worker, children=False) - started
    found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not found:
        raise RuntimeError(f"wrk printed no request count:\n{out}")
    requests = int(found.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed = (sum(int(g) for g in errors.groups()) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0)
    return {
        "requests": requests,
        "rps": round(requests / seconds, 1),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_request": round(cpu / requests * 1000, 4) if requests else None,
        "failed": failed,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    log_dir = args.data_dir / "logs"
    rounds: list[dict[str, Any]] = []
    with ExitStack() as stack:
        servers = {}
        for name, worker_class in VARIANTS.items():
            child, url, worker = start_server(name, worker_class, log_dir)
            stack.callback(child.stop)
            servers[name] = (url, worker)
        names = list(VARIANTS)
        for name in names:  # warm-up: connections, the worker's first allocations
            drive(servers[name][0], servers[name][1], 2, args.connections)
        for index in range(args.rounds):
            order = names if index % 2 == 0 else names[::-1]
            row = {}
            for name in order:
                url, worker = servers[name]
                row[name] = drive(url, worker, args.seconds, args.connections)
                print(
                    f"  round {index + 1}/{args.rounds} {name:14} {row[name]['rps']:8.0f} req/s "
                    f"{row[name]['cpu_ms_per_request']:.4f} ms CPU/request",
                    flush=True,
                )
            rounds.append(row)
    summary = {}
    for name in VARIANTS:
        values = [r[name]["cpu_ms_per_request"] for r in rounds]
        summary[name] = {
            "median_cpu_ms_per_request": round(statistics.median(values), 4),
            "range": [min(values), max(values)],
            "median_rps": round(statistics.median(r[name]["rps"] for r in rounds), 1),
            "failed": sum(r[name]["failed"] for r in rounds),
        }
    ratios = [r["gevent-pywsgi"]["cpu_ms_per_request"] / r["gevent"]["cpu_ms_per_request"] for r in rounds]
    return {
        "rounds": rounds,
        "variants": summary,
        "pywsgi_over_gevent": {
            "median": round(statistics.median(ratios), 3),
            "range": [min(ratios), max(ratios)],
        },
    }


def source_runs(results: Path, names: str | None) -> list[dict[str, Any]]:
    """The named load runs (comma-separated), or the Wardrobe load run with the most users (newest of those)."""
    if names:
        return [
            json.loads((results / f"{n.strip()}.json").read_text()) for n in names.split(",") if n.strip()
        ]
    runs = [
        (data["params"]["users"], data.get("started_at", ""), data)
        for data in all_of_kind(results, "load")
        if data.get("target") == "wardrobe"
    ]
    if not runs:
        raise SystemExit("no Wardrobe load run in bench/results: run `make bench` first")
    return [max(runs, key=lambda r: (r[0], r[1]))[2]]


def all_of_kind(results: Path, kind: str) -> list[dict[str, Any]]:
    return [data for _name, data in results_of(results, (kind,))]


def nearest(runs: list[dict[str, Any]], when: str) -> dict[str, Any] | None:
    """The run whose start is closest to `when` (ISO 8601): the same host, as far as the files can tell."""
    if not runs or not when:
        return None
    at = datetime.datetime.fromisoformat(when)
    return min(
        runs, key=lambda r: abs((datetime.datetime.fromisoformat(r["started_at"]) - at).total_seconds())
    )


def budget(run: dict[str, Any], users_targets: dict[str, int]) -> dict[str, Any]:
    """What the API may spend per request at each target, from the other processes' cost in `run`."""
    roles = run["processes"]["roles"]
    cores = run["processes"]["cores"]
    users = run["params"]["users"]
    rps = run["latency"]["overall"]["rps"]
    uploads_s = run["latency"]["endpoints"].get(UPLOAD, {}).get("rps", 0.0)
    per_request = {role: roles[role]["cpu_cores"] / rps * 1000 for role in PER_REQUEST if role in roles}
    per_request["kernel (loopback networking)"] = (
        run["processes"].get("kernel_irq_share", 0.0) * cores / rps * 1000
    )
    per_upload = {
        role: roles[role]["cpu_cores"] / uploads_s * 1000
        for role in PER_UPLOAD
        if role in roles and uploads_s
    }
    api_ms = roles["api"]["cpu_cores"] / rps * 1000
    targets = {}
    for label, n in users_targets.items():
        n_rps = rps / users * n
        n_uploads = uploads_s / users * n
        others = sum(per_request.values()) * n_rps / 1000 + sum(per_upload.values()) * n_uploads / 1000
        left = cores - others
        targets[label] = {
            "users": n,
            "rps": round(n_rps),
            "uploads_per_s": round(n_uploads, 2),
            "other_cores": round(others, 2),
            "cores_left_for_api": round(left, 2),
            "api_ms_per_request_allowed": round(left / n_rps * 1000, 4) if left > 0 else 0.0,
        }
    return {
        "source": run["name"],
        "source_started_at": run.get("started_at"),
        "source_cutouts": run["params"].get("cutout_precision"),
        "source_users": users,
        "source_rps": rps,
        "source_uploads_per_s": uploads_s,
        "cores": cores,
        "per_request_ms": {k: round(v, 4) for k, v in per_request.items()},
        "per_upload_ms": {k: round(v, 1) for k, v in per_upload.items()},
        "api_ms_per_request_measured": round(api_ms, 4),
        "targets": targets,
    }


def markdown(result: dict[str, Any]) -> str:
    m, floor = result["machine"], result["floor"]
    gevent = floor["variants"]["gevent"]["median_cpu_ms_per_request"]
    lines = [
        "# The floor: what one API request costs at the least, and what the targets allow",
        "",
        f"{result['started_at']} on {m['cpu']}, {m['cores']} cores. {result['rounds']} rounds of "
        f"{result['seconds']:g} s per variant, variants alternating; wrk with {result['connections']} keep-alive "
        "connections on the other core; CPU is the one gunicorn worker's.",
        "",
        "## Measured: a WSGI app that answers a constant JSON body",
        "",
        *md_table(
            ["server", "CPU per request (median)", "range", "req/s (median)", "failed"],
            "lrlrr",
            [
                [
                    name,
                    f"{v['median_cpu_ms_per_request']:.3f} ms",
                    f"{v['range'][0]:.3f}-{v['range'][1]:.3f}",
                    f"{v['median_rps']:,.0f}",
                    v["failed"],
                ]
                for name, v in floor["variants"].items()
            ],
        ),
    ]
    ratio = floor["pywsgi_over_gevent"]
    lines += [
        "",
        f"gevent-pywsgi / gevent, paired by round: {ratio['median']:.2f} (range {ratio['range'][0]:.2f}-"
        f"{ratio['range'][1]:.2f}). `gevent` is the worker the API runs, with its one-send patch.",
    ]
    for b in result["budgets"]:
        lines += _budget_lines(b, gevent)
    lines += [
        "",
        "- The allowance assumes the machine 100 % busy, which no p95 under 2 s survives: the real allowance is "
        "smaller.",
        "- Costs per request are the source run's; they fall a little as load rises (fixed costs spread over more "
        "requests), so a run nearer the target would allow slightly more.",
        "- The floor has no routing, auth, database, cache, JSON or logging: the API's requests do all of these.",
        "- The floor is measured on this run's host; each source run and the compare carry their own date, and "
        "hosts of this kind differ (see the README).",
    ]
    return "\n".join(lines) + "\n"


def _budget_lines(b: dict[str, Any], floor_ms: float) -> list[str]:
    lines = [
        "",
        f"## Allowed: from `{b['source']}` ({b['source_started_at']}; {b['source_users']:,} users, "
        f"{b['source_rps']:.0f} req/s, {b['source_uploads_per_s']:.2f} uploads/s, cutouts in {b['source_cutouts']})",
        "",
        "Everything else on the box, per request: "
        + ", ".join(f"{k} {v:.3f} ms" for k, v in b["per_request_ms"].items())
        + "; per upload: "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in b["per_upload_ms"].items())
        + f". The API itself cost {b['api_ms_per_request_measured']:.3f} ms a request in that run.",
        "",
    ]
    rows = []
    for label, t in b["targets"].items():
        allowed = t["api_ms_per_request_allowed"]
        fits = "yes" if allowed > floor_ms else "**no**"
        measured = b["api_ms_per_request_measured"]
        against = f"{measured / allowed:.1f}x over" if allowed > 0 else "nothing left"
        if 0 < allowed and measured <= allowed:
            against = "fits"
        rows.append(
            [
                label,
                f"{t['users']:,}",
                f"{t['rps']:,}",
                f"{t['uploads_per_s']:.2f}",
                f"{t['other_cores']:.2f}",
                f"{t['cores_left_for_api']:.2f}",
                f"{allowed:.3f} ms",
                f"{fits} (floor {floor_ms:.3f} ms)",
                f"{measured:.3f} ms: {against}",
            ]
        )
    columns = [
        "target",
        "users",
        "req/s",
        "uploads/s",
        "other work (cores)",
        "left for the API (cores)",
        "API CPU a request may cost",
        "over the floor?",
        "the API's measured cost against it",
    ]
    return lines + md_table(columns, "lrrrrrrll", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument(
        "--load",
        help="load runs (comma-separated) to take other processes' costs from (default: the one with most users)",
    )
    parser.add_argument("--stretch-users", type=int, default=5000)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "floor")
    args = parser.parse_args(argv)
    runs = source_runs(args.results_dir, args.load)
    compares = all_of_kind(args.results_dir, "compare")
    budgets = []
    for run in runs:
        targets = {}
        compare = nearest(compares, run.get("started_at", ""))
        if compare is not None:
            label = f"10x the baseline ({compare['name']}: {compare['baseline_users_per_box']})"
            targets[label] = 10 * compare["baseline_users_per_box"]
        targets["stretch"] = args.stretch_users
        budgets.append(budget(run, targets))
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    print(f"[floor] {args.rounds} rounds x {len(VARIANTS)} variants x {args.seconds:g} s", flush=True)
    floor = measure(args)
    result = {
        "name": "floor",
        "kind": "floor",
        "started_at": started,
        "machine": machine(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "connections": args.connections,
        "floor": floor,
        "budgets": budgets,
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "floor.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.results_dir / "floor.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
