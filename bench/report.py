"""Turns a run's raw request log and samples into the results file, its Markdown summary and its charts."""

from __future__ import annotations

import collections
import json
import math
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

P95_TARGET_MS = 2000.0
JOB_P95_TARGET_S = 30.0
# How the load test names a job it stopped waiting for (bench/locustfile.py, wait_for_job).
STILL_WAITING = "job still "


def read_samples(directory: Path) -> list[tuple[float, str, str, float, bool, str]]:
    rows = []
    for path in sorted(directory.glob("samples-*.tsv")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) < 6:
                continue  # a line cut by a killed process
            try:
                rows.append((float(parts[0]), parts[1], parts[2], float(parts[3]), parts[4] == "1", parts[5]))
            except ValueError:
                continue
    return rows


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    arr = np.asarray(values)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(arr.max()), 1),
        "mean": round(float(arr.mean()), 1),
    }


def latency(rows: list, start: float, end: float) -> dict[str, Any]:
    """Per endpoint and overall over requests that started in [start, end); JOB rows are waits, kept apart."""
    window = [r for r in rows if start <= r[0] < end]
    seconds = max(end - start, 1e-9)
    by_endpoint: dict[str, list] = collections.defaultdict(list)
    jobs: dict[str, list] = collections.defaultdict(list)
    errors: collections.Counter = collections.Counter()
    waits: collections.Counter = collections.Counter()
    for _started, kind, name, ms, ok, error in window:
        if kind == "JOB":
            waited = not ok and error.startswith(STILL_WAITING)
            jobs[name].append((ms, ok or waited))
            if waited:
                # The job is queued or running when the simulated user stops polling: a slow answer, not a failed
                # one. Under saturation cutouts are the work that degrades by design (the images worker gets only
                # idle CPU), so these are reported as waits beside upload→ready, not counted as errors.
                waits[name] += 1
                continue
        else:
            by_endpoint[f"{kind} {name}"].append((ms, ok))
        if not ok:
            errors[(kind, name, error)] += 1
    endpoints = {}
    for key, values in sorted(by_endpoint.items()):
        endpoints[key] = {
            "requests": len(values),
            "failures": sum(1 for _, ok in values if not ok),
            "rps": round(len(values) / seconds, 2),
            **_percentiles([ms for ms, _ in values]),
        }
    http = [v for values in by_endpoint.values() for v in values]
    overall = {
        "requests": len(http),
        "failures": sum(1 for _, ok in http if not ok),
        "rps": round(len(http) / seconds, 2),
        **_percentiles([ms for ms, _ in http]),
    }
    job_stats = {}
    for name, values in sorted(jobs.items()):
        # A wait the user gave up on took at least as long as it ran: in the percentiles as that lower bound, so a
        # backlog shows in p95 instead of leaving only the few cutouts that were fast.
        done = [ms / 1000 for ms, ok in values if ok]
        stats = _percentiles(done)
        job_stats[name] = {
            "count": len(values),
            "failed": sum(1 for _, ok in values if not ok),
            "still_waiting": waits[name],
            **{k: (round(v / 1, 2) if v is not None else None) for k, v in stats.items()},
            "unit": "s",
        }
    return {
        "endpoints": endpoints,
        "overall": overall,
        "jobs_client": job_stats,
        "errors": {
            "count": sum(errors.values()),
            "kinds": [
                {"type": k[0], "name": k[1], "error": k[2], "count": n} for k, n in errors.most_common(20)
            ],
        },
    }


def timeline(rows: list, start: float, end: float, step: float = 5.0) -> list[dict[str, Any]]:
    bins: dict[int, list] = collections.defaultdict(list)
    for started, kind, _name, ms, ok, _error in rows:
        if kind != "JOB" and start <= started < end:
            bins[int((started - start) // step)].append((ms, ok))
    out = []
    for index in range(math.ceil((end - start) / step)):
        values = bins.get(index, [])
        stats = _percentiles([ms for ms, _ in values])
        out.append(
            {
                "t": round(index * step, 1),
                "rps": round(len(values) / step, 1),
                "errors": sum(1 for _, ok in values if not ok),
                "p50": stats["p50"],
                "p95": stats["p95"],
                "p99": stats["p99"],
            }
        )
    return out


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """The mission's target (every endpoint's p95 under 2 s, no failed request or job) and, apart, whether cutouts kept up.

    Upload→ready is not part of `passed`: on a saturated box the images worker gets only the CPU the API leaves idle,
    so cutouts are what degrades, honestly (the job answer says how many are ahead and estimates the wait). Whether
    they kept up is what the capacity model reads to decide that a box needs a worker box.
    """
    endpoints = result["latency"]["endpoints"]
    worst = max(endpoints.items(), key=lambda kv: kv[1]["p95"] or 0, default=(None, {"p95": None}))
    upload = result["latency"]["jobs_client"].get("upload→ready", {})
    checks = {
        "every_endpoint_p95_under_2s": all((e["p95"] or 0) < P95_TARGET_MS for e in endpoints.values()),
        "zero_errors": result["latency"]["errors"]["count"] == 0,
    }
    return {
        **checks,
        # No upload at all keeps up; uploads that all outlived the wait (no p95) do not.
        "upload_to_ready_p95_under_30s": not upload.get("count")
        or (upload.get("p95") is not None and upload["p95"] < JOB_P95_TARGET_S),
        "worst_endpoint": worst[0],
        "worst_p95_ms": worst[1]["p95"],
        "passed": all(checks.values()) and bool(endpoints),
    }


def on_engine(engine: str | None) -> str:
    """ " on ENGINE" for results that name it (older ones only give the precision)."""
    return f" on {engine}" if engine else ""


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {
        "cpu": model,
        "cores": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def write(result: dict[str, Any], directory: Path, name: str) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": directory / f"{name}.json",
        "md": directory / f"{name}.md",
        "png": directory / f"{name}.png",
    }
    paths["json"].write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    paths["md"].write_text(markdown(result, paths["png"].name))
    chart(result, paths["png"])
    return paths


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def md_table(columns: list[str], align: str, rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table; `align` has a letter per column: l (left) or r (right)."""
    rule = {"l": "---", "r": "---:"}
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(rule[a] for a in align) + "|",
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def api_cpu_ms_per_request(result: dict[str, Any]) -> float | None:
    """The API processes' CPU over the measured window per HTTP request answered in it (as bench/floor.py uses)."""
    api = (result.get("processes") or {}).get("roles", {}).get("api")
    rps = (result.get("latency") or {}).get("overall", {}).get("rps")
    if not api or not rps:
        return None
    return api["cpu_cores"] / rps * 1000


def _api_cpu_line(result: dict[str, Any], overall: dict[str, Any]) -> str:
    ms = api_cpu_ms_per_request(result)
    if ms is None:
        return "API CPU per request: n/a (no API process sampled)."
    api = result["processes"]["roles"]["api"]
    return (
        f"**API CPU per request: {ms:.3f} ms** ({api['cpu_cores']:.2f} cores over {overall['rps']} req/s, from the "
        f"API workers' /proc CPU in the measured window), beside all-HTTP p50 {_ms(overall['p50'])} / p95 "
        f"{_ms(overall['p95'])} / p99 {_ms(overall['p99'])} ms."
    )


def _latency_row(label: str, e: dict[str, Any]) -> list[Any]:
    return [label, e["requests"], e["failures"], e["rps"], *(_ms(e[k]) for k in ("p50", "p95", "p99", "max"))]


def _job_row(label: str, j: dict[str, Any]) -> list[Any]:
    return [label, j["count"], j["failed"], j.get("still_waiting", ""), j["p50"], j["p95"], j["max"]]


def _cutouts_kept_up(v: dict[str, Any], upload: dict[str, Any]) -> str:
    if v["upload_to_ready_p95_under_30s"]:
        return "yes"
    waiting = upload.get("still_waiting")
    return (
        f"no ({waiting} of {upload['count']} still waiting when the user stopped polling)"
        if waiting
        else "no"
    )


def _images_priority(params: dict) -> str:
    if params.get("images_worker_priority"):
        return f"at {params['images_worker_priority']}"
    # Results from before the worker ran SCHED_IDLE: a nice, raised to 0 while cutouts waited past a threshold.
    seconds = params.get("image_catchup_s")
    catchup = f"up to nice 0 while cutouts wait over {seconds:g} s" if seconds else "no catch-up"
    return f"at nice {params.get('images_worker_nice')}, {catchup}"


def markdown(result: dict[str, Any], chart_name: str) -> str:
    lat, params, v = result["latency"], result["params"], result["verdict"]
    db = result.get("jobs_db") or {}
    lines = [
        f"# {result['name']}: {params['users']} users against {result['target']}",
        "",
        f"{result['started_at']} on {result['machine']['cpu'] or 'unknown CPU'}, {result['machine']['cores']} "
        f"cores, {result['machine']['memory_gb']} GB. Measured {params['duration']} s after a {params['ramp']} s "
        f"ramp-up and {params.get('settle', 0)} s to settle; think time 1-3 s; population {params['population']} users x {params['items_per_user']} items.",
        *(
            [
                "",
                f"Stack: {params['api_workers']} API workers; images worker {_images_priority(params)}, "
                f"{params.get('image_workers')} process(es), cutouts in "
                f"{params['cutout_precision']}{on_engine(params.get('cutout_engine'))}; "
                f"{params.get('openai_keys')} OpenAI key(s).",
            ]
            if params.get("cutout_precision")
            else []
        ),
        "",
        f"The OpenAI fake answers each call in {params.get('openai_latency_ms', 200)} ms.",
        "",
        f"**{'PASS' if v['passed'] else 'FAIL'}** — every endpoint p95 < 2 s: "
        f"{'yes' if v['every_endpoint_p95_under_2s'] else 'no'} (worst {v['worst_endpoint']} "
        f"{_ms(v['worst_p95_ms'])} ms); zero errors: {'yes' if v['zero_errors'] else 'no'} "
        f"({lat['errors']['count']}). Cutouts kept up (upload→ready p95 < 30 s, not part of the verdict): "
        f"{_cutouts_kept_up(v, lat['jobs_client'].get('upload→ready', {}))}.",
        *(
            ["", f"**{result['notes'][0]}**"]
            if result.get("notes") and result["notes"][0].startswith("CONTAMINATED")
            else []
        ),
        "",
        f"![latency and throughput]({chart_name})",
        "",
        *md_table(
            ["endpoint", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"],
            "lrrrrrrr",
            [
                *(_latency_row(f"`{key}`", e) for key, e in lat["endpoints"].items()),
                _latency_row("**all HTTP**", lat["overall"]),
            ],
        ),
        "",
        _api_cpu_line(result, lat["overall"]),
        "",
        "## Jobs",
        "",
        *md_table(
            ["wait (as the user sees it)", "count", "failed", "still waiting", "p50 s", "p95 s", "max s"],
            "lrrrrrr",
            [
                *(_job_row(name, j) for name, j in lat["jobs_client"].items()),
                *(_job_row(f"{kind} (jobs table: created→finished)", j) for kind, j in db.items()),
            ],
        ),
    ]
    q = result.get("queue") or {}
    if q:
        lines += [
            "",
            f"Queue (jobs waiting in Postgres, sampled every 2 s): max {q['queued_max']} waiting, oldest waited "
            f"up to {q['oldest_age_max_s']} s (mean {q['oldest_age_mean_s']} s).",
        ]
    cache = result.get("cache")
    lines += [
        "",
        "Cache hit rate (API /metrics, memcached + local LRU): "
        + (f"{cache['hit_rate']:.1%} of {cache['lookups']:.0f} lookups." if cache else "n/a (not exported)."),
        "",
        "## Processes",
        "",
        f"Machine busy {result['processes'].get('machine_busy', 0) or 0:.0%} of {result['machine']['cores']} cores "
        f"over the window: {result['processes'].get('kernel_irq_share', 0) or 0:.0%} of it interrupt handling in the "
        "kernel (mostly loopback networking, charged to no process), "
        f"{result['processes'].get('unaccounted_share', 0) or 0:.0%} by processes this run did not start (other "
        "work on the machine). The load generator runs on the same machine: its share is the `locust` row.",
        "",
        *md_table(
            ["process", "count", "CPU (cores)", "share of machine", "RSS mean MB", "RSS peak MB"],
            "lrrrrr",
            [
                [
                    role,
                    p["processes"],
                    f"{p['cpu_cores']:.2f}",
                    f"{p['cpu_share']:.1%}",
                    p["rss_mb_mean"],
                    p["rss_mb_peak"],
                ]
                for role, p in sorted(result["processes"].get("roles", {}).items())
            ],
        ),
    ]
    if lat["errors"]["kinds"]:
        rows = [[e["type"], f"`{e['name']}`", e["error"], e["count"]] for e in lat["errors"]["kinds"]]
        lines += ["", "## Errors", "", *md_table(["type", "name", "error", "count"], "lllr", rows)]
    if result.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["timeline"]
    t = [p["t"] for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for key, style in (("p50", "-"), ("p95", "-"), ("p99", ":")):
        top.plot(t, [p[key] if p[key] is not None else float("nan") for p in points], style, label=key)
    top.axhline(P95_TARGET_MS, color="red", linewidth=0.8, linestyle="--", label="2 s target")
    top.set_ylabel("latency, ms (all HTTP)")
    top.set_yscale("log")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"{result['target']}: {result['params']['users']} users, measured window")
    bottom.plot(t, [p["rps"] for p in points], label="requests/s")
    bottom.plot(t, [p["errors"] / 5.0 for p in points], color="red", label="errors/s")
    bottom.set_ylabel("throughput, req/s")
    bottom.set_xlabel("seconds into the measured window")
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sweep_chart(steps_by_target: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for target, steps in steps_by_target.items():
        users = [s["users"] for s in steps]
        left.plot(
            users, [s["worst_p95_ms"] or float("nan") for s in steps], "o-", label=f"{target}: worst endpoint"
        )
        left.plot(
            users, [s["overall_p95_ms"] or float("nan") for s in steps], "x--", label=f"{target}: all HTTP"
        )
        right.plot(users, [s["rps"] for s in steps], "o-", label=target)
    left.axhline(P95_TARGET_MS, color="red", linewidth=0.8, linestyle="--", label="2 s target")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("concurrent users")
    left.set_ylabel("p95 latency, ms")
    left.legend(fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("concurrent users")
    right.set_ylabel("throughput, req/s")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
