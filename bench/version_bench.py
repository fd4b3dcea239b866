"""`make bench-version`: GET /api/v1/items with the wardrobe version read from Postgres on every list read, against
the version kept in memcached (raised by every write after its commit), in one run.

Each variant is its own gunicorn over one seeded database (bench/ab.py), both with memcached and the local LRU for
pages; rounds interleave them, each with a closed-loop (saturated) and a fixed-rate window. The mix has 2 % PATCHes,
so versions move while it runs. `python -m bench.version_bench` writes bench/results/version.json and .md.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import ab
from bench.ab import Plan, Variant
from bench.ab_report import windows

QUESTION = (
    "API CPU per request, throughput and latency of GET /api/v1/items with the wardrobe version read from "
    "Postgres on every list read, against the version kept in memcached, in the same run"
)


def plan(memcached: str) -> Plan:
    variants = [
        Variant("postgres", {"WARDROBE_VERSION_CACHE_TTL": "0"}),
        Variant("memcached", {"WARDROBE_VERSION_CACHE_TTL": "300"}),
    ]
    return Plan("version", QUESTION, variants, "postgres", rounds=6, **ab.PAGE_WINDOWS)


def markdown(plan: Plan, result: dict[str, Any], args: argparse.Namespace | None = None) -> str:
    s = result["summary"]
    closed, paced = s["closed"], s["paced"]
    ratios = closed["ratios"]["memcached/postgres"]
    tp, api, stack = (
        ratios["throughput_rps"],
        ratios["cpu_ms_per_request"],
        ratios["stack_cpu_ms_per_request"],
    )
    p95 = paced["ratios"]["memcached/postgres"]["p95_ms"]
    variants = closed["variants"]
    lines = [
        "# The version round trip: Postgres on every list read, or memcached",
        "",
        f"Produced by `make bench-version` (`bench/version_bench.py`); raw numbers in `version.json`. "
        f"{plan.question}.",
        "",
        "## Result",
        "",
        f"- The API's CPU per request, memcached/postgres: **x{api['median']:.2f}** (rounds "
        f"{api['min']:.2f}-{api['max']:.2f}): {variants['postgres']['median_cpu_ms_per_request']} ms against "
        f"{variants['memcached']['median_cpu_ms_per_request']} ms.",
        f"- Server-side CPU per request (API + Postgres + memcached): x{stack['median']:.2f} (rounds "
        f"{stack['min']:.2f}-{stack['max']:.2f}).",
        f"- Throughput at saturation: x{tp['median']:.2f} (rounds {tp['min']:.2f}-{tp['max']:.2f}).",
        f"- p95 at a fixed {result['paced_rate_rps']:.0f} req/s: x{p95['median']:.2f} "
        f"(rounds {p95['min']:.2f}-{p95['max']:.2f}).",
        "",
        *windows(
            plan,
            result,
            [
                ", so saturated numbers are a whole-machine ceiling; both variants pay that equally.",
                "- Both variants share one memcached, as backends do in production; the rotating order spreads "
                "one variant's page fills serving the other's reads evenly.",
            ],
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    ab.run_command(lambda: ab.main("version", plan, markdown, __doc__.split("\n\n")[0], None))
