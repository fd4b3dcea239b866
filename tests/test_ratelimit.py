"""Per-user rate limits on the real Redis (db 6), shared by two limiter instances as two backends would."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from wardrobe.clients.ratelimit import UserRateLimiter, rate_limit_headers

REDIS_DB = 6


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_timeout=2)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def user_id() -> int:
    return random.randint(10**9, 10**10)


def test_two_backends_together_allow_exactly_the_limit(redis_db: redis.Redis) -> None:
    rules = {"upload": (30, 60)}
    backends = [UserRateLimiter(redis_db, rules), UserRateLimiter(redis_db, rules)]
    uid = user_id()
    decisions = [backends[i % 2].check(uid, "upload") for i in range(40)]
    assert sum(d.allowed for d in decisions) == 30
    assert all(d.allowed for d in decisions[:30])
    assert [d.remaining for d in decisions[:3]] == [29, 28, 27]
    assert decisions[29].remaining == 0
    assert not any(d.allowed for d in decisions[30:])


def test_denial_says_when_to_come_back(redis_db: redis.Redis) -> None:
    limiter = UserRateLimiter(redis_db, {"capsule": (2, 60)})
    uid = user_id()
    assert limiter.check(uid, "capsule").allowed
    assert limiter.check(uid, "capsule").allowed
    denied = limiter.check(uid, "capsule")
    assert not denied.allowed
    assert 55 <= denied.retry_after <= 60
    headers = rate_limit_headers(denied)
    assert headers["RateLimit-Limit"] == "2"
    assert headers["RateLimit-Remaining"] == "0"
    assert headers["Retry-After"] == str(denied.retry_after)
    assert 55 <= int(headers["RateLimit-Reset"]) <= 60


def test_users_and_rules_have_separate_quotas(redis_db: redis.Redis) -> None:
    limiter = UserRateLimiter(redis_db, {"upload": (1, 60), "brands": (1, 60)})
    first, second = user_id(), user_id()
    assert limiter.check(first, "upload").allowed
    assert not limiter.check(first, "upload").allowed
    assert limiter.check(first, "brands").allowed
    assert limiter.check(second, "upload").allowed


def test_the_window_slides(redis_db: redis.Redis) -> None:
    limiter = UserRateLimiter(redis_db, {"brands": (3, 1)})
    uid = user_id()
    assert [limiter.check(uid, "brands").allowed for _ in range(4)] == [True, True, True, False]
    time.sleep(1.05)  # once the oldest request is a window old, there is room again
    assert limiter.check(uid, "brands").allowed


def test_allowed_requests_carry_headers_without_retry_after(redis_db: redis.Redis) -> None:
    decision = UserRateLimiter(redis_db).check(user_id(), "brands")
    headers = rate_limit_headers(decision)
    assert headers["RateLimit-Limit"] == "60"
    assert headers["RateLimit-Remaining"] == "59"
    assert "Retry-After" not in headers


def test_unreachable_redis_lets_requests_through_and_counts_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    failed_open: list[str] = []
    dead = redis.Redis(host="127.0.0.1", port=closed_port, socket_connect_timeout=0.2, retry=None)
    limiter = UserRateLimiter(dead, {"upload": (1, 60)}, on_fail_open=failed_open.append)
    decisions = [limiter.check(user_id(), "upload") for _ in range(3)]
    assert all(d.allowed for d in decisions)
    assert failed_open == ["upload"] * 3
    assert "Retry-After" not in rate_limit_headers(decisions[0])
