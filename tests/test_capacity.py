"""The capacity model turns measurements into a fleet: boxes by users per box and images/s, keys by RPM and TPM."""

import json
import tomllib

from bench import capacity

PRICES = tomllib.loads(capacity.PRICES.read_text())


def measured(**overrides):
    base = {
        "users_per_box": 1500,
        "uploads_per_user_hour": 6.0,
        "capsules_per_user_hour": 4.0,
        "images_per_s_measured_box": 3.6,
        "shared_box_keeps_up_with_uploads": True,
    }
    return {**base, **overrides}


def test_keys_are_counted_by_tokens_when_tokens_bind_first():
    fleet = capacity.fleet(1000, measured(), PRICES)

    model = PRICES["model"]
    usable = 1 - model["openai_headroom"]
    # 1,000 users x (6 analyses + 4 capsules) an hour, doubled for the peak: ~333 RPM, one key's worth...
    assert fleet["openai_rpm"] < model["openai_rpm_per_key"] * usable
    # ...but every call is charged its max_completion_tokens up front, so tokens need more keys.
    assert fleet["openai_tpm"] > model["openai_tpm_per_key"] * usable
    assert fleet["openai_keys"] * model["openai_tpm_per_key"] * usable >= fleet["openai_tpm"]
    assert fleet["openai_keys"] > 1


def test_one_box_runs_everything_only_when_it_kept_up_with_uploads():
    kept_up = capacity.fleet(1000, measured(), PRICES)
    fell_behind = capacity.fleet(1000, measured(shared_box_keeps_up_with_uploads=False), PRICES)

    assert kept_up["api_boxes"] == fell_behind["api_boxes"] == 1
    assert kept_up["worker_boxes"] == 0
    assert fell_behind["worker_boxes"] == 1
    assert fell_behind["monthly_usd"] == kept_up["monthly_usd"] + PRICES["prices"]["worker_box"]


def test_a_larger_fleet_sizes_worker_boxes_by_measured_images_per_second():
    fleet = capacity.fleet(100_000, measured(), PRICES)

    model = PRICES["model"]
    per_box = 3.6 * model["worker_box_cpus"] / model["measured_box_cpus"] * model["target_utilisation"]
    assert fleet["worker_boxes"] * per_box >= fleet["images_per_s_needed"]
    assert (fleet["worker_boxes"] - 1) * per_box < fleet["images_per_s_needed"]
    assert fleet["api_boxes"] == -(-100_000 // int(1500 * model["target_utilisation"]))


# ------------------------------------------------------------------ API boxes from `make bench-api`'s users per core

XEON = {"cpu": "Intel(R) Xeon(R) Processor", "cores": 2, "avx512": True}
EPYC = {"cpu": "AMD EPYC", "cores": 2}


def compare_run(users_per_box=1500):
    return {
        "name": "compare-20261125-002850",
        "kind": "compare",
        "started_at": "2026-11-25T00:45:06+00:00",
        "machine": EPYC,
        "users_per_box": users_per_box,
    }


def api_run(name, started_at, users_per_api_core, other_work=0.02, machine=XEON):
    """A bench-api result as bench/api_capacity.py writes it: the API passes up to `users_per_api_core`, then fails."""
    passed = [
        {"users": u, "passed": True, "api_cpu_ms_per_request": 1.062, "other_work_share": other_work}
        for u in (250, 500, 750, 1000)
        if u <= users_per_api_core
    ]
    failed = {"users": users_per_api_core + 250, "passed": False, "api_cpu_ms_per_request": 1.3}
    return {
        "name": name,
        "kind": "api_capacity",
        "started_at": started_at,
        "machine": machine,
        "targets": {"api": {"steps": [*passed, {**failed, "other_work_share": other_work}]}},
        "users_per_api_core": users_per_api_core,
    }


def report(tmp_path, *runs, users="1000,100000"):
    """`make capacity` over a results dir holding `runs`: what it writes to capacity.md."""
    for run in runs:
        (tmp_path / f"{run['name']}.json").write_text(json.dumps(run))
    assert capacity.main(["--users", users, "--results-dir", str(tmp_path)]) == 0
    return (tmp_path / "capacity.md").read_text()


def api_boxes(text, users):
    """The API boxes cell of the row for `users`."""
    row = next(line for line in text.splitlines() if line.startswith(f"| {users:,} |"))
    return row.split("|")[2].strip()


def test_api_boxes_beyond_one_are_sized_by_users_per_api_core(tmp_path):
    text = report(tmp_path, compare_run(), api_run("api-20261202-014339", "2026-12-02T01:43:39+00:00", 500))

    # 1,000 users fit on the one box that runs everything (1,500 x 70 %); 100,000 need API boxes of
    # 500 users a core x 2 cores x 70 % = 700 users, not the shared box's 1,050.
    assert api_boxes(text, 1000) == "1 (one box for all)"
    assert api_boxes(text, 100_000) == "143 (users per API core)"
    assert "**500 users per API core** (api-20261202-014339, 2026-12-02T01:43:39+00:00" in text
    assert "Intel(R) Xeon(R) Processor, 2 cores" in text
    assert "1.06 ms of API CPU per request" in text
    assert "500 x 2 x 70% = 700 users" in text
    assert "fallback" not in text
    # The API figure comes from another host than the shared box's: the report says so.
    assert "different hosts" in text


def test_without_a_bench_api_run_api_boxes_fall_back_to_users_per_box(tmp_path):
    text = report(tmp_path, compare_run())

    assert api_boxes(text, 1000) == "1 (one box for all)"
    assert api_boxes(text, 100_000) == "96 (users per box, fallback)"  # 100,000 / 1,050
    assert "**fallback to users per box**, no usable `make bench-api` result;" in text


def test_a_contaminated_or_failed_bench_api_run_is_passed_over_for_an_older_clean_one(tmp_path):
    text = report(
        tmp_path,
        compare_run(),
        api_run("api-20261201-120000", "2026-12-01T12:00:00+00:00", 250),
        api_run("api-20261202-011652", "2026-12-02T01:16:52+00:00", 1000, other_work=0.27),
        api_run("api-20261202-012400", "2026-12-02T01:24:00+00:00", 0),
    )

    assert api_boxes(text, 100_000) == "286 (users per API core)"  # 250 x 2 x 70 % = 350 users a box
    assert "**250 users per API core** (api-20261201-120000" in text
    assert "api-20261202-011652: contaminated" in text
    assert "api-20261202-012400: the API passed no step" in text


def test_with_only_contaminated_bench_api_runs_the_report_names_the_fallback_and_why(tmp_path):
    text = report(
        tmp_path,
        compare_run(),
        api_run("api-20261202-014339", "2026-12-02T01:43:39+00:00", 500, other_work=0.2),
    )

    assert api_boxes(text, 100_000) == "96 (users per box, fallback)"
    assert "**fallback to users per box**" in text
    assert "api-20261202-014339: contaminated" in text


def test_outgrowing_the_shared_box_moves_redis_and_postgres_out_even_if_one_api_box_carries_everyone(
    tmp_path,
):
    text = report(
        tmp_path,
        compare_run(users_per_box=1000),
        api_run("api-20261203-000000", "2026-12-03T00:00:00+00:00", 1000, machine=EPYC),
        users="1200",
    )

    row = next(line for line in text.splitlines() if line.startswith("| 1,200 |")).split("|")
    # 1,200 users are more than the shared box's 700 but fewer than one API box's 1,400: one API box, no balancer,
    # and Redis (a Sentinel trio) and Postgres on boxes of their own.
    api, _workers, redis, postgres, balancers = (cell.strip() for cell in row[2:7])
    assert (api, redis, postgres, balancers) == ("1 (users per API core)", "3", "1", "0")
    assert "different hosts" not in text
