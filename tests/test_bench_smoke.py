"""The load test in small (50 users, 20 s): the whole stack starts, the scenario runs clean, results are written."""

from __future__ import annotations

import json

import pytest

from bench import run


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
