"""`make bench-brands`: microseconds per brand-autocomplete query, the difflib scan against the indexed catalogue.

One process, interleaved rounds: each round runs every variant over the same shuffled query stream, in a rotated
order, so drift in the machine's speed hits all of them alike. Variants:
- `difflib`: the catalogue search as it was (a linear scan, difflib for the fuzzy tier), kept here verbatim;
- `indexed`: the current `CatalogueBrands` with its result LRU turned off, i.e. every query ranked from scratch;
- `indexed+lru`: the current `CatalogueBrands` as the API builds it.
The query mix: prefixes of 1-6 characters of real brand names (1-character ones are refused before any search,
as the API answers 400), typos of real names (a letter dropped, doubled, swapped or replaced) and misses. It also
compares every distinct query's answer between `difflib` and `indexed` and lists the differences.
`python -m bench.brands_bench` writes bench/results/brands.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import json
import os
import platform
import random
import statistics
import string
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from wardrobe.clients.brands import (
    _FUZZY_CUTOFF,
    CatalogueBrands,
    InvalidQuery,
    _compact,
    _fold,
    _words,
    normalise_query,
)

RESULTS = Path(__file__).resolve().parent / "results"
# bench/locustfile.py's BRAND_PREFIXES (importing it would import Locust, which monkey-patches the process).
LOAD_TEST_QUERIES = ["za", "ni", "un", "ma", "ad", "le", "co", "gu", "pr", "h&"]


class DifflibCatalogue:
    """The catalogue search before the indexes (a copy of its match), the baseline of this benchmark."""

    def __init__(self, names: Iterable[str]):
        self._entries = []
        seen = set()
        for name in names:
            folded = _fold(name)
            if name and folded not in seen:
                seen.add(folded)
                self._entries.append((name, folded, _words(folded), _compact(folded)))

    def match(self, q: str, limit: int = 10) -> list[str]:
        folded = _fold(normalise_query(q))
        words, compact = _words(folded), _compact(folded)
        ranked: list[tuple[int, float, int, str, str]] = []
        unmatched = []
        for name, n_folded, n_words, n_compact in self._entries:
            if folded == n_folded or (compact and compact == n_compact):
                tier = 0
            elif n_folded.startswith(folded) or (compact and n_compact.startswith(compact)):
                tier = 1
            elif words and f" {n_words}".find(f" {words}") >= 0:
                tier = 2
            elif folded in n_folded or (compact and compact in n_compact):
                tier = 3
            else:
                unmatched.append((name, n_compact))
                continue
            ranked.append((tier, 0.0, len(name), n_folded, name))
        if len(ranked) < limit and len(compact) >= 3:
            for name, n_compact in unmatched:
                score = difflib.SequenceMatcher(None, compact, n_compact).ratio()
                if compact[0] == n_compact[:1]:
                    head = difflib.SequenceMatcher(None, compact, n_compact[: len(compact)]).ratio()
                    score = max(score, head)
                if score >= _FUZZY_CUTOFF:
                    ranked.append((4, -score, len(name), _fold(name), name))
        ranked.sort()
        return [entry[-1] for entry in ranked[:limit]]


def catalogue_names() -> list[str]:
    text = resources.files("wardrobe").joinpath("data/brands.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def typo(name: str, rng: random.Random) -> str:
    letters = list(name.lower())
    at = rng.randrange(1, len(letters) - 1)
    kind = rng.choice(("drop", "double", "swap", "replace"))
    if kind == "drop":
        del letters[at]
    elif kind == "double":
        letters.insert(at, letters[at])
    elif kind == "swap":
        letters[at], letters[at + 1] = letters[at + 1], letters[at]
    else:
        letters[at] = rng.choice(string.ascii_lowercase)
    return "".join(letters)


def query_mix(names: list[str], rng: random.Random, distinct: int) -> dict[str, list[str]]:
    """Distinct queries by kind: 70 % prefixes (1-6 characters, as typed), 20 % typos, 10 % misses."""
    kinds: dict[str, set[str]] = {"prefix": set(), "typo": set(), "miss": set()}
    wanted = {"prefix": int(distinct * 0.7), "typo": int(distinct * 0.2), "miss": int(distinct * 0.1)}
    long_names = [n for n in names if len(n) >= 5]
    for kind, count in wanted.items():
        tries = 0
        while len(kinds[kind]) < count and tries < count * 50:
            tries += 1
            if kind == "prefix":
                name = rng.choice(names)
                query = name[: rng.randint(1, 6)]
                if rng.random() < 0.5:
                    query = query.lower()
            elif kind == "typo":
                query = typo(rng.choice(long_names), rng)
            else:
                query = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
            kinds[kind].add(query)
    return {kind: sorted(queries) for kind, queries in kinds.items()}


def answer(match: Callable[[str, int], list[str]], query: str, limit: int) -> list[str] | None:
    try:
        return match(query, limit)
    except InvalidQuery:
        return None


def run_round(match: Callable[[str, int], list[str]], stream: list[str], limit: int) -> dict[str, float]:
    cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
    for query in stream:
        answer(match, query, limit)
    wall, cpu = time.perf_counter_ns() - wall0, time.process_time_ns() - cpu0
    return {"wall_us": wall / 1000 / len(stream), "cpu_us": cpu / 1000 / len(stream)}


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--distinct", type=int, default=2000, help="distinct queries in the mix")
    parser.add_argument("--stream", type=int, default=4000, help="queries per variant per round")
    parser.add_argument("--limit", type=int, default=10, help="suggestions asked for, as the Mini App does")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core (taskset-like)")
    parser.add_argument("--out", default=str(RESULTS / "brands"), help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    rng = random.Random(args.seed)
    names = catalogue_names()
    mix = query_mix(names, rng, args.distinct)
    distinct = [q for queries in mix.values() for q in queries]
    stream = [rng.choice(distinct) for _ in range(args.stream)]

    legacy = DifflibCatalogue(names)
    cold = CatalogueBrands(names, cache_size=0)
    warm = CatalogueBrands(names)
    variants = {"difflib": legacy.match, "indexed": cold.match, "indexed+lru": warm.match}

    differences = []
    for kind, queries in mix.items():
        for query in queries:
            before, after = answer(legacy.match, query, args.limit), answer(cold.match, query, args.limit)
            if before != after:
                differences.append({"kind": kind, "query": query, "difflib": before, "indexed": after})
    for query in distinct:  # the LRU variant starts warm, as a worker does after its first minutes
        answer(warm.match, query, args.limit)

    by_kind: dict[str, dict[str, float]] = {}
    for kind, queries in [*mix.items(), ("load test", LOAD_TEST_QUERIES)]:
        sample = [rng.choice(queries) for _ in range(1000)]
        by_kind[kind] = {
            name: statistics.median(run_round(variants[name], sample, args.limit)["cpu_us"] for _ in range(3))
            for name in ("difflib", "indexed", "indexed+lru")
        }

    rounds: list[dict[str, Any]] = []
    busy0, total0 = machine_busy()
    own0 = time.process_time()
    order = list(variants)
    for r in range(args.rounds):
        shuffled = stream[:]
        rng.shuffle(shuffled)
        results = {}
        for name in order[r % len(order) :] + order[: r % len(order)]:
            results[name] = run_round(variants[name], shuffled, args.limit)
        rounds.append(results)
    busy1, total1 = machine_busy()
    own = time.process_time() - own0
    ticks = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    elapsed_core_s = (total1 - total0) / ticks
    other_busy = max(0.0, (busy1 - busy0) / ticks - own)

    summary: dict[str, Any] = {"variants": {}, "ratios": {}}
    for name in variants:
        cpu = [r[name]["cpu_us"] for r in rounds]
        wall = [r[name]["wall_us"] for r in rounds]
        summary["variants"][name] = {
            "median_cpu_us": statistics.median(cpu),
            "min_cpu_us": min(cpu),
            "max_cpu_us": max(cpu),
            "median_wall_us": statistics.median(wall),
        }
    for name in ("indexed", "indexed+lru"):
        ratios = [r["difflib"]["cpu_us"] / r[name]["cpu_us"] for r in rounds]
        summary["ratios"][f"difflib/{name}"] = {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        }
    result = {
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores",
        "cpu_model": _cpu_model(),
        "args": vars(args),
        "catalogue_names": len(names),
        "distinct_queries": {kind: len(q) for kind, q in mix.items()},
        "rounds": rounds,
        "summary": summary,
        "by_kind_cpu_us": by_kind,
        "differences": differences,
        "machine_during_rounds": {
            "this_process_cores": own / (elapsed_core_s / cores) if elapsed_core_s else 0.0,
            "other_work_cores": other_busy / (elapsed_core_s / cores) if elapsed_core_s else 0.0,
            "loadavg": os.getloadavg(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def markdown(result: dict[str, Any]) -> str:
    s, args = result["summary"], result["args"]
    v, ratios = s["variants"], s["ratios"]
    machine = result["machine_during_rounds"]
    lines = [
        "# Brand autocomplete: microseconds per query, difflib scan against the indexed catalogue",
        "",
        f"Produced by `make bench-brands` (`bench/brands_bench.py`) at {result['measured_at']} on "
        f"{result['cpu_model']} ({result['machine']}); raw numbers in `brands.json`.",
        "",
        f"{args['rounds']} interleaved rounds of {args['stream']:,} queries per variant (limit {args['limit']}), "
        f"drawn from {sum(result['distinct_queries'].values()):,} distinct queries: "
        + ", ".join(f"{n:,} {k}" for k, n in result["distinct_queries"].items())
        + f"; a catalogue of {result['catalogue_names']} names. CPU time of this process per query.",
        "",
        "| variant | median µs/query | rounds min-max | wall µs/query |",
        "|---|---:|---:|---:|",
    ]
    for name, row in v.items():
        lines.append(
            f"| {name} | {row['median_cpu_us']:.1f} | {row['min_cpu_us']:.1f}-{row['max_cpu_us']:.1f} "
            f"| {row['median_wall_us']:.1f} |"
        )
    lines += ["", "| ratio (paired by round) | median | min-max |", "|---|---:|---:|"]
    for name, row in ratios.items():
        lines.append(f"| {name} | x{row['median']:.0f} | x{row['min']:.0f}-x{row['max']:.0f} |")
    lines += [
        "",
        "By kind of query (median of 3 passes over 1,000 queries drawn from that kind; `load test` is the 10 "
        "two-letter prefixes bench/locustfile.py sends):",
        "",
        "| kind | difflib µs | indexed µs | indexed+lru µs | difflib/indexed | difflib/indexed+lru |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, row in result["by_kind_cpu_us"].items():
        lines.append(
            f"| {kind} | {row['difflib']:.1f} | {row['indexed']:.1f} | {row['indexed+lru']:.1f} "
            f"| x{row['difflib'] / row['indexed']:.0f} | x{row['difflib'] / row['indexed+lru']:.0f} |"
        )
    diffs = result["differences"]
    total = sum(result["distinct_queries"].values())
    lines += [
        "",
        f"Machine during the rounds: this benchmark {machine['this_process_cores']:.2f} cores, other work "
        f"{machine['other_work_cores']:.2f} cores (load average {machine['loadavg'][0]:.2f}).",
        "",
        f"## Answers that differ: {len(diffs)} of {total:,} distinct queries",
        "",
        "The fuzzy tier's similarity is 2 x longest common subsequence / total length (rapidfuzz) instead of "
        "difflib's matching blocks, which can only be higher; the other tiers are the same rules on indexes.",
        "",
    ]
    if diffs:
        lines += ["| kind | query | difflib | indexed |", "|---|---|---|---|"]
        for d in diffs[:25]:
            before = ", ".join(d["difflib"] or []) or "-"
            after = ", ".join(d["indexed"] or []) or "-"
            lines.append(f"| {d['kind']} | `{d['query']}` | {before} | {after} |")
        if len(diffs) > 25:
            lines.append(f"| … | {len(diffs) - 25} more in brands.json | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
