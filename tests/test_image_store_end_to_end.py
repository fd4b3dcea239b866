"""Images in a shared bucket, end to end: the API (gunicorn) and the consumers on separate local roots (each its own
WARDROBE_DATA_DIR, so nothing passes through a shared disk) with WARDROBE_IMAGE_STORE=s3://... on moto's S3 server.
An upload becomes a ready item whose cutout the API serves from the bucket; the store down at upload is a clean
503 that leaves nothing behind; the store hanging during a cutout is retried until it answers again."""

from __future__ import annotations

import io
import json
import random
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest
from conftest import TEST_DSN, auth_header, image_bytes, multipart, server_env, settle_unfinished_jobs
from PIL import Image
from processes import ROOT, RedisServer, gunicorn, worker

from tests.fakes.s3_server import S3Server

pytestmark = pytest.mark.slow
BUCKET = "wardrobe-fleet"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image-store-e2e")
    settle_unfinished_jobs()
    s3 = S3Server(tmp / "moto.log").start()
    s3.create_bucket(BUCKET)
    redis = RedisServer(tmp / "redis.log").start()
    shared = {
        "WARDROBE_REDIS_URL": redis.url,
        "WARDROBE_MEMCACHED_SERVERS": "",
        "WARDROBE_OPENAI_API_KEYS": "",
        "WARDROBE_U2NET_HOME": str(ROOT / "var" / "models"),
        "WARDROBE_REAPER_INTERVAL": "1",
        "WARDROBE_REAPER_GRACE": "1",
        "WARDROBE_RATE_LIMIT_UPLOAD": "1000/60",
        # A hung store is given up on within seconds, not botocore's 60 s.
        "WARDROBE_S3_CONNECT_TIMEOUT": "1",
        "WARDROBE_S3_READ_TIMEOUT": "1.5",
        "WARDROBE_S3_MAX_ATTEMPTS": "2",
        **s3.env(BUCKET),
    }
    roots = {"api": tmp / "api", "workers": tmp / "workers"}
    api_env = server_env(roots["api"], **shared)
    worker_env = server_env(roots["workers"], **shared)
    state = {"s3": s3, "redis": redis, "roots": roots, "worker_env": worker_env, "tmp": tmp, "procs": {}}
    state["procs"]["ai"] = worker("ai", worker_env, tmp / "ai.log", "--no-periodic")
    state["procs"]["images"] = worker("images", worker_env, tmp / "images.log")
    try:
        api, state["base"] = gunicorn(api_env, tmp / "api.log", workers=1)
        state["procs"]["api"] = api
        yield state
    finally:
        for proc in state["procs"].values():
            proc.stop(signal.SIGINT)
        redis.stop()
        s3.stop()


def logs(fleet) -> str:
    parts = [f"--- {name}\n{proc.tail()}" for name, proc in fleet["procs"].items()]
    return "\n".join([*parts, f"--- moto\n{fleet['s3'].process.tail(1500) if fleet['s3'].process else ''}"])


def request(base: str, method: str, path: str, headers: dict, body: bytes | None = None):
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def post_photo(fleet, headers: dict, color=(200, 30, 30)):
    body, ctype = multipart({"image": ("shirt.jpg", image_bytes(size=(160, 160), color=color), "image/jpeg")})
    return request(fleet["base"], "POST", "/api/v1/items", {**headers, "Content-Type": ctype}, body)


def job_row(job_id: str) -> tuple[str, str | None, int]:
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute("SELECT state, error, attempts FROM jobs WHERE id = %s", (job_id,))
        return cur.fetchone()


def wait_for(fleet, what: str, ready, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout}s\n{logs(fleet)}")


def finished(job_id: str):
    state, error, _ = job_row(job_id)
    return (state, error) if state in ("succeeded", "failed") else None


def no_local_images(fleet) -> list[Path]:
    return [p for root in fleet["roots"].values() for p in root.rglob("*") if p.suffix in (".jpg", ".png")]


def test_an_upload_becomes_a_ready_item_whose_cutout_any_backend_serves_from_the_bucket(fleet):
    user = auth_header(random.randint(10**12, 2 * 10**12))
    status, _, body = post_photo(fleet, user)
    assert status == 202, (body, logs(fleet))
    created = json.loads(body)
    assert wait_for(fleet, "the job", lambda: finished(created["job"]["id"])) == ("succeeded", None)

    status, _, body = request(fleet["base"], "GET", f"/api/v1/items/{created['item']['id']}", user)
    item = json.loads(body)
    assert status == 200 and item["status"] == "ready" and item["cutout_url"].startswith("/images/"), item
    status, headers, cutout = request(fleet["base"], "GET", item["cutout_url"], {})
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert Image.open(io.BytesIO(cutout)).mode == "RGBA"
    # The worker wrote the cutout to the bucket, the API read it from there: neither root holds an image.
    key = item["cutout_url"].removeprefix("/images/")
    stored = fleet["s3"].client().get_object(Bucket=BUCKET, Key=f"images/{key}")
    assert stored["Body"].read() == cutout and stored["ContentType"] == "image/png"
    assert no_local_images(fleet) == []


def test_the_store_hanging_during_a_cutout_is_retried_and_the_job_completes_once_it_is_back(fleet):
    fleet["procs"]["images"].stop(signal.SIGINT)  # so that the cutout starts only once the store hangs
    user = auth_header(random.randint(10**12, 2 * 10**12))
    status, _, body = post_photo(fleet, user, color=(20, 120, 40))
    assert status == 202, (body, logs(fleet))
    job_id = json.loads(body)["job"]["id"]
    fleet["s3"].freeze()
    try:
        fleet["procs"]["images"] = worker("images", fleet["worker_env"], fleet["tmp"] / "images-2.log")
        state, error, _ = wait_for(
            fleet,
            "a retry on the store's outage",
            lambda: (row := job_row(job_id))[1] and "image store unavailable" in row[1] and row,
        )
        assert state in ("queued", "running"), (state, error)
    finally:
        fleet["s3"].thaw()
    assert wait_for(fleet, "the job", lambda: finished(job_id)) == ("succeeded", None)
    # The outage used up none of the job's attempts: each run that met it gave its attempt back.
    assert job_row(job_id)[2] <= 2


def test_the_store_down_at_upload_is_a_503_with_retry_after_and_nothing_half_created(fleet):
    user_id = random.randint(10**12, 2 * 10**12)
    fleet["s3"].stop()
    try:
        status, headers, body = post_photo(fleet, auth_header(user_id))
        assert status == 503, (status, body, logs(fleet))
        assert headers["Retry-After"] == "5" and json.loads(body)["title"] == "Service Unavailable"
        with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT (SELECT count(*) FROM items WHERE user_id = %s), "
                "(SELECT count(*) FROM jobs WHERE user_id = %s)",
                (user_id, user_id),
            )
            assert cur.fetchone() == (0, 0)
        status, _, body = request(fleet["base"], "GET", "/readyz", {})
        assert json.loads(body)["checks"]["images"] == "degraded: StoreUnavailable", body
    finally:
        fleet["s3"].start()
