"""The floor bench's arithmetic: what the API may spend per request once everything else on the box is paid."""

import pytest

from bench import floor

# The synthetic load run's CPU by role, in cores: 0.62 of it per-request work besides the API's, 0.3 the images'.
CORES = {"api": 0.6, "locust": 0.2, "postgres (shared)": 0.1, "memcached": 0.02, "worker-images": 0.3}


def load_run(**roles):
    cores = {**CORES, **roles}
    return {
        "name": "synthetic-1000u",
        "started_at": "2026-11-25T00:00:00+00:00",
        "params": {"users": 1000, "cutout_precision": "f32"},
        "latency": {
            "overall": {"rps": 500.0},
            "endpoints": {floor.UPLOAD: {"rps": 2.0}},
        },
        "processes": {
            "cores": 2,
            "kernel_irq_share": 0.0,
            "roles": {role: {"cpu_cores": c} for role, c in cores.items()},
        },
    }


def test_other_work_scales_with_users_and_the_api_gets_what_is_left():
    budget = floor.budget(load_run(), {"same": 1000, "double": 2000})

    same, double = budget["targets"]["same"], budget["targets"]["double"]
    # At the measured load the API gets what it was not using: 2 cores - 0.62 per-request work - 0.3 images.
    assert same["other_cores"] == pytest.approx(0.62)
    assert same["api_ms_per_request_allowed"] == pytest.approx((2 - 0.62) / 500 * 1000)
    assert budget["api_ms_per_request_measured"] == pytest.approx(0.6 / 500 * 1000)
    # Twice the users: twice the requests, twice the uploads, twice the other work.
    assert double["rps"] == 1000 and double["uploads_per_s"] == 4.0
    assert double["other_cores"] == pytest.approx(1.24)
    assert double["api_ms_per_request_allowed"] == pytest.approx((2 - 1.24) / 1000 * 1000)


def test_no_allowance_when_other_work_alone_fills_the_box():
    budget = floor.budget(load_run(), {"far": 4000})

    target = budget["targets"]["far"]
    assert target["other_cores"] > 2
    assert target["api_ms_per_request_allowed"] == 0.0


def test_the_report_says_no_where_the_allowance_is_under_the_floor():
    result = {
        "started_at": "2026-11-25T00:00:00+00:00",
        "machine": {"cpu": "test", "cores": 2},
        "rounds": 1,
        "seconds": 1.0,
        "connections": 10,
        "floor": {
            "variants": {
                "gevent": {
                    "median_cpu_ms_per_request": 1.0,
                    "range": [1.0, 1.0],
                    "median_rps": 1.0,
                    "failed": 0,
                },
                "gevent-pywsgi": {
                    "median_cpu_ms_per_request": 0.4,
                    "range": [0.4, 0.4],
                    "median_rps": 1.0,
                    "failed": 0,
                },
            },
            "pywsgi_over_gevent": {"median": 0.8, "range": [0.8, 0.8]},
        },
        "budgets": [floor.budget(load_run(), {"near": 1000, "far": 2000})],
    }

    rows = {
        line.split(" | ")[0]: line for line in floor.markdown(result).splitlines() if line.startswith("| ")
    }
    assert "| yes" in rows["| near"]  # 2.76 ms allowed over a 1 ms floor
    assert "**no**" in rows["| far"]  # 0.76 ms allowed, under it


def test_the_baseline_is_taken_from_the_compare_nearest_in_time_to_the_load_run():
    compares = [
        {"name": "yesterday", "started_at": "2026-11-24T23:12:00+00:00", "baseline_users_per_box": 300},
        {"name": "today", "started_at": "2026-11-25T01:38:00+00:00", "baseline_users_per_box": 150},
    ]

    assert floor.nearest(compares, "2026-11-25T01:17:30+00:00")["name"] == "today"
    assert floor.nearest(compares, "2026-11-24T23:41:47+00:00")["name"] == "yesterday"
    assert floor.nearest([], "2026-11-25T01:17:30+00:00") is None
