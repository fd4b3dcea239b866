"""The Markdown both same-run A/B reports are made of (bench/cache_bench.py, bench/profiler_bench.py): tables of
the variants and of their paired ratios, the machine and setup, errors by variant."""

from __future__ import annotations

import statistics
from typing import Any

from bench.ab import Plan


def fmt(value: Any, suffix: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def ratio_cell(ratio: dict[str, Any] | None) -> str:
    if not ratio:
        return "-"
    return f"{ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})"


def variant_table(plan: Plan, window: dict[str, Any], hit_rate: bool) -> list[str]:
    head = "| variant | req/s (median) | req/s range | p50 ms | p95 ms | p99 ms | API CPU ms/req | stack CPU ms/req |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if hit_rate:
        head += " hit rate |"
        rule += "---:|"
    lines = [head, rule]
    for variant in plan.variants:
        v = window["variants"][variant.name]
        rng = v["throughput_range"]
        row = (
            f"| {variant.name} | {fmt(v['median_throughput_rps'])} | "
            f"{fmt(rng[0]) + '-' + fmt(rng[1]) if rng else '-'} | {fmt(v['median_p50_ms'], digits=2)} | "
            f"{fmt(v['median_p95_ms'], digits=2)} | {fmt(v['median_p99_ms'], digits=2)} | "
            f"{fmt(v['median_cpu_ms_per_request'], digits=3)} | "
            f"{fmt(v['median_stack_cpu_ms_per_request'], digits=3)} |"
        )
        if hit_rate:
            hr = v["median_hit_rate"]
            row += f" {'-' if hr is None else f'{hr:.1%}'} |"
        lines.append(row)
    return lines


def ratio_table(window: dict[str, Any]) -> list[str]:
    lines = [
        "| pair (B/A) | throughput | p50 | p95 | p99 | API CPU/req | stack CPU/req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pair, r in window["ratios"].items():
        lines.append(
            f"| {pair} | {ratio_cell(r['throughput_rps'])} | {ratio_cell(r['p50_ms'])} | "
            f"{ratio_cell(r['p95_ms'])} | {ratio_cell(r['p99_ms'])} | {ratio_cell(r['cpu_ms_per_request'])} | "
            f"{ratio_cell(r['stack_cpu_ms_per_request'])} |"
        )
    return lines


def setup_lines(result: dict[str, Any]) -> list[str]:
    m, s = result["machine"], result["setup"]
    return [
        "## Machine and setup",
        "",
        f"- {m['date']}, {m['nproc']} x {m['cpu_model']}, {m['mem_gb']} GB, Linux {m['kernel']}, Python "
        f"{m['python']}, Postgres {m['postgres']}, {m['memcached']}, commit {m['git_commit']}; load average "
        f"at start {' '.join(m['loadavg_at_start'])}.",
        f"- Every variant is its own gunicorn ({s['workers']} gevent workers, recycling off, access log on as in "
        f"production) on the same database ({s['users']:,} users x {s['items_per_user']} items) and all run "
        "side by side; only one is driven at a time.",
        f"- Load: one geventhttpclient process on the same machine, {s['connections']} keep-alive connections "
        f"flat out (closed loop, {s['seconds']} s windows after {s['warmup']} s warm-up), after one pass over "
        "every user's first page (cursors learned, memcached partly warm) and a calibration window per variant. "
        f"Mix: Zipf(s="
        f"{s['skew']}) users; {s['first_page']:.0%} first pages, {s['second_page']:.0%} second pages "
        f"(cursor learned from the first), {s['writes']:.0%} PATCH of an item's notes (bumps the wardrobe "
        "version, so that user's cached pages stop matching). No If-None-Match: every read is a full 200.",
        f"- {s['rounds']} rounds; the variant order rotates and reverses every round so none always goes first. "
        "Medians over rounds; ranges are min-max over rounds; ratios are paired per round (B and A seconds "
        "apart), shown as median (min-max).",
        "- Latency is of the reads only (GET /api/v1/items), measured by the client. API CPU ms/req is the "
        "gunicorn master's and workers' CPU (from /proc) over the measured window, divided by completed "
        "requests; stack CPU adds this database's Postgres backends and memcached. CPU per request is far "
        "less disturbed by other work on the machine than throughput is.",
        "- 1-minute load average before each variant's turn (other engineers share this machine): "
        + _load_range(result["rounds"])
        + ".",
    ]


def _load_range(rounds: list[dict[str, Any]]) -> str:
    loads = [float(v["loadavg_before"]) for rnd in rounds for v in rnd.values()]
    return f"median {statistics.median(loads):.2f}, from {min(loads):.2f} to {max(loads):.2f}"


def errors_by_variant(window: dict[str, Any]) -> str:
    """Each variant's errors over the whole run of one window (closed or paced): "name N, name N"."""
    return ", ".join(f"{k} {v['errors_total']}" for k, v in window["variants"].items())


def reading_it(points: list[str], errors: str) -> list[str]:
    """The report's last section: the load generator shares the machine (`points[0]` goes on from there), the
    bench's other points, and the errors over the whole run."""
    return [
        "## Reading it",
        "",
        "- The load generator shares the 2 cores with gunicorn, Postgres and memcached" + points[0],
        *points[1:],
        f"- Errors over the whole run: {errors}.",
        "",
    ]


def windows(
    plan: Plan,
    result: dict[str, Any],
    notes: list[str],
    *,
    hit_rate: bool = True,
    rate_note: tuple[str, ...] = (),
) -> list[str]:
    """What every A/B report ends with: the saturated and the fixed-rate window, the setup, how to read it."""
    closed, paced = result["summary"]["closed"], result["summary"]["paced"]
    return [
        "### Saturated (closed loop)",
        "",
        *variant_table(plan, closed, hit_rate),
        "",
        *ratio_table(closed),
        "",
        f"### Fixed rate ({result['paced_rate_rps']:.0f} req/s, open loop)",
        "",
        *rate_note,
        *variant_table(plan, paced, hit_rate),
        "",
        *ratio_table(paced),
        "",
        *setup_lines(result),
        "",
        *reading_it(notes, f"{errors_by_variant(closed)} (closed); {errors_by_variant(paced)} (paced)"),
    ]
