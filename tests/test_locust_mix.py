"""bench/locustfile.py's session mix without services: brand autocomplete typing, onboarding account ids, the
onboarding share as Locust dispatches it (one process and across --processes workers), the job poll schedule and a
job wait given up at --job-timeout.

Importing the locustfile imports Locust, which gevent-monkey-patches the whole process: what needs it runs in a
child Python (one per module, plus one more to see that another run gets other ids) and prints JSON.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bench import mix, report

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import argparse, json, random, time
from types import SimpleNamespace

import gevent
from locust.dispatch import UsersDispatcher
from locust.env import Environment
from locust.runners import WorkerNode

import bench.locustfile as mix

out = {"run_token": mix.RUN_TOKEN, "brands": mix.BRANDS, "user_base": mix.USER_BASE}

rng = random.Random(7)
out["plans"] = [(name, mix.typing_plan(name, rng)) for name in mix.BRANDS for _ in range(60)]
out["all_pauses"] = {name: mix.typing_plan(name, type("R", (), {"uniform": lambda s, a, b: 0.3})()) for name in mix.BRANDS}
out["no_pauses"] = {name: mix.typing_plan(name, type("R", (), {"uniform": lambda s, a, b: 0.2})()) for name in mix.BRANDS}

def ids(token):
    floor = mix.onboarding_floor(mix.USER_BASE, 20_000)
    return [mix.onboarding_id(floor, token, p, v) for p in range(4) for v in range(500)]
out["ids"] = ids(mix.RUN_TOKEN) + ids(mix.RUN_TOKEN + 1)
out["floor"] = mix.onboarding_floor(mix.USER_BASE, 20_000)
century = mix.RUN_TOKEN + 100 * 365 * 24 * 3600 * 10
out["late_id"] = mix.onboarding_id(out["floor"], century, (1 << mix.PROCESS_BITS) - 1, (1 << mix.VISIT_BITS) - 1)
refused = []
for process, visit in ((-1, 0), (1 << mix.PROCESS_BITS, 0), (0, 1 << mix.VISIT_BITS)):
    try:
        mix.onboarding_id(out["floor"], mix.RUN_TOKEN, process, visit)
    except ValueError:
        refused.append([process, visit])
out["refused"] = refused

out["weights"] = {f"{share}/{users}": mix.class_weights(share, users)
                  for share in (0.0, 0.001, 0.02, 0.05, 0.07, 0.5, 1.0)
                  for users in (None, 1, 7, 50, 100, 150, 999, 1000, 16000)}

def dispatched(share, users, workers):
    mix.MiniAppUser.weight, mix.OnboardingUser.weight = 49, 1
    env = Environment(user_classes=[mix.MiniAppUser, mix.OnboardingUser],
                      parsed_options=argparse.Namespace(onboarding_share=share, num_users=users))
    mix._mix(env)
    dispatcher = UsersDispatcher([WorkerNode(str(n)) for n in range(workers)], env.user_classes)
    dispatcher.new_dispatch(users, 1e9)
    final = None
    for final in dispatcher:
        pass
    counts = {}
    for per_worker in final.values():
        for name, count in per_worker.items():
            counts[name] = counts.get(name, 0) + count
    return {"classes": [c.__name__ for c in env.user_classes], "counts": counts}
out["dispatch"] = {f"{share}/{users}/{workers}": dispatched(share, users, workers)
                   for share in (0.0, 0.02, 0.1) for users in (50, 250, 1001) for workers in (1, 2, 3)}

delays, delay = [], mix.JOB_POLL_FIRST_S
for _ in range(9):
    pause, delay = mix.next_poll(delay, None)
    delays.append(pause)
out["poll_delays"] = delays
out["poll_after"] = [mix.next_poll(0.6, 5)[0], mix.next_poll(2.5, 1)[0], mix.next_poll(0.78, 0)[0]]

parsed = {}
for raw in ("10-20", "15", "1-1", "0-3", "5-2", "x", "3-y"):
    try:
        parsed[raw] = mix.photo_range(raw)
    except argparse.ArgumentTypeError:
        parsed[raw] = None
out["photo_range"] = parsed

# A queued job that never moves, given up at --job-timeout: what is recorded, how many polls, how long it took.
fired, polls = [], []
class Waiter:
    environment = SimpleNamespace(parsed_options=SimpleNamespace(job_timeout=1.2),
                                  events=SimpleNamespace(request=SimpleNamespace(fire=lambda **kw: fired.append(kw))))
    def get(self, url, name):
        polls.append((time.monotonic(), name))
        return {"id": "j1", "state": "queued", "poll_after_seconds": 5}
started = time.monotonic()
job = mix.WardrobeUser.wait_for_job(Waiter(), {"id": "j1", "state": "queued", "poll_after_seconds": None},
                                    "upload→ready", started)
out["wait"] = {"elapsed": time.monotonic() - started, "polls": [round(t - started, 2) for t, _ in polls],
               "names": sorted({n for _, n in polls}), "type": fired[0]["request_type"], "name": fired[0]["name"],
               "error": str(fired[0]["exception"]), "ms": fired[0]["response_time"], "state": job["state"]}
print(json.dumps(out))
"""


def _probe() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="session", autouse=True)
def _clean_database() -> None:
    """No database here: conftest's session fixture of this name (it truncates the test database) is not needed."""


@pytest.fixture(scope="module")
def probe() -> dict:
    return _probe()


def _queries(plan) -> list[str]:
    return [query for _gap, query in plan if query is not None]


def test_typing_a_brand_sends_only_debounced_trimmed_prefixes_and_ends_on_the_name(probe):
    for name, plan in probe["plans"]:
        assert len(plan) == len(name)
        assert plan[-1][0] is None  # no keystroke after the last
        queries = _queries(plan)
        assert queries[-1] == name.strip()
        for typed, (gap, query) in enumerate(plan, start=1):
            text = name[:typed].strip()
            if gap is not None:
                assert 0.15 <= gap <= 0.4
            if query is not None:
                assert query == text and len(query) >= 2
                assert gap is None or gap >= 0.25  # sent only when the typing paused for the debounce
            else:
                assert len(text) < 2 or gap < 0.25


def test_pauses_decide_how_many_queries_a_brand_costs(probe):
    for name in probe["brands"]:
        every = [name[:n].strip() for n in range(2, len(name) + 1)]
        assert (
            _queries(probe["all_pauses"][name]) == every
        )  # a pause after every keystroke: every prefix of 2+
        assert _queries(probe["no_pauses"][name]) == [name]  # typed without a pause: the whole name only


def test_typing_brands_usually_sends_two_to_five_queries(probe):
    counts = [len(_queries(plan)) for _name, plan in probe["plans"]]
    assert 2 <= statistics.median(counts) <= 5
    assert sum(2 <= n <= 5 for n in counts) / len(counts) >= 0.7


def test_the_typed_brands_are_the_catalogues(probe):
    catalogue = {
        line.strip()
        for line in (ROOT / "src" / "wardrobe" / "data" / "brands.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert probe["brands"] and set(probe["brands"]) <= catalogue


def test_onboarding_ids_are_new_across_visits_processes_and_runs(probe):
    ids = probe["ids"]
    assert len(set(ids)) == len(ids)
    # Above what bench/seed.py counts as the seeded population (a user there makes the next run reseed) and
    # above what run.py deletes before a run.
    assert min(ids) >= probe["floor"] >= probe["user_base"] + mix.SEEDED_ID_SPAN
    assert max(ids) < 2**63 and probe["late_id"] < 2**63  # a century on, still a signed 64-bit Telegram id
    assert probe["refused"] == [[-1, 0], [64, 0], [0, 2**20]]  # out of range is refused, never wrapped
    later = _probe()  # another Locust run starts: another run token, so none of its ids were used before
    assert later["run_token"] > probe["run_token"]
    assert not set(later["ids"][:2000]) & set(ids[:2000])


def test_the_onboarding_share_rounds_up(probe):
    weights = probe["weights"]
    assert weights["0.02/50"] == [49, 1]
    assert weights["0.02/150"] == [147, 3]
    assert weights["0.07/100"] == [93, 7]  # 0.07 x 100 is 7.000000000000001 in floating point
    assert weights["0.001/50"] == [49, 1]
    assert weights["0.02/1"] == [0, 1]
    assert weights["0.0/50"] == [1, 0]
    assert weights["1.0/7"] == [0, 7]
    assert weights["0.02/None"] == [980, 20]  # no user count yet (the web UI): per mille
    for key, (returning, onboarding) in weights.items():
        share, users = key.split("/")
        if users != "None":
            expected = mix.onboarding_users(int(users), float(share))  # what run.py records in the params
            assert (
                onboarding == expected == (math.ceil(float(share) * int(users) - 1e-9) if float(share) else 0)
            )
            if float(share):
                assert returning + onboarding == int(users)


def test_locust_dispatches_exactly_the_share_in_one_process_and_across_workers(probe):
    for key, result in probe["dispatch"].items():
        share, users, _workers = key.split("/")
        onboarding = mix.onboarding_users(int(users), float(share))
        assert result["counts"].get("OnboardingUser", 0) == onboarding, key
        assert result["counts"].get("MiniAppUser", 0) == int(users) - onboarding, key
        if onboarding == 0:
            assert result["classes"] == ["MiniAppUser"], key


def test_jobs_are_polled_as_the_mini_app_polls(probe):
    assert probe["poll_delays"] == pytest.approx([0.6, 0.78, 1.014, 1.3182, 1.71366, 2.227758, 2.5, 2.5, 2.5])
    assert probe["poll_after"] == [5, 2.5, 0.78]  # never sooner than the job's poll_after_seconds


def test_photos_per_visit_parses_n_or_n_to_m(probe):
    assert probe["photo_range"] == {
        "10-20": [10, 20],
        "15": [15, 15],
        "1-1": [1, 1],
        "0-3": None,
        "5-2": None,
        "x": None,
        "3-y": None,
    }


def test_a_job_still_queued_at_the_timeout_is_a_wait_not_an_error(probe):
    wait = probe["wait"]
    assert wait["state"] == "queued"
    assert 1.2 <= wait["elapsed"] < 1.6  # bounded by --job-timeout although the job asked for 5 s
    assert wait["polls"][0] == pytest.approx(
        0.6, abs=0.1
    )  # waitJob's first poll, then capped at the deadline
    assert wait["polls"][-1] == pytest.approx(1.2, abs=0.1) and len(wait["polls"]) == 2
    assert wait["names"] == ["/api/v1/jobs/{id}"]
    assert (wait["type"], wait["name"]) == ("JOB", "upload→ready")
    row = (1000.0, "JOB", wait["name"], wait["ms"], False, wait["error"])
    latency = report.latency([row], 999.0, 1001.0)
    assert latency["errors"]["count"] == 0  # so it fails no step of make bench or make bench-api
    assert latency["jobs_client"]["upload→ready"]["still_waiting"] == 1
