"""`make capacity USERS=1000,10000,100000`: fleet size and monthly cost from the latest measurements.

Inputs: users per box (latest sweep, else the latest passing load run) for the one box that runs everything, users
per API core (latest clean bench-api run whose API passed a step) for API boxes beyond it, images/s per worker box
(latest bench-jobs), the measured upload and capsule rates per user, prices and model parameters in
bench/prices.toml. Without a usable bench-api run, API boxes beyond one are sized by users per box, as before.
Printed as Markdown next to the original plan's estimate and written to bench/results/capacity.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PRICES = ROOT / "bench" / "prices.toml"
# bench/api_capacity.py marks a run CONTAMINATED when work it did not start took more than this share of the machine
# in any step: its users per core then says more about the neighbours than about the API.
CONTAMINATED_SHARE = 0.1


def results_of(results: Path, kinds: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """Every readable results file of one of `kinds`, as (file name, contents)."""
    found = []
    for path in results.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") in kinds:
            found.append((path.name, data))
    return found


def latest(results: Path, kinds: tuple[str, ...], accept=lambda r: True) -> dict[str, Any] | None:
    """The newest results file (by its own start time) of one of `kinds` that `accept` takes."""
    found = [
        (data.get("started_at", ""), name, data) for name, data in results_of(results, kinds) if accept(data)
    ]
    return max(found)[2] if found else None


def contaminated(run: dict[str, Any]) -> bool:
    """Whether the bench-api run is marked CONTAMINATED (any step of any target, as its own report does)."""
    shares = (
        s.get("other_work_share") or 0
        for target in (run.get("targets") or {}).values()
        for s in target.get("steps", [])
    )
    return max(shares, default=0) > CONTAMINATED_SHARE


def why_unusable(run: dict[str, Any]) -> str | None:
    """Why a bench-api run cannot size API boxes, or None when it can."""
    if not run.get("users_per_api_core"):
        return "the API passed no step"
    if contaminated(run):
        return "contaminated"
    return None


def passed_over(results: Path, since: str | None) -> list[tuple[str, str]]:
    """The bench-api runs newer than `since` (every one when None) that cannot size API boxes: (name, why)."""
    found = sorted(
        (r.get("started_at", ""), r.get("name", name.removesuffix(".json")), why)
        for name, r in results_of(results, ("api_capacity",))
        if (why := why_unusable(r)) and (since is None or r.get("started_at", "") > since)
    )
    return [(name, why) for _, name, why in found]


def api_core(results: Path) -> dict[str, Any]:
    """Users per API core from the newest usable bench-api run, its CPU per request at that step, the run itself,
    and the newer runs passed over."""
    run = latest(results, ("api_capacity",), lambda r: why_unusable(r) is None)
    if run is None:
        return {
            "users_per_api_core": None,
            "api_cpu_ms_per_request": None,
            "api_run": None,
            "api_skipped": passed_over(results, None),
        }
    users = run["users_per_api_core"]
    steps = (run.get("targets") or {}).get("api", {}).get("steps", [])
    at = next((s for s in steps if s["users"] == users), {})
    return {
        "users_per_api_core": users,
        "api_cpu_ms_per_request": at.get("api_cpu_ms_per_request"),
        "api_run": {
            "name": run["name"],
            "started_at": run.get("started_at"),
            "machine": run.get("machine", {}),
        },
        "api_skipped": passed_over(results, run.get("started_at", "")),
    }


def measurements(results: Path) -> dict[str, Any]:
    sweep = latest(
        results,
        ("sweep", "compare"),
        lambda r: r.get("target", "wardrobe") == "wardrobe" or r.get("kind") == "compare",
    )
    load = latest(results, ("load",), lambda r: r.get("target") == "wardrobe")
    passing = latest(results, ("load",), lambda r: r.get("target") == "wardrobe" and r["verdict"]["passed"])
    jobs = latest(results, ("jobs",))
    source, users_per_box, measured_at = "none", 0, None
    if sweep is not None:
        users_per_box, source, measured_at = sweep["users_per_box"], f"sweep {sweep['name']}", sweep
    elif passing is not None:
        users_per_box = passing["params"]["users"]
        source, measured_at = f"passing load run {passing['name']}", passing
    rates = (load or {}).get("rates") or {}
    capsules_per_user_hour = shared_upload_ok = None
    if load is not None:
        capsules = load["latency"]["endpoints"].get("POST /api/v1/capsules", {}).get("requests", 0)
        capsules_per_user_hour = capsules / load["params"]["duration"] / load["params"]["users"] * 3600
        # Whether the shared box also kept up with its uploads: if not, even one API box gets a worker box.
        shared_upload_ok = bool(load["verdict"].get("upload_to_ready_p95_under_30s"))
    return {
        "users_per_box": users_per_box,
        "users_per_box_source": source,
        "measured": measured_at,
        "shared_box_keeps_up_with_uploads": shared_upload_ok,
        "uploads_per_user_hour": rates.get("uploads_per_user_hour"),
        "capsules_per_user_hour": capsules_per_user_hour,
        "rates_source": load["name"] if load else None,
        "images_per_s_measured_box": (jobs or {}).get("images_per_s_per_box"),
        "jobs_source": jobs["name"] if jobs else None,
        **api_core(results),
    }


# What sized a row's API boxes, as its table cell says.
SHARED = "one box for all"
PER_API_CORE = "users per API core"
PER_BOX = "users per box, fallback"
NOT_MEASURED = "not measured"


def api_boxes_for(users: int, m: dict[str, Any], model: dict[str, Any]) -> tuple[int | None, str]:
    """API boxes for `users` and the figure that sized them: the one box that runs everything while the users fit
    on it; beyond it, boxes that run only the API, at users per API core when measured, else at users per box."""
    shared = m["users_per_box"] * model["target_utilisation"]
    if shared and users <= shared:
        return 1, SHARED
    per_core = m.get("users_per_api_core")
    per_box = per_core * model["api_box_cpus"] * model["target_utilisation"] if per_core else shared
    if not per_box:
        return None, NOT_MEASURED
    return math.ceil(users / per_box), PER_API_CORE if per_core else PER_BOX


def fleet(users: int, m: dict[str, Any], prices: dict[str, Any]) -> dict[str, Any]:
    p, model = prices["prices"], prices["model"]
    api_boxes, sized_by = api_boxes_for(users, m, model)
    uploads = m["uploads_per_user_hour"] or model["default_uploads_per_user_hour"]
    capsules = m["capsules_per_user_hour"] or model["default_capsules_per_user_hour"]
    images_needed = users * uploads / 3600 * model["peak_factor"]
    openai_rpm = users * (uploads + capsules) / 60 * model["peak_factor"]  # one call per analysis or capsule
    openai_tpm = (
        users
        * (uploads * model["analysis_tokens"] + capsules * model["capsule_tokens"])
        / 60
        * model["peak_factor"]
    )
    usable = 1 - model["openai_headroom"]
    # Keys by whichever budget binds first: with max_completion_tokens counted up front, it is tokens.
    keys = max(
        1,
        math.ceil(openai_rpm / (model["openai_rpm_per_key"] * usable)),
        math.ceil(openai_tpm / (model["openai_tpm_per_key"] * usable)),
    )
    per_worker_box = None
    if m["images_per_s_measured_box"]:
        per_worker_box = (
            m["images_per_s_measured_box"] * model["worker_box_cpus"] / model["measured_box_cpus"]
        )
    single = sized_by == SHARED
    if api_boxes is None:
        return {
            "users": users,
            "api_boxes": None,
            "openai_rpm": round(openai_rpm),
            "openai_tpm": round(openai_tpm),
            "openai_keys": keys,
        }
    # One box: everything shares it, as measured, unless the load test saw its uploads fall behind (then the
    # images queue gets a box of its own). More: workers, Redis and Postgres move to their own boxes.
    if single and m.get("shared_box_keeps_up_with_uploads") is not False:
        worker_boxes = 0
    elif per_worker_box:
        worker_boxes = math.ceil(images_needed / (per_worker_box * model["target_utilisation"]))
    else:
        worker_boxes = None
    redis = 0 if single else 3  # a Sentinel trio once the fleet outgrows the one box
    postgres = 0 if single else (1 if api_boxes <= 20 else 2)  # a replica for reads beyond 20 API boxes
    balancers = 0 if api_boxes == 1 else (1 if api_boxes <= 10 else 2)
    cost = (
        api_boxes * p["box_2cpu"]
        + (worker_boxes or 0) * p["worker_box"]
        + redis * p["redis_box"]
        + postgres * p["postgres_box"]
        + balancers * p["load_balancer"]
    )
    return {
        "users": users,
        "api_boxes": api_boxes,
        "api_boxes_sized_by": sized_by,
        "worker_boxes": worker_boxes,
        "redis_boxes": redis,
        "postgres_boxes": postgres,
        "load_balancers": balancers,
        "images_per_s_needed": round(images_needed, 2),
        "openai_rpm": round(openai_rpm),
        "openai_tpm": round(openai_tpm),
        "openai_keys": keys,
        "monthly_usd": round(cost),
    }


def original(users: int, prices: dict[str, Any]) -> dict[str, Any]:
    plan, p = prices["original_plan"], prices["prices"]
    backends = math.ceil(users / plan["users"] * plan["backends"])
    redis = plan["redis_boxes"]  # kept at the plan's three whatever the size: in the plan's favour
    balancers = max(plan["load_balancers"], math.ceil(backends / 50))
    return {
        "backends": backends,
        "backends_by_own_rule": f"{math.ceil(users / plan['users_per_backend_high'])}-"
        f"{math.ceil(users / plan['users_per_backend_low'])}",
        "redis_boxes": redis,
        "load_balancers": balancers,
        "monthly_usd": round(
            backends * p["backend_4cpu"] + redis * p["redis_box"] + balancers * p["load_balancer"]
        ),
    }


def table(users_list: list[int], m: dict[str, Any], prices: dict[str, Any]) -> str:
    measured = m["measured"] or {}
    machine = measured.get("machine", {})
    model = prices["model"]
    lines = [
        "# Capacity and cost",
        "",
        f"Measured {measured.get('started_at', 'never (run `make bench-sweep` first)')} on "
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores: **{m['users_per_box']} users per box** "
        f"({m['users_per_box_source']}); images/s per measured box: {m['images_per_s_measured_box'] or 'n/a'} "
        f"({m['jobs_source'] or 'run `make bench-jobs`'}); uploads per user-hour: "
        f"{_num(m['uploads_per_user_hour'])}, capsules per user-hour: {_num(m['capsules_per_user_hour'])} "
        f"({m['rates_source'] or 'defaults'}). Prices and parameters: bench/prices.toml "
        f"(utilisation target {model['target_utilisation']:.0%}, peak factor "
        f"{model['peak_factor']}).",
        "",
        api_sizing(m, model),
        "",
        f"| users | API boxes ({model['api_box_cpus']} CPU) | worker boxes (4 CPU) | Redis | Postgres | LB "
        "| OpenAI RPM / TPM (keys) | $/month | original plan: backends + LB + Redis | original $/month | cost ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for users in users_list:
        ours, theirs = fleet(users, m, prices), original(users, prices)
        if ours["api_boxes"] is None:
            lines.append(
                f"| {users:,} | not measured | | | | | {ours['openai_rpm']:,} / {ours['openai_tpm']:,} "
                f"({ours['openai_keys']}) | | "
                f"{theirs['backends']} + {theirs['load_balancers']} + {theirs['redis_boxes']} "
                f"| {theirs['monthly_usd']:,} | |"
            )
            continue
        ratio = theirs["monthly_usd"] / ours["monthly_usd"] if ours["monthly_usd"] else None
        lines.append(
            f"| {users:,} | {ours['api_boxes']} ({ours['api_boxes_sized_by']}) | {_num(ours['worker_boxes'])} "
            f"| {ours['redis_boxes']} | {ours['postgres_boxes']} | {ours['load_balancers']} | {ours['openai_rpm']:,} / "
            f"{ours['openai_tpm']:,} ({ours['openai_keys']}) "
            f"| {ours['monthly_usd']:,} | {theirs['backends']} (own rule {theirs['backends_by_own_rule']}) + "
            f"{theirs['load_balancers']} + {theirs['redis_boxes']} | {theirs['monthly_usd']:,} "
            f"| {f'{ratio:.1f}x' if ratio else '-'} |"
        )
    lines += [
        "",
        "One box runs everything (API, workers, Postgres, Redis, memcached), as measured, while the users fit on it at "
        "the utilisation target, unless the latest load test's upload→ready missed its target on the shared box: then "
        "the images queue gets a worker box even beside a single API box. Beyond one box, workers, Redis (Sentinel "
        "trio) and Postgres get their own boxes and the API boxes run the API alone, so they are sized by users per "
        "API core (`make bench-api`) when a usable run exists; memcached and nginx stay on the API boxes, inside the "
        "utilisation headroom. The original plan's "
        "backends scale linearly from its own 1,000-user estimate (15 backends + LB + 3 Redis); its Redis stays at "
        "three and it gets one balancer per 50 backends, both in its favour. OpenAI usage is billed per "
        "token and is the same for both; only the rate budgets are shown: keys are counted by requests and by tokens "
        "per minute (a call is charged its prompt plus max_completion_tokens when sent), less the limiter's headroom, "
        "and tokens bind first.",
    ]
    return "\n".join(lines) + "\n"


def api_sizing(m: dict[str, Any], model: dict[str, Any]) -> str:
    """The sentence saying which figure sizes API boxes beyond the one shared box, and from which run."""
    util, cpus = model["target_utilisation"], model["api_box_cpus"]
    skipped = "; ".join(f"{name}: {why}" for name, why in m.get("api_skipped") or [])
    passed_over = f" (passed over: {skipped})" if skipped else ""
    run = m.get("api_run")
    if run is None:
        return (
            f"API boxes beyond one: **fallback to users per box**, no usable `make bench-api` result{passed_over}; "
            f"each API box is planned at {m['users_per_box']} x {util:.0%} = {m['users_per_box'] * util:g} users, "
            "the figure of a box that also runs the workers, Postgres and Redis."
        )
    per_core, cpu, machine = m["users_per_api_core"], m.get("api_cpu_ms_per_request"), run["machine"]
    return (
        f"API boxes beyond one: **{per_core} users per API core** ({run['name']}, {run.get('started_at', '?')}, on "
        f"{describe(machine)}; {_num(cpu)} ms of API CPU per request at that step){passed_over}: each "
        f"{cpus}-CPU API box is planned at {per_core} x {cpus} x {util:.0%} = {per_core * cpus * util:g} users."
        f"{other_host(machine, (m['measured'] or {}).get('machine', {}))}"
    )


def other_host(api_machine: dict[str, Any], box_machine: dict[str, Any]) -> str:
    """A warning when users per API core and users per box were measured on different CPUs, else nothing."""
    if not box_machine or api_machine.get("cpu") == box_machine.get("cpu"):
        return ""
    return (
        f" That run's machine is not the one that measured users per box ({box_machine.get('cpu', '?')}): the two "
        "figures come from different hosts."
    )


def describe(machine: dict[str, Any]) -> str:
    avx = machine.get("avx512")
    extra = "" if avx is None else f", AVX-512 {'yes' if avx else 'no'}"
    return f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores{extra}"


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1000,10000,100000")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--prices", type=Path, default=PRICES)
    args = parser.parse_args(argv)
    users = [int(u) for u in args.users.replace("_", "").split(",") if u.strip()]
    prices = tomllib.loads(args.prices.read_text())
    text = table(users, measurements(args.results_dir), prices)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "capacity.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
