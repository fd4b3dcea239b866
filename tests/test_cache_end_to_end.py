"""Caching at every level, the slow brand API, and per-user limits, as a client and an operator notice them."""

import http.client
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import falcon.testing
import psycopg2
import pytest
from conftest import BOT_TOKEN, TEST_DSN, auth_header, image_bytes, make_config, upload
from processes import Memcached, free_port, gunicorn
from pymemcache.client.base import Client as MemcacheClient

from tests.fakes.brand_server import BrandServer
from wardrobe.app import create_app
from wardrobe.store.db import Pool
from wardrobe.store.items import Items
from wardrobe.store.jobs import JobLedger


@pytest.fixture(scope="module")
def memcached():
    server = Memcached(free_port()).start()
    yield server
    server.kill()


# Where list reads take the wardrobe version: Postgres (the default), or memcached kept for 300 s.
@pytest.fixture(params=["0", "300"], ids=["version-from-postgres", "version-from-memcached"])
def cached_app(request, tmp_path, memcached):
    def make(**overrides):
        overrides.setdefault("WARDROBE_VERSION_CACHE_TTL", request.param)
        config = make_config(tmp_path, WARDROBE_MEMCACHED_SERVERS=memcached.server, **overrides)
        return falcon.testing.TestClient(create_app(config))

    return make


def test_a_write_is_visible_at_once_through_another_backend_sharing_the_cache(cached_app, user):
    backend_a, backend_b = cached_app(), cached_app()
    item = upload(backend_a, user, image_bytes(), notes="blue").json["item"]
    first = backend_b.simulate_get("/api/v1/items", headers=user).json["items"]
    assert [i["notes"] for i in first] == ["blue"]
    # Change the row behind the API's back (no version bump): backend B keeps serving its cached page,
    # which proves the page really comes from the cache...
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute("UPDATE items SET notes = 'sneaky' WHERE id = %s", (item["id"],))
    assert backend_b.simulate_get("/api/v1/items", headers=user).json["items"][0]["notes"] == "blue"
    # ...and a write through backend A (which bumps the version) is seen by B on the very next request.
    backend_a.simulate_patch(f"/api/v1/items/{item['id']}", json={"notes": "green"}, headers=user)
    assert backend_b.simulate_get("/api/v1/items", headers=user).json["items"][0]["notes"] == "green"


def test_every_write_path_is_seen_at_once_by_a_backend_holding_a_cached_page(cached_app, user):
    backend_a, backend_b = cached_app(), cached_app()
    item = upload(backend_a, user, image_bytes(), notes="one").json["item"]

    def seen_by_b() -> list[tuple[str, str]]:
        page = backend_b.simulate_get("/api/v1/items", headers=user).json["items"]
        return [(i["notes"], i["status"]) for i in page]

    assert seen_by_b() == [("one", "processing")]
    upload(backend_a, user, image_bytes(color=(5, 6, 7)), notes="two")
    assert seen_by_b() == [("two", "processing"), ("one", "processing")]
    backend_a.simulate_delete(f"/api/v1/items/{item['id']}", headers=user)
    assert seen_by_b() == [("two", "processing")]
    backend_a.simulate_patch("/api/v1/me", json={"style": ["casual"]}, headers=user)
    capsules = backend_b.simulate_get("/api/v1/capsules", headers=user)
    backend_a.simulate_post("/api/v1/capsules", json={"occasion": "work"}, headers=user)
    again = backend_b.simulate_get(
        "/api/v1/capsules", headers={**user, "If-None-Match": capsules.headers["etag"]}
    )
    assert again.status_code == 200 and len(again.json["items"]) == len(capsules.json["items"]) + 1


def test_a_workers_result_is_seen_at_once_by_a_backend_holding_a_cached_page(tmp_path, cached_app, user):
    from tasks.work import version_cache

    backend_a, backend_b = cached_app(), cached_app()
    uploaded = upload(backend_a, user, image_bytes()).json
    assert [i["status"] for i in backend_b.simulate_get("/api/v1/items", headers=user).json["items"]] == [
        "processing"
    ]
    # What a worker's runtime does (tasks/work.py), minus the cutout and the model.
    config = backend_a.app.services.config
    pool = Pool(TEST_DSN, size=2, overflow=0)
    versions = version_cache(config)
    items, ledger = Items(versions.publishing(pool) if versions else pool), JobLedger(pool)
    try:
        job = ledger.claim(uploaded["job"]["id"], "cutout", 60)
        row = items.for_job(job["item_id"])
        assert items.cutout_done(row, job, "0" * 64 + ".png")
        assert backend_b.simulate_get("/api/v1/items", headers=user).json["items"][0]["cutout_url"]
        job = ledger.claim(uploaded["job"]["id"], "analyze", 60)
        assert items.analysis_done(row, job, {"category": "top", "colors": ["red"]}, {"source": "test"})
        page = backend_b.simulate_get("/api/v1/items", headers=user).json["items"]
        assert [(i["status"], i["category"]) for i in page] == [("ready", "top")]
    finally:
        pool.close()


def test_reads_stay_fresh_when_memcached_forgets_the_version(cached_app, memcached, user):
    backend_a, backend_b = cached_app(), cached_app()
    item = upload(backend_a, user, image_bytes(), notes="before").json["item"]
    assert backend_b.simulate_get("/api/v1/items", headers=user).json["items"][0]["notes"] == "before"
    MemcacheClient(("127.0.0.1", memcached.port)).flush_all(noreply=False)  # evicted, restarted, ...
    backend_a.simulate_patch(f"/api/v1/items/{item['id']}", json={"notes": "after"}, headers=user)
    assert backend_b.simulate_get("/api/v1/items", headers=user).json["items"][0]["notes"] == "after"


def test_etag_round_trip_and_cache_headers(cached_app, user):
    client = cached_app()
    upload(client, user, image_bytes())
    first = client.simulate_get("/api/v1/items", headers=user)
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    assert first.headers["vary"] == "Authorization"
    again = client.simulate_get("/api/v1/items", headers={**user, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other_page = client.simulate_get(
        "/api/v1/items", params={"limit": 1}, headers={**user, "If-None-Match": etag}
    )
    assert other_page.status_code == 200
    upload(client, user, image_bytes(color=(1, 2, 3)))
    changed = client.simulate_get("/api/v1/items", headers={**user, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    me = client.simulate_get("/api/v1/me", headers=user)
    assert (
        client.simulate_get("/api/v1/me", headers={**user, "If-None-Match": me.headers["etag"]}).status_code
        == 304
    )


def test_memcached_going_down_mid_test_costs_nothing_but_speed(tmp_path, user):
    server = Memcached(free_port()).start()
    client = falcon.testing.TestClient(
        create_app(
            make_config(tmp_path, WARDROBE_MEMCACHED_SERVERS=server.server, WARDROBE_CACHE_LOCAL_TTL=0)
        )
    )
    upload(client, user, image_bytes())
    assert client.simulate_get("/api/v1/items", headers=user).status_code == 200
    server.kill()
    for _ in range(3):
        resp = client.simulate_get("/api/v1/items", headers=user)
        assert resp.status_code == 200 and len(resp.json["items"]) == 1
    assert upload(client, user, image_bytes(color=(9, 9, 9))).status_code == 202
    assert len(client.simulate_get("/api/v1/items", headers=user).json["items"]) == 2
    ready = client.simulate_get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"]["memcached"].startswith("degraded")


def test_per_user_upload_limit_answers_429_with_headers(tmp_path, user, new_user):
    client = falcon.testing.TestClient(create_app(make_config(tmp_path, WARDROBE_RATE_LIMIT_UPLOAD="2/60")))
    for _ in range(2):
        resp = upload(client, user, image_bytes())
        assert resp.status_code == 202 and "ratelimit-remaining" in resp.headers
    denied = upload(client, user, image_bytes())
    assert denied.status_code == 429
    assert int(denied.headers["retry-after"]) >= 1
    assert denied.headers["ratelimit-limit"] == "2" and denied.headers["ratelimit-remaining"] == "0"
    assert denied.json["title"]
    assert upload(client, new_user(), image_bytes()).status_code == 202  # limits are per user


def test_rate_limits_fail_open_when_redis_is_unreachable(tmp_path, user):
    config = make_config(
        tmp_path, WARDROBE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", WARDROBE_RATE_LIMIT_UPLOAD="1/60"
    )
    client = falcon.testing.TestClient(create_app(config))
    for _ in range(3):
        assert upload(client, user, image_bytes()).status_code == 202


def test_brand_search_uses_the_bundled_catalogue_by_default(client, user):
    resp = client.simulate_get("/api/v1/brands", params={"q": "nik"}, headers=user)
    assert resp.status_code == 200
    assert resp.json["brands"][0]["name"] == "Nike" and resp.json["source"] == "catalogue"
    for bad in ({"q": "a"}, {"q": "x" * 65}, {}, {"q": "zara", "limit": 500}):
        assert client.simulate_get("/api/v1/brands", params=bad, headers=user).status_code == 400


@pytest.mark.slow
def test_a_hanging_brand_api_never_slows_the_rest(tmp_path_factory, memcached):
    tmp = tmp_path_factory.mktemp("brands")
    with BrandServer() as upstream:
        upstream.reset("sleep", delay=5.0)
        env = {
            "WARDROBE_DATABASE_URL": TEST_DSN,
            "WARDROBE_DATA_DIR": str(tmp / "data"),
            "WARDROBE_TELEGRAM_BOT_TOKEN": BOT_TOKEN,
            "WARDROBE_REDIS_URL": "redis://127.0.0.1:6379/1",
            "WARDROBE_MEMCACHED_SERVERS": memcached.server,
            "WARDROBE_BRAND_API_URL": upstream.url,
            "WARDROBE_BRAND_API_TIMEOUT": "0.8",
            "WARDROBE_PROFILE_HZ": "0",
        }
        proc, base = gunicorn(env, tmp / "gunicorn.log", workers=1)
        port = int(base.rsplit(":", 1)[1])
        try:
            brand_times, other_times, statuses = [], [], []
            lock = threading.Lock()

            def call(path, n):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
                started = time.monotonic()
                conn.request("GET", path, headers=auth_header(960_000_000 + n))
                resp = conn.getresponse()
                resp.read()
                with lock:
                    (brand_times if "brands" in path else other_times).append(time.monotonic() - started)
                    statuses.append(resp.status)

            with ThreadPoolExecutor(60) as pool:
                jobs = [pool.submit(call, f"/api/v1/brands?q=brand{n}", n) for n in range(30)]
                jobs += [pool.submit(call, "/api/v1/me", n) for n in range(30)]
                for job in jobs:
                    job.result()
            assert set(statuses) == {200}, statuses  # catalogue answers when the upstream is too slow
            assert max(brand_times) < 0.8 + 1.0  # the deadline plus a margin for a 2-core box
            assert statistics.median(other_times) < 0.5  # other endpoints never wait on the upstream
        finally:
            proc.stop()
