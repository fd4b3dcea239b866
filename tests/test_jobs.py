"""Background jobs end to end with real consumers, Redis, Postgres and a local OpenAI-compatible server:
upload → cutout with a transparent background → analysis → ready, and nothing lost when things die."""

import io
import signal
import time
import urllib.request

import falcon.testing
import pytest
from conftest import image_bytes, make_config, settle_unfinished_jobs, stack_env, upload
from PIL import Image, ImageDraw
from processes import RedisServer, free_port, worker
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_server import FakeOpenAI
from wardrobe.app import create_app

pytestmark = pytest.mark.slow
KEYS = ["sk-test-key-one", "sk-test-key-two"]


def shirt_photo() -> bytes:
    """A red shirt-shaped blob on a plain light background, like a phone photo of an item on a bed."""
    img = Image.new("RGB", (640, 640), (235, 235, 230))
    draw = ImageDraw.Draw(img)
    draw.polygon(
        [(200, 120), (440, 120), (560, 260), (470, 300), (450, 560), (190, 560), (170, 300), (80, 260)],
        fill=(200, 20, 30),
    )
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs")
    settle_unfinished_jobs()
    redis = RedisServer(tmp / "redis.log").start()
    fake = FakeOpenAI(keys=KEYS, latency=0.2).start()
    env = stack_env(
        tmp,
        redis.url,
        fake.url,
        KEYS,
        WARDROBE_JOB_LEASE_SECONDS=6,
        WARDROBE_REAPER_INTERVAL=1,
        WARDROBE_REAPER_GRACE=1,
    )
    metrics_ports = {"images": free_port(), "ai": free_port()}
    procs = {
        "images": worker(
            "images",
            {**env, "WARDROBE_WORKER_METRICS_BIND": f"127.0.0.1:{metrics_ports['images']}"},
            tmp / "images.log",
        ),
        "ai": worker(
            "ai",
            {**env, "WARDROBE_WORKER_METRICS_BIND": f"127.0.0.1:{metrics_ports['ai']}"},
            tmp / "ai.log",
            "--no-periodic",
        ),
    }
    config = make_config(tmp, **{k: v for k, v in env.items() if k != "WARDROBE_DATA_DIR"})
    client = falcon.testing.TestClient(create_app(config))
    state = {
        "tmp": tmp,
        "env": env,
        "procs": procs,
        "redis": redis,
        "fake": fake,
        "client": client,
        "metrics_ports": metrics_ports,
    }
    yield state
    for proc in state["procs"].values():
        proc.stop(signal.SIGINT)
    fake.stop()
    redis.stop()


def wait_job(client, headers, job_id, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.simulate_get(f"/api/v1/jobs/{job_id}", headers=headers).json
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s")


def logs(stack) -> str:
    return "\n".join(f"--- {n}\n{p.output()[-3000:]}" for n, p in stack["procs"].items())


def test_upload_becomes_a_ready_item_with_a_transparent_cutout_and_analysis(stack, user):
    client = stack["client"]
    created = upload(client, user, shirt_photo(), brand="Zara").json
    job = wait_job(client, user, created["job"]["id"])
    assert job["state"] == "succeeded", (job, logs(stack))
    item = client.simulate_get(f"/api/v1/items/{created['item']['id']}", headers=user).json
    assert item["status"] == "ready"
    assert item["source"] == "openai" and item["category"] is not None
    assert item["brand"] == "Zara"  # the user's own field is kept
    cutout = Image.open(io.BytesIO(client.simulate_get(item["cutout_url"]).content))
    assert cutout.mode == "RGBA" and max(cutout.size) <= 1024
    assert cutout.getpixel((5, 5))[3] < 30  # background removed
    assert cutout.getpixel((cutout.width // 2, cutout.height // 2))[3] > 200  # the shirt kept
    assert stack["fake"].count() >= 1


def test_user_corrections_are_never_overwritten_by_the_ai(stack, user):
    client = stack["client"]
    created = upload(client, user, image_bytes(size=(300, 300)), category="shoes").json
    wait_job(client, user, created["job"]["id"])
    item = client.simulate_get(f"/api/v1/items/{created['item']['id']}", headers=user).json
    assert item["category"] == "shoes"


def test_a_worker_killed_mid_job_does_not_lose_it(stack, user):
    client, fake = stack["client"], stack["fake"]
    fake.latency = 4.0  # the analysis is in flight when the worker dies
    try:
        created = upload(client, user, image_bytes(size=(200, 200), color=(10, 200, 10))).json
        job_id = created["job"]["id"]
        deadline = time.monotonic() + 30
        while (
            client.simulate_get(f"/api/v1/jobs/{job_id}", headers=user).json["stage"] != "analyze"
            or client.simulate_get(f"/api/v1/jobs/{job_id}", headers=user).json["state"] != "running"
        ):
            assert time.monotonic() < deadline, logs(stack)
            time.sleep(0.1)
        stack["procs"]["ai"].stop(signal.SIGKILL)
    finally:
        fake.latency = 0.2
    env = {**stack["env"], "WARDROBE_WORKER_METRICS_BIND": f"127.0.0.1:{stack['metrics_ports']['ai']}"}
    stack["procs"]["ai"] = worker("ai", env, stack["tmp"] / "ai2.log", "--no-periodic")
    job = wait_job(client, user, job_id, timeout=60)
    assert job["state"] == "succeeded", (job, logs(stack))
    assert job["attempts"] >= 2  # the lease expired and the reaper sent it again


def test_redis_down_at_upload_still_accepts_and_completes_later(stack, user):
    client, redis = stack["client"], stack["redis"]
    redis.stop()
    try:
        resp = upload(client, user, image_bytes(size=(120, 120), color=(20, 20, 200)))
        assert resp.status_code == 202
        ready = client.simulate_get("/readyz").json
        assert ready["checks"]["redis"].startswith("degraded")
    finally:
        redis.start()
    job = wait_job(client, user, resp.json["job"]["id"], timeout=60)
    assert job["state"] == "succeeded", (job, logs(stack))


def test_capsule_is_built_from_ready_items(stack, user):
    client = stack["client"]
    jobs = []
    for category, color in [("top", (250, 250, 250)), ("bottom", (20, 20, 60)), ("shoes", (0, 0, 0))]:
        jobs.append(upload(client, user, image_bytes(size=(100, 100), color=color), category=category).json)
    for created in jobs:
        assert wait_job(client, user, created["job"]["id"])["state"] == "succeeded"
    resp = client.simulate_post("/api/v1/capsules", json={"occasion": "work", "size": 1}, headers=user)
    assert resp.status_code == 202
    job = wait_job(client, user, resp.json["job"]["id"])
    assert job["state"] == "succeeded", (job, logs(stack))
    capsule = client.simulate_get(resp.headers["location"], headers=user).json
    assert capsule["state"] == "ready" and capsule["outfits"]
    owned = {c["item"]["id"] for c in jobs}
    for outfit in capsule["outfits"]:
        assert set(outfit["item_ids"]) <= owned
        assert {i["category"] for i in outfit["items"]} >= {"top", "bottom"}
    listed = client.simulate_get("/api/v1/capsules", headers=user).json["items"]
    assert listed[0]["id"] == capsule["id"]


def test_capsule_for_an_empty_wardrobe_fails_with_a_reason(stack, user):
    client = stack["client"]
    resp = client.simulate_post("/api/v1/capsules", headers=user)
    job = wait_job(client, user, resp.json["job"]["id"])
    assert job["state"] == "failed" and "add at least" in job["error"]


def test_workers_publish_job_queue_and_openai_metrics(stack, user):
    client = stack["client"]
    created = upload(client, user, image_bytes(size=(90, 90), color=(90, 30, 200))).json
    assert wait_job(client, user, created["job"]["id"])["state"] == "succeeded"
    time.sleep(1.5)  # the reaper refreshes the backlog gauges every interval

    def scrape(queue):
        port = stack["metrics_ports"][queue]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(resp.read().decode())
                for s in f.samples
            }

    ai = scrape("ai")
    succeeded = [
        v
        for (name, labels), v in ai.items()
        if name == "wardrobe_jobs_total" and ("outcome", "succeeded") in labels
    ]
    assert sum(succeeded) >= 1
    calls = [labels for (name, labels), v in ai.items() if name == "wardrobe_openai_requests_total" and v > 0]
    assert calls and all(dict(lbl)["key_alias"].startswith("key-") for lbl in calls)
    assert not any("sk-test" in str(k) for k in ai)  # aliases only, never the keys
    images = scrape("images")
    assert any(name == "wardrobe_queue_oldest_age_seconds" for name, _ in images)
    assert any(name == "wardrobe_jobs_total" and ("outcome", "advanced") in labels for name, labels in images)


def test_tasks_accept_trace_headers_added_by_an_api_with_sentry_on():
    # Sentry's Huey integration adds `sentry_headers` to messages; a worker without Sentry must still run them.
    from wardrobe import queue
    from wardrobe.clients.redis_client import connect

    tasks = queue.register(queue.build(connect("redis://127.0.0.1:6390/0")), lambda q: _Runner())
    assert tasks["analyze"].func("job-1", sentry_headers={"sentry-trace": "x"}) == "ran job-1"


class _Runner:
    def analyze(self, job_id):
        return f"ran {job_id}"
