"""The load test in small (50 users, 20 s): the whole stack starts, the scenario runs clean, results are written."""

from __future__ import annotations

import json
import os
import time

import psycopg2
import pytest

from bench import run, seed
from wardrobe.clients.images import ImageStore


@pytest.mark.slow
def test_smoke_load_run_has_no_errors_and_writes_its_results(tmp_path):
    options = run.Options(
        database="wardrobe_bench_smoke",
        data_dir=tmp_path / "data",
        results_dir=tmp_path / "results",
        population=500,
        items_per_user=40,
        upload_every=40.0,  # frequent enough that uploads and their jobs happen within 20 s
        capsule_every=60.0,
        ramp=5.0,
    )

    result = run.load("wardrobe", users=50, duration=20, name="smoke", options=options)

    written = {p.name for p in (tmp_path / "results").iterdir()}
    assert {"smoke.json", "smoke.md", "smoke.png"} <= written
    assert json.loads((tmp_path / "results" / "smoke.json").read_text())["name"] == "smoke"
    latency = result["latency"]
    assert latency["errors"]["count"] == 0, latency["errors"]["kinds"]
    assert result["stack_problems"] == []
    assert latency["overall"]["requests"] > 200
    assert latency["endpoints"]["POST /api/v1/items [upload]"]["requests"] > 0
    assert all(kind["failed"] == 0 for kind in result["jobs_db"].values())
    assert "locust" in result["processes"]["roles"]


@pytest.mark.slow
def test_steady_uploads_on_a_worker_box_are_all_ready_and_timed(tmp_path):
    from bench import jobs

    options = run.Options(
        database="wardrobe_bench_smoke", data_dir=tmp_path / "data", population=500, items_per_user=40
    )

    result = jobs.steady(users=120, upload_every=60.0, duration=8, options=options, timeout=120)

    assert result["uploads_per_s"] == 2.0
    assert result["uploads"] > 0
    assert result["ready"] == result["uploads"] and result["failed"] == 0
    assert result["stack_problems"] == []
    wait = result["upload_to_ready_s"]
    assert 0 < wait["p50"] <= wait["p95"] <= wait["max"]
    assert "worker-images" in result["processes"]["roles"]


def test_a_kept_population_is_reseeded_when_its_images_are_not_in_the_store(tmp_path):
    """A population seeded from other photo bytes (another Pillow's JPEG encoder) would make every image a 404."""
    # The smoke run's database and population shape (created and migrated if missing, kept otherwise).
    options = run.Options(database="wardrobe_bench_smoke", data_dir=tmp_path / "data", population=500)
    run.prepare_database(options)
    base = (
        seed.USER_BASE + 500_000_000
    )  # a population of its own beside the smoke run's, never overlapping it
    images = options.data_dir / "images"
    kwargs = dict(users=30, items_per_user=3, user_base=base, log=lambda _msg: None)
    seed.seed(options.dsn, images, **kwargs)
    assert seed.seed(options.dsn, images, **kwargs)["rebuilt"] == 0  # nothing changed: kept as it is
    with psycopg2.connect(options.dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE items SET image_key = %s WHERE id = (SELECT id FROM items WHERE user_id BETWEEN %s AND %s LIMIT 1)",
            ("0" * 64 + ".jpg", base, base + 29),
        )
    assert seed.seed(options.dsn, images, **kwargs)["rebuilt"] == 1
    store = ImageStore(images)
    with psycopg2.connect(options.dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT image_key, cutout_key FROM items WHERE user_id BETWEEN %s AND %s",
            (base, base + 29),
        )
        keys = cur.fetchall()
        cur.execute("DELETE FROM users WHERE id >= %s AND id < %s", (base, base + 100_000_000))
    assert keys and all(store.exists(image) and store.exists(cut) for image, cut in keys)


def test_the_driver_and_kernel_interrupts_are_not_counted_as_other_work():
    """The bench's own process is a row of its own, so "other work on the machine" means other work."""
    from bench.sampling import ProcessSampler

    sampler = ProcessSampler(dict, interval=0.1)
    first = sampler.sample()
    started = time.process_time()
    while time.process_time() - started < 0.5:  # half a CPU-second of the driver's own work
        sum(range(1000))
    last = sampler.sample()
    summary = sampler.summary(first["t"], last["t"])
    driver = summary["roles"]["bench driver"]
    assert driver["processes"] == 1
    assert driver["cpu_cores"] * summary["seconds"] >= 0.45
    assert summary["kernel_irq_share"] >= 0
    assert summary["unaccounted_share"] <= summary["machine_busy"]


def test_users_per_core_is_the_last_step_passed_before_the_first_failure():
    from bench.api_capacity import users_per_core

    steps = [
        {"users": 500, "passed": True},
        {"users": 1000, "passed": True},
        {"users": 1500, "passed": False},
    ]

    assert users_per_core(steps) == 1000
    assert users_per_core([{"users": 500, "passed": False}]) == 0


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="pins the server to core 1")
def test_bench_api_steps_the_floor_on_its_own_core_and_reads_its_cpu(tmp_path):
    """`make bench-api` in small: the floor app pinned to core 1, 20 users for 3 s."""
    from bench import api_capacity

    options = run.Options(data_dir=tmp_path / "data", population=500)

    swept = api_capacity.sweep("floor", [20], 3, options, tmp_path)

    (only,) = swept["steps"]
    assert only["passed"] and only["errors"] == 0 and only["requests"] > 0, only
    assert swept["pinned"]["api tree"] == "1" and only["affinity"]["api"] == "1"
    assert only["api_cpu_ms_per_request"] > 0
    assert swept["users_per_core"] == 20
