"""The shared cache against a real memcached started on a private port: versioned keys, outages, the LRU."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

import psycopg2
import pytest
from processes import Memcached, free_port
from psycopg2.extras import Json

from wardrobe.clients.cache import MISSING, Cache, LocalLRU, NullCache, cache_key

TEST_DSN = f"postgresql:///{os.environ.get('WARDROBE_TEST_DATABASE', 'wardrobe_test')}"


@pytest.fixture(scope="module")
def memcached() -> Iterator[Memcached]:
    server = Memcached(free_port()).start()
    yield server
    server.kill()


class Recorder:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.results: list[tuple[str, bool]] = []

    def on_error(self, kind: str) -> None:
        self.errors.append(kind)

    def on_result(self, kind: str, hit: bool) -> None:
        self.results.append((kind, hit))


def new_user_id() -> int:
    return random.randint(10**12, 10**13)


@pytest.fixture
def user_row() -> Iterator[int]:
    user_id = new_user_id()
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO users (id, profile) VALUES (%s, %s)", (user_id, Json({"items": ["white shirt"]}))
        )
    yield user_id
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM users WHERE id = %s", (user_id,))


def test_keys_are_memcached_safe_and_hash_what_cannot_be_spelled() -> None:
    filters = {"category": "shoes", "color": "black"}
    key = cache_key("items", 42, 7, filters)
    prefix, sha = key.rsplit(":", 1)
    assert prefix == "w:v1:items:42:7"
    assert len(sha) == 40
    assert cache_key("items", 42, 7, {"color": "black", "category": "shoes"}) == key
    assert cache_key("items", 42, 7, {"color": "red", "category": "shoes"}) != key

    for awkward in ("new balance", "Hermès", "tab\there", "x" * 1000):
        built = cache_key("brands", awkward)
        assert len(built.encode()) <= 250
        assert all(33 <= ord(ch) <= 126 for ch in built)
    assert cache_key("brands", "new balance") != cache_key("brands", "new  balance")
    assert len(cache_key(*["part"] * 100).encode()) <= 250


def test_values_written_by_one_backend_are_read_by_another(memcached: Memcached) -> None:
    writer, reader = Cache([memcached.server]), Cache([memcached.server])
    key = cache_key("capsule", new_user_id(), 1)
    assert reader.get(key, "capsule") is MISSING
    assert writer.set(key, {"looks": [["coat", "boots"]]}, 60, "capsule") is True
    assert reader.get(key, "capsule") == {"looks": [["coat", "boots"]]}
    assert reader.get_many([key, key + "x"], "capsule") == {key: {"looks": [["coat", "boots"]]}}
    assert writer.delete(key, "capsule") is True
    assert reader.get(key, "capsule") is MISSING


def test_counters_are_shared_and_created_on_first_use(memcached: Memcached) -> None:
    first, second = Cache([memcached.server]), Cache([memcached.server])
    key = cache_key("counter", new_user_id())
    assert first.incr(key, "counter", ttl=60) == 1
    assert second.incr(key, "counter", delta=4, ttl=60) == 5
    assert first.get(key, "counter") == 5


def test_a_write_makes_the_next_read_fresh_on_every_backend(memcached: Memcached, user_row: int) -> None:
    """The version lives in Postgres and is bumped with the write; caches only key by it (as wardrobe.web.reads does)."""

    def load_version() -> int:
        with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
            cur.execute("SELECT wardrobe_version FROM users WHERE id = %s", (user_row,))
            return cur.fetchone()[0]

    def list_items(cache: Cache) -> list[str]:
        key = cache.key("items", user_row, load_version(), {"category": None})
        cached = cache.get(key, "items", local=True)
        if cached is not MISSING:
            return cached
        with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
            cur.execute("SELECT profile->'items' FROM users WHERE id = %s", (user_row,))
            items = cur.fetchone()[0]
        cache.set(key, items, 600, "items", local=True)
        return items

    def add_item(item: str) -> None:  # touches only Postgres: no cache is told
        with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE users SET profile = jsonb_set(profile, '{items}', (profile->'items') || %s),"
                " wardrobe_version = wardrobe_version + 1 WHERE id = %s",
                (Json([item]), user_row),
            )

    backend_a = Cache([memcached.server], local=LocalLRU(maxsize=100, ttl=60))
    backend_b = Cache([memcached.server], local=LocalLRU(maxsize=100, ttl=60))
    assert list_items(backend_a) == ["white shirt"]
    assert list_items(backend_b) == ["white shirt"]

    add_item("blue jeans")

    assert list_items(backend_a) == ["white shirt", "blue jeans"]
    assert list_items(backend_b) == ["white shirt", "blue jeans"]


def test_a_version_in_memcached_never_goes_backwards(memcached: Memcached) -> None:
    from wardrobe.store.users import VersionCache

    backend_a = VersionCache(Cache([memcached.server]), ttl=60)
    backend_b = VersionCache(Cache([memcached.server]), ttl=60)
    user_id = new_user_id()
    assert backend_a.get(user_id) is None
    backend_a.fill(user_id, 3)  # a reader's copy of what Postgres said
    backend_b.publish({user_id: 5})  # a writer's commit
    backend_a.publish({user_id: 4})  # an older writer, late
    backend_b.fill(user_id, 3)  # a slow reader that read Postgres before both commits
    assert backend_a.get(user_id) == backend_b.get(user_id) == 5


def test_concurrent_writers_leave_the_highest_version(memcached: Memcached) -> None:
    from concurrent.futures import ThreadPoolExecutor

    caches = [Cache([memcached.server]) for _ in range(4)]
    key = cache_key("version", new_user_id())
    versions = list(range(1, 41))
    random.shuffle(versions)
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda v: caches[v % 4].raise_to(key, v, 60, "version", attempts=50), versions))
    assert all(done)
    assert caches[0].get(key, "version") == 40


def test_memcached_outage_degrades_to_misses_and_recovers(memcached: Memcached) -> None:
    own = Memcached(free_port()).start()
    seen = Recorder()
    cache = Cache(
        [own.server],
        connect_timeout=0.2,
        timeout=0.2,
        retry_attempts=1,
        retry_timeout=0.1,
        dead_timeout=0.3,
        on_error=seen.on_error,
        on_result=seen.on_result,
    )
    try:
        key = cache_key("items", new_user_id(), 1)
        assert cache.set(key, ["coat"], 60, "items")
        assert cache.get(key, "items") == ["coat"]
        assert cache.ping() == "ok"

        own.kill()
        for _ in range(5):
            assert cache.get(key, "items") is MISSING
            assert cache.set(key, ["coat"], 60, "items") is False
            time.sleep(0.1)
        assert "items" in seen.errors
        assert ("items", False) in seen.results
        assert cache.ping() == "degraded"

        own.start()
        deadline = time.monotonic() + 10
        while not (cache.set(key, ["scarf"], 60, "items") and cache.get(key, "items") == ["scarf"]):
            assert time.monotonic() < deadline, "cache did not recover after memcached came back"
            time.sleep(0.1)
        assert cache.ping() == "ok"
    finally:
        own.kill()


def test_a_failure_inside_the_memcached_client_is_a_miss_not_an_error() -> None:
    class RacingClient:
        """What pymemcache's HashClient raises when two greenlets retry a server that just came back."""

        def get(self, key, default=None):
            raise KeyError(("10.0.1.12", 11211))

        def set(self, key, value, expire=0, noreply=None):
            raise KeyError(("10.0.1.12", 11211))

    seen = Recorder()
    cache = Cache([], client=RacingClient(), on_error=seen.on_error, on_result=seen.on_result)
    key = cache_key("items", 1, 1)
    assert cache.get(key, "items") is MISSING
    assert cache.set(key, ["coat"], 60, "items") is False
    assert "items" in seen.errors


def test_null_cache_always_misses() -> None:
    cache = NullCache()
    key = cache.key("items", 1, 1)
    assert cache.set(key, [1], 60, "items") is False
    assert cache.get(key, "items") is MISSING
    assert cache.get_many([key], "items") == {}
    assert cache.ping() == "disabled"


def test_local_lru_expires_entries_after_its_ttl() -> None:
    now = [1000.0]
    lru = LocalLRU(maxsize=10, ttl=2.0, clock=lambda: now[0])
    lru.set("a", 1)
    now[0] += 1.9
    assert lru.get("a") == 1
    now[0] += 0.2
    assert lru.get("a") is MISSING


def test_local_lru_evicts_the_least_recently_used() -> None:
    lru = LocalLRU(maxsize=2, ttl=60)
    lru.set("a", 1)
    lru.set("b", 2)
    assert lru.get("a") == 1  # "a" is now the most recent
    lru.set("c", 3)
    assert lru.get("b") is MISSING
    assert (lru.get("a"), lru.get("c"), len(lru)) == (1, 3, 2)
