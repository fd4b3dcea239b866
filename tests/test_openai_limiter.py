"""The shared OpenAI key pool on real Redis (db 5): budgets hold under concurrency, across processes and keys."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
from processes import local_redis

from tasks.analysis.openai_keys import NoBudget, OpenAIKeyPool, key_alias, parse_go_duration

REDIS_DB = 5


@pytest.fixture
def redis_db():
    with local_redis(REDIS_DB) as client:
        yield client


@pytest.fixture
def make_pool(redis_db):
    """Each call is a separate "process": its own Redis connection, the same shared state."""
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    clients = []

    def make(keys=("sk-test-one",), rpm=600, tpm=0, **options):
        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        clients.append(client)
        return OpenAIKeyPool(client, list(keys), rpm=rpm, tpm=tpm, prefix=prefix, **options)

    yield make
    for client in clients:
        client.close()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("12ms", 0.012),
        ("6m0s", 360.0),
        ("23h18m29.144s", 83909.144),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("0s", 0.0),
        ("20", 20.0),
    ],
)
def test_go_durations_from_openai_headers_parse_to_seconds(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 s", "1d", "s"])
def test_malformed_durations_are_rejected(text):
    with pytest.raises(ValueError):
        parse_go_duration(text)


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize("budget", ["requests", "tokens"])
def test_many_concurrent_callers_never_exceed_the_budget_in_any_window(make_pool, budget):
    window, limit, per_call = 2.0, 20, 100
    options = {"rpm": limit, "tpm": 0} if budget == "requests" else {"rpm": 10_000, "tpm": limit * per_call}
    # Three "processes" with six threads each, all hammering one key.
    pools = [make_pool(window=window, **options) for _ in range(3)]
    granted: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 3.0

    def caller(pool):
        while time.monotonic() < deadline:
            result = pool.acquire(per_call)
            if result:
                with lock:
                    granted.append(time.monotonic())
            else:
                time.sleep(min(result.retry_after, 0.02))

    threads = [threading.Thread(target=caller, args=(pool,)) for pool in pools for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert _max_in_window(granted, window) <= limit
    # ...and the budget is used, not wasted: well over one window's worth went out in 3 s.
    assert len(granted) > limit


def test_requests_rotate_across_keys(make_pool):
    pool = make_pool(keys=("sk-test-one", "sk-test-two", "sk-test-three"), rpm=6000)
    used = [pool.acquire(10).alias for _ in range(30)]
    counts = [used.count(alias) for alias in pool.aliases]
    assert min(counts) >= 8, counts


def test_a_key_out_of_budget_is_skipped_and_then_retry_after_is_given(make_pool):
    pool = make_pool(keys=("sk-test-one", "sk-test-two"), rpm=6, window=60.0)
    first, second = pool.acquire(10), pool.acquire(10)
    assert {first.alias, second.alias} == set(pool.aliases)
    third = pool.acquire(10)
    assert isinstance(third, NoBudget)
    assert not third
    # 6 RPM with 10 % headroom paces one request per 60 / 5.4 s.
    assert 10.0 < third.retry_after <= 60 / 5.4 + 0.1


def test_cool_down_after_a_429_is_shared_between_processes(make_pool):
    keys = ("sk-test-one", "sk-test-two")
    worker_a, worker_b = make_pool(keys=keys), make_pool(keys=keys)
    cooled = key_alias("sk-test-one")
    worker_a.cool_down(cooled, 3.0)
    assert {worker_b.acquire(10).alias for _ in range(10)} == {key_alias("sk-test-two")}

    single = make_pool(keys=("sk-test-one",))
    refused = single.acquire(10)
    assert isinstance(refused, NoBudget)
    assert 2.0 < refused.retry_after <= 3.0


def test_a_shorter_cool_down_never_shortens_a_longer_one(make_pool):
    pool = make_pool()
    alias = pool.aliases[0]
    pool.cool_down(alias, 5.0)
    assert pool.cool_down(alias, 1.0) > 4.0


def test_exhausted_request_headers_block_the_key_until_reset(make_pool):
    pool = make_pool(rpm=600)
    pool.observe_headers(
        pool.aliases[0],
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "2s",
        },
    )
    refused = pool.acquire(10)
    assert isinstance(refused, NoBudget)
    assert 1.5 < refused.retry_after <= 2.0


def test_remaining_tokens_from_headers_tighten_the_token_budget(make_pool):
    pool = make_pool(rpm=600, tpm=100_000)
    pool.observe_headers(
        pool.aliases[0],
        {
            "x-ratelimit-limit-tokens": "100000",
            "x-ratelimit-remaining-tokens": "300",
            "x-ratelimit-reset-tokens": "59s",
        },
    )
    assert isinstance(pool.acquire(500), NoBudget)
    assert pool.acquire(200)


def test_a_lower_limit_reported_by_openai_replaces_the_configured_one(make_pool):
    pool = make_pool(rpm=6000, window=60.0)
    pool.observe_headers(
        pool.aliases[0], {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59"}
    )
    # At 60 RPM the pool allows a burst of 3 (half the 10 % headroom), then paces ~1.1 s apart.
    assert all(pool.acquire(10) for _ in range(3))
    refused = pool.acquire(10)
    assert isinstance(refused, NoBudget)
    assert 0.5 < refused.retry_after < 1.2


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_zero_or_negative_limits_mean_unknown_and_are_ignored(make_pool, limit):
    pool = make_pool(rpm=600, tpm=100_000)
    pool.observe_headers(
        pool.aliases[0],
        {
            "x-ratelimit-limit-requests": limit,
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "30s",
            "x-ratelimit-limit-tokens": limit,
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "30s",
        },
    )
    assert pool.acquire(500)


def test_recorded_usage_corrects_the_token_estimate_both_ways(make_pool):
    # 1200 TPM with 50 % headroom: 600 tokens a minute planned (0.1 s each), bursts of 300 tokens.
    pool = make_pool(rpm=6000, tpm=1200, window=60.0, headroom=0.5)
    lease = pool.acquire(100)
    pool.record_usage(lease.alias, tokens=300, estimated_tokens=100)
    assert isinstance(pool.acquire(100), NoBudget)

    other = make_pool(keys=("sk-test-two",), rpm=6000, tpm=1200, window=60.0, headroom=0.5)
    lease = other.acquire(300)
    assert isinstance(other.acquire(200), NoBudget)
    other.record_usage(lease.alias, tokens=50, estimated_tokens=300)
    assert other.acquire(200)


def test_acquire_can_wait_briefly_for_a_slot_instead_of_refusing(make_pool):
    sleeps: list[float] = []
    # 60 per 6 s with 10 % headroom: bursts of 3, then one every 6 / 54 s.
    pool = make_pool(rpm=60, window=6.0, sleep=sleeps.append)
    assert all(pool.acquire(10) for _ in range(3))
    lease = pool.acquire(10, max_wait=1.0)
    assert lease
    assert lease.waited == pytest.approx(6 / 54, abs=0.03)
    assert sleeps == [lease.waited]
    # The slot was reserved, so an impatient caller right after is refused.
    assert isinstance(pool.acquire(10), NoBudget)


def test_api_keys_never_appear_in_redis_or_in_reprs(make_pool, redis_db):
    secret = "sk-proj-SECRETSECRET1234567890"
    pool = make_pool(keys=(secret,), tpm=10_000)
    lease = pool.acquire(100)
    pool.record_usage(lease.alias, 150, 100)
    pool.observe_headers(
        lease.alias, {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "0"}
    )
    pool.cool_down(lease.alias, 1.0)
    stored = b" ".join(
        key + b" " + (redis_db.dump(key) or b"") for key in redis_db.scan_iter(match="*", count=1000)
    )
    assert stored
    assert b"SECRET" not in stored
    assert "SECRET" not in repr(lease) + repr(pool.aliases)
