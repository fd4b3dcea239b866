"""What a job's owner sees when runs overlap or die: a late run whose lease expired changes nothing, a job that
kills its worker every time ends `failed` with a readable error instead of being retried forever, and with a
reaper beside every consumer each stranded job is still resent exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psycopg2
import pytest
from conftest import BOT_TOKEN, TEST_DSN, auth_header, image_bytes, make_config, upload
from processes import ROOT, RedisServer, worker

from tasks.reaper import Reaper
from tasks.stages import StageRunner
from wardrobe import queue
from wardrobe.clients.redis_client import connect
from wardrobe.store.capsules import Capsules
from wardrobe.store.db import Pool
from wardrobe.store.items import Items
from wardrobe.store.jobs import JobLedger
from wardrobe.store.users import Users

pytestmark = pytest.mark.slow


class HeldAnalyzer:
    """Answers at once, except the calls told to wait: the first run is still busy when the second starts."""

    source = "openai"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.hold_next = True

    def analyze_item(self, image: bytes) -> dict:
        hold, self.hold_next = self.hold_next, False
        if hold:
            self.release.wait(30)
            return {"category": "dress", "colors": [], "source": "openai", "run": "first"}
        return {"category": "top", "colors": [], "source": "openai", "run": "second"}


@pytest.fixture
def pool():
    built = Pool(TEST_DSN, size=4, overflow=0)
    yield built
    built.close()


def runner_for(pool, tmp_path, **kwargs) -> StageRunner:
    from wardrobe.clients.images import ImageStore

    defaults = {
        "items": Items(pool),
        "capsules": Capsules(pool),
        "users": Users(pool),
        "store": ImageStore(tmp_path / "data" / "images"),
        "ledger": JobLedger(pool),
        "send": lambda jobs, **kw: len(list(jobs)),
    }
    return StageRunner(**{**defaults, **kwargs})


def uploaded_item(tmp_path, user) -> tuple[dict, dict]:
    """An item uploaded through the API, its job left queued (no consumer runs here)."""
    import falcon.testing

    from wardrobe.app import create_app

    config = make_config(tmp_path, WARDROBE_REDIS_URL="redis://127.0.0.1:1/0")  # enqueue fails: the row stays
    client = falcon.testing.TestClient(create_app(config))
    answer = upload(client, user, image_bytes(size=(120, 120))).json
    return answer["item"], answer["job"]


def at_stage(job_id: str, stage: str) -> None:
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE jobs SET stage = %s, state = 'queued', run_after = now() - interval '1 second' WHERE id = %s",
            (stage, job_id),
        )


def row(sql: str, *args) -> tuple:
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def overlapping_runs(runner: StageRunner, analyzer: HeldAnalyzer, job: dict) -> tuple[str, str]:
    """A first run that outlives its 1 s lease, a second that takes the job over and finishes, then the first
    finishing late: the two outcomes, first run's first."""
    outcomes = {}
    first = threading.Thread(target=lambda: outcomes.setdefault("first", runner.analyze(job["id"])))
    first.start()
    deadline = time.monotonic() + 10
    while row("SELECT state FROM jobs WHERE id = %s", job["id"])[0] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.2)  # the first run's lease expires while it waits for its analysis
    second = runner.analyze(job["id"])
    analyzer.release.set()
    first.join(30)
    return outcomes["first"], second


def test_a_late_run_whose_lease_expired_changes_nothing(pool, tmp_path, user, caplog):
    item, job = uploaded_item(tmp_path, user)
    at_stage(job["id"], "analyze")
    analyzer = HeldAnalyzer()
    assert overlapping_runs(
        runner_for(pool, tmp_path, analyzer=analyzer, lease_seconds=1), analyzer, job
    ) == (
        "superseded",
        "succeeded",
    )
    state = row("SELECT state FROM jobs WHERE id = %s", job["id"])[0]
    status, category, analysis = row("SELECT status, category, analysis FROM items WHERE id = %s", item["id"])
    assert state == "succeeded" and status == "ready"
    assert category == "top" and analysis["run"] == "second"  # the newer run's result stands
    assert "its result is dropped" in caplog.text


def test_a_late_run_that_fails_does_not_fail_the_finished_job(pool, tmp_path, user):
    item, job = uploaded_item(tmp_path, user)
    at_stage(job["id"], "analyze")

    class FailsWhenReleased(HeldAnalyzer):
        def analyze_item(self, image):
            hold, self.hold_next = self.hold_next, False
            if hold:
                self.release.wait(30)
                raise RuntimeError("the first run's connection broke")
            return {"category": "top", "colors": [], "source": "openai"}

    analyzer = FailsWhenReleased()
    runner = runner_for(pool, tmp_path, analyzer=analyzer, lease_seconds=1)
    # The first run's retry would have sent the finished job back to the queue.
    assert overlapping_runs(runner, analyzer, job) == ("superseded", "succeeded")
    assert row("SELECT state FROM jobs WHERE id = %s", job["id"])[0] == "succeeded"
    assert row("SELECT status FROM items WHERE id = %s", item["id"])[0] == "ready"


def test_analysis_with_redis_away_waits_without_using_an_attempt_or_logging_a_traceback(
    pool, tmp_path, user, caplog
):
    from tasks.analysis.ai import LimiterUnavailable

    item, job = uploaded_item(tmp_path, user)
    at_stage(job["id"], "analyze")

    class LimiterDown:
        source = "openai"

        def analyze_item(self, image):
            raise LimiterUnavailable(
                "limiter_unavailable", "Error 111 connecting to 127.0.0.1:6379. Connection refused."
            )

    sent = []
    runner = runner_for(
        pool, tmp_path, analyzer=LimiterDown(), send=lambda jobs, **kw: sent.append((list(jobs), kw)) or 1
    )
    caplog.set_level("INFO")
    assert runner.analyze(job["id"]) == "retrying"
    state, attempts, error = row("SELECT state, attempts, error FROM jobs WHERE id = %s", job["id"])
    assert state == "queued" and "limiter_unavailable" in error
    assert attempts == 0  # the wait for Redis did not count against the job's attempts
    assert sent and sent[0][1]["delay"] > 0  # sent again later, not at once
    assert all(not r.exc_info for r in caplog.records), caplog.text  # a dependency outage, not a bug
    # Redis back: the job runs to the end.
    at_stage(job["id"], "analyze")
    analyzer = HeldAnalyzer()
    analyzer.hold_next = False
    assert runner_for(pool, tmp_path, analyzer=analyzer).analyze(job["id"]) == "succeeded"
    assert row("SELECT status FROM items WHERE id = %s", item["id"])[0] == "ready"


# A worker process that claims the cutout and then dies as a native crash or the OOM killer would end it.
_KILLING_RUN = """
import os, signal, sys
from wardrobe.clients.images import ImageStore
from wardrobe.store.capsules import Capsules
from wardrobe.store.db import Pool
from wardrobe.store.items import Items
from wardrobe.store.jobs import JobLedger
from wardrobe.store.users import Users
from tasks.stages import StageRunner

class Crash:
    def cutout(self, data):
        os.kill(os.getpid(), signal.SIGKILL)

pool = Pool(sys.argv[1], size=1, overflow=0)
runner = StageRunner(items=Items(pool), capsules=Capsules(pool), users=Users(pool), store=ImageStore(sys.argv[3]),
                     ledger=JobLedger(pool), send=lambda jobs, **kw: 0, remover=Crash(), lease_seconds=1)
print(runner.cutout(sys.argv[2]), flush=True)
"""


def killing_run(job_id: str, images) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _KILLING_RUN, TEST_DSN, job_id, str(images)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_job_that_kills_its_worker_every_time_fails_with_a_readable_error(pool, tmp_path, user):
    item, job = uploaded_item(tmp_path, user)
    max_attempts = row("SELECT max_attempts FROM jobs WHERE id = %s", job["id"])[0]
    images = tmp_path / "data" / "images"
    for attempt in range(1, max_attempts + 1):
        done = killing_run(job["id"], images)
        assert done.returncode == -9, done.stderr  # the worker died on the job
        assert row("SELECT attempts FROM jobs WHERE id = %s", job["id"])[0] == attempt
        time.sleep(1.1)  # its lease runs out, as the reaper would find it

    # The cap holds: nobody claims it again, and the reaper fails it instead of resending it forever.
    again = killing_run(job["id"], images)
    assert again.returncode == 0 and again.stdout.strip() == "skipped", again.stderr
    redis = RedisServer(tmp_path / "redis.log").start()
    try:
        client = connect(redis.url)
        items, capsules = Items(pool), Capsules(pool)
        sent = []
        reaper = Reaper(
            JobLedger(pool),
            lambda jobs, **kw: sent.extend(str(j["id"]) for j in jobs) or len(sent),
            client,
            interval=1,
            grace=0,
            stale=300,
            give_up=lambda job, error: (items if job["item_id"] else capsules).job_failed(job, error),
        )
        reaper.sweep()
    finally:
        redis.stop()
    assert job["id"] not in sent
    state, error, attempts = row("SELECT state, error, attempts FROM jobs WHERE id = %s", job["id"])
    assert state == "failed" and attempts == max_attempts
    assert f"gave up after {max_attempts} attempts: the worker running it died" in error
    assert row("SELECT status FROM items WHERE id = %s", item["id"])[0] == "failed"
    # What the owner polls says so.
    headers = user
    import falcon.testing

    from wardrobe.app import create_app

    client = falcon.testing.TestClient(create_app(make_config(tmp_path)))
    answer = client.simulate_get(f"/api/v1/jobs/{job['id']}", headers=headers).json
    assert answer["state"] == "failed" and "died" in answer["error"]


def test_with_a_reaper_beside_every_consumer_each_stranded_job_is_resent_once(tmp_path):
    redis = RedisServer(tmp_path / "redis.log").start()
    user = auth_header(7_000_000_000 + int(time.time() * 1000) % 1_000_000)
    stranded = []
    env = {
        "WARDROBE_DATABASE_URL": TEST_DSN,
        "WARDROBE_DATA_DIR": str(tmp_path / "data"),
        "WARDROBE_TELEGRAM_BOT_TOKEN": BOT_TOKEN,
        "WARDROBE_REDIS_URL": redis.url,
        "WARDROBE_REAPER_INTERVAL": "0.5",
        "WARDROBE_REAPER_GRACE": "0",
        "WARDROBE_PROFILE_HZ": "0",
    }
    consumers = []
    try:
        # Committed while Redis was down: the rows exist, no message does.
        for _ in range(6):
            _item, job = uploaded_item(tmp_path, user)
            stranded.append(job["id"])
        # Two ai consumers, each with its reaper; no images consumer, so the resent cutouts stay in Redis.
        consumers = [worker("ai", env, tmp_path / f"ai{i}.log") for i in range(2)]
        hueys = queue.build(connect(redis.url))
        queue.register(hueys)  # to read the messages back
        deadline = time.monotonic() + 30
        pending: list[str] = []
        while time.monotonic() < deadline:
            pending = [t.args[0] for t in hueys["images"].pending()]
            if set(stranded) <= set(pending):
                break
            time.sleep(0.2)
        time.sleep(2.5)  # five more reaper intervals on each consumer
        pending = [t.args[0] for t in hueys["images"].pending()]
    finally:
        logs = "\n".join(c.output()[-2000:] for c in consumers)
        for consumer in consumers:
            consumer.stop()
        redis.stop()
    mine = [job_id for job_id in pending if job_id in stranded]
    assert sorted(mine) == sorted(stranded), (json.dumps(pending), logs)  # each once, none twice


def test_a_waiting_upload_is_told_how_many_cutouts_are_ahead_and_when_its_own_may_be_done(tmp_path, user):
    import falcon.testing
    from conftest import settle_unfinished_jobs

    from wardrobe.app import create_app

    settle_unfinished_jobs()
    client = falcon.testing.TestClient(
        create_app(make_config(tmp_path, WARDROBE_REDIS_URL="redis://127.0.0.1:1/0"))
    )
    jobs = [upload(client, user, image_bytes(size=(90, 90), color=(i, 9, 9))).json["job"] for i in range(3)]
    # Two uploads of another user were cut out a moment ago: the rate the estimate goes by.
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE jobs SET stage = 'analyze', state = 'succeeded', run_after = now() WHERE id = ANY(%s::uuid[])",
            ([jobs[0]["id"], jobs[1]["id"]],),
        )
    later = upload(client, user, image_bytes(size=(90, 90), color=(3, 9, 9))).json["job"]

    answer = client.simulate_get(f"/api/v1/jobs/{later['id']}", headers=user).json
    queue = answer["queue"]
    assert queue["ahead"] == 1  # the third upload still waits; the first two are done
    assert queue["cutouts_per_minute"] > 0
    assert queue["estimate_seconds"] == round(2 / (queue["cutouts_per_minute"] / 60))
    done = client.simulate_get(f"/api/v1/jobs/{jobs[0]['id']}", headers=user).json
    assert done["queue"] is None  # past its cutout: nothing to wait for
    # A long wait means: ask again later, not every second (a quarter of the estimate, 1..30 s).
    assert answer["poll_after_seconds"] == max(1, min(30, round(queue["estimate_seconds"] / 4)))
    assert done["poll_after_seconds"] is None
