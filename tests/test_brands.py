"""Brand suggestions: the catalogue's ranking and the upstream client against the fake brand API."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from processes import Memcached, free_port
from pymemcache.client.base import Client as MemcacheClient

from tests.fakes.brand_server import BrandServer
from wardrobe.clients.brands import (
    BrandsUnavailable,
    CatalogueBrands,
    CircuitBreaker,
    HttpBrandClient,
    InvalidQuery,
    normalise_query,
)
from wardrobe.clients.cache import Cache, NullCache

DEADLINE = 0.8
# Generous on purpose: the behaviour under test is "bounded by the deadline", not a latency target.
MARGIN = 0.7
HOUR = 3600.0


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def catalogue() -> CatalogueBrands:
    return CatalogueBrands()


@pytest.fixture(scope="module")
def brand_api() -> Iterator[BrandServer]:
    with BrandServer() as server:
        yield server


@pytest.fixture(scope="module")
def memcached() -> Iterator[Memcached]:
    server = Memcached(free_port()).start()
    yield server
    server.kill()


@pytest.fixture
def upstream(brand_api: BrandServer, memcached: Memcached) -> BrandServer:
    brand_api.reset("normal")
    brand_api.brands = ["Nike", "Nike ACG", "Nikon Apparel", "Adidas", "Zara", "Upstream Only Label"]
    MemcacheClient(("127.0.0.1", memcached.port)).flush_all(noreply=False)
    return brand_api


def names(answer: dict) -> list[str]:
    return [brand["name"] for brand in answer["brands"]]


def timed(fn, *args):
    started = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - started


def make_client(upstream: BrandServer, memcached: Memcached | None = None, **overrides) -> HttpBrandClient:
    settings = {
        "cache": Cache([memcached.server]) if memcached else NullCache(),
        "fallback": CatalogueBrands(),
        "timeout": DEADLINE,
        "max_concurrency": 4,
    }
    settings.update(overrides)
    return HttpBrandClient(upstream.url, **settings)


# --- query rules and the catalogue -----------------------------------------------------------------------


def test_queries_are_normalised_and_bounded() -> None:
    assert normalise_query("  New   BALANCE \t") == "new balance"
    assert normalise_query("\uff2e\uff29\uff2b\uff25") == "nike"  # full-width letters
    for bad in ("", " n ", "x" * 65, "ni\x00ke"):
        with pytest.raises(InvalidQuery):
            normalise_query(bad)
    assert issubclass(InvalidQuery, ValueError)


def test_catalogue_ranks_prefix_then_word_then_substring(catalogue: CatalogueBrands) -> None:
    found = catalogue.match("ban", 10)
    assert found[:2] == ["Banana Republic", "Ray-Ban"]
    assert set(found[2:]) == {"Dolce & Gabbana", "Urban Outfitters"}
    assert catalogue.match("bal", 10) == ["Bally", "Balmain", "Balenciaga", "New Balance"]
    assert catalogue.match("ba", 3) == ["Bally", "Balmain", "Barbour"]


def test_catalogue_ignores_case_diacritics_and_punctuation(catalogue: CatalogueBrands) -> None:
    assert catalogue.match("hermes", 3)[0] == "Hermès"
    assert catalogue.match("CHLOE", 3)[0] == "Chloé"
    assert catalogue.match("hm", 3)[0] == "H&M"
    assert catalogue.match("levis", 3)[0] == "Levi's"
    assert catalogue.match("balance", 3)[0] == "New Balance"


def test_catalogue_forgives_typos(catalogue: CatalogueBrands) -> None:
    assert catalogue.match("addidas", 3)[0] == "Adidas"
    assert catalogue.match("patagnia", 3)[0] == "Patagonia"
    assert catalogue.match("qqqzzz", 3) == []


def test_catalogue_completes_half_typed_names(catalogue: CatalogueBrands) -> None:
    assert catalogue.match("pat", 3)[0] == "Patagonia"
    assert catalogue.match("Louis V", 3)[0] == "Louis Vuitton"
    assert catalogue.match("ralph", 5)[0] == "Ralph Lauren"
    assert catalogue.match("lauren", 3) == [
        "Ralph Lauren",
        "Saint Laurent",
        "Polo Ralph Lauren",
    ]  # a later word
    assert catalogue.match("ray ban", 3)[0] == "Ray-Ban"  # punctuation typed as a space


def test_catalogue_forgives_typos_in_full_and_half_typed_names(catalogue: CatalogueBrands) -> None:
    assert catalogue.match("balenciaag", 3)[0] == "Balenciaga"  # two letters swapped
    assert catalogue.match("givency", 3)[0] == "Givenchy"  # a letter dropped
    assert catalogue.match("burberri", 3)[0] == "Burberry"  # a letter replaced
    assert catalogue.match("patagn", 3)[0] == "Patagonia"  # the start of a name, mistyped
    assert catalogue.match("xqzvw", 10) == []


def test_a_repeated_query_answers_the_same_whatever_the_limit(catalogue: CatalogueBrands) -> None:
    longest = catalogue.match("ma", 20)
    assert len(longest) == 20
    for limit in (1, 5, 10, 20):
        assert catalogue.match("MA", limit) == longest[:limit]
    found = catalogue.match("ma", 3)
    found.append("Not A Brand")  # what a caller does with its answer stays with it
    assert catalogue.match("ma", 3) == longest[:3]


def test_catalogue_answers_in_the_api_shape(catalogue: CatalogueBrands) -> None:
    answer = catalogue.search("Nike", limit=2)
    assert answer["source"] == "catalogue"
    assert names(answer)[0] == "Nike"
    assert len(answer["brands"]) <= 2
    with pytest.raises(InvalidQuery):
        catalogue.search("nike", limit=0)


# --- the upstream client ---------------------------------------------------------------------------------


def test_upstream_answer_is_cached_for_the_next_request(upstream: BrandServer, memcached: Memcached) -> None:
    client = make_client(upstream, memcached)
    first = client.search("  NIK ", limit=10)
    assert first == {
        "brands": [{"name": "Nike"}, {"name": "Nike ACG"}, {"name": "Nikon Apparel"}],
        "source": "upstream",
    }
    assert upstream.queries == ["nik"]
    second = make_client(upstream, memcached).search("nik", limit=2)
    assert second == {"brands": [{"name": "Nike"}, {"name": "Nike ACG"}], "source": "cache"}
    assert upstream.requests == 1


def test_sleeping_upstream_is_cut_at_the_deadline_and_the_catalogue_answers(upstream: BrandServer) -> None:
    upstream.reset("sleep", delay=5)
    answer, elapsed = timed(make_client(upstream).search, "nike")
    assert elapsed < DEADLINE + MARGIN
    assert answer["source"] == "catalogue"
    assert names(answer)[0] == "Nike"


def test_trickling_body_is_cut_at_the_deadline(upstream: BrandServer) -> None:
    upstream.reset("trickle")
    answer, elapsed = timed(make_client(upstream).search, "nik")
    assert elapsed < DEADLINE + MARGIN
    assert answer["source"] == "catalogue"


@pytest.mark.parametrize("mode", ["error", "garbage", "huge", "huge_unsized"])
def test_broken_upstream_answers_never_reach_the_user(upstream: BrandServer, mode: str) -> None:
    upstream.reset(mode)
    answer, elapsed = timed(make_client(upstream, max_body_bytes=64 * 1024).search, "zara")
    assert answer["source"] == "catalogue"
    assert names(answer) == ["Zara"]
    assert elapsed < DEADLINE + MARGIN


@pytest.mark.parametrize(
    "body",
    [
        b'["Nike"]',
        b'{"brands": "Nike"}',
        b'{"brands": [{"name": 5}]}',
        b'{"brands": [{"title": "Nike"}]}',
        b'{"brands": [{"name": "Nike\\u0000"}]}',
        b'{"brands": [{"name": ""}]}',
        json.dumps({"brands": [{"name": "x" * 500}]}).encode(),
        json.dumps({"brands": [{"name": f"B{i}"} for i in range(101)]}).encode(),
        b"[" * 50_000,
    ],
)
def test_malformed_json_is_rejected_as_a_whole(
    upstream: BrandServer, memcached: Memcached, body: bytes
) -> None:
    upstream.reset("body")
    upstream.body = body
    client = make_client(upstream, memcached)
    assert client.search("nike")["source"] == "catalogue"
    assert client.search("nike")["source"] == "catalogue"  # nothing from the bad answer was cached
    assert upstream.requests == 2


def test_without_a_fallback_the_failure_is_a_503_with_retry_after(upstream: BrandServer) -> None:
    upstream.reset("error")
    client = make_client(upstream, fallback=None)
    with pytest.raises(BrandsUnavailable) as raised:
        client.search("nike")
    assert raised.value.retry_after >= 1


def test_breaker_opens_stops_calling_half_opens_and_closes(upstream: BrandServer) -> None:
    clock = FakeClock(0.0)
    transitions: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        failure_threshold=3, reset_timeout=30, clock=clock, on_state_change=lambda *t: transitions.append(t)
    )
    client = make_client(upstream, breaker=breaker, fallback=None)
    upstream.reset("error")
    for _ in range(3):
        with pytest.raises(BrandsUnavailable):
            client.search("nike")
    assert breaker.state == "open"
    assert upstream.requests == 3

    for _ in range(5):
        with pytest.raises(BrandsUnavailable) as raised:
            client.search("nike")
        assert raised.value.retry_after == 30
    assert upstream.requests == 3  # the open breaker kept the upstream out of it

    clock.now += 31
    assert breaker.state == "half_open"
    with pytest.raises(BrandsUnavailable):
        client.search("nike")  # the probe fails: open again for another cool-down
    assert upstream.requests == 4
    assert breaker.state == "open"

    clock.now += 31
    upstream.reset("normal")
    assert client.search("nike")["source"] == "upstream"
    assert breaker.state == "closed"
    assert transitions == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_half_open_breaker_lets_exactly_one_probe_through() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10, clock=clock)
    breaker.record_failure()
    assert not breaker.allow()
    clock.now = 10
    assert [breaker.allow() for _ in range(3)] == [True, False, False]
    breaker.record_success()
    assert breaker.allow() and breaker.allow()


def test_bulkhead_turns_away_excess_calls_without_touching_the_upstream(
    upstream: BrandServer, memcached: Memcached
) -> None:
    upstream.reset("sleep", delay=0.6)
    clock = FakeClock()
    client = make_client(upstream, memcached, max_concurrency=2, fallback=None, clock=clock)
    cache = Cache([memcached.server])
    cache.set(
        cache.key("brands", "zara"), {"brands": ["Zara"], "fetched_at": clock.now - 5 * HOUR}, 600, "brands"
    )

    threads = [threading.Thread(target=client.search, args=(q,)) for q in ("nike", "adidas")]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while upstream.requests < 2:
        assert time.monotonic() < deadline, "the first two calls never reached the upstream"
        time.sleep(0.01)

    with pytest.raises(BrandsUnavailable) as raised:
        client.search("upstream")
    assert raised.value.retry_after == 1
    stale = client.search("zara")
    assert stale == {"brands": [{"name": "Zara"}], "source": "stale"}
    assert upstream.requests == 2
    for thread in threads:
        thread.join()
    assert client.breaker.state == "closed"


def test_stale_answer_is_served_at_once_and_refreshed_once(
    upstream: BrandServer, memcached: Memcached
) -> None:
    clock = FakeClock()
    backends = [make_client(upstream, memcached, clock=clock), make_client(upstream, memcached, clock=clock)]
    assert names(backends[0].search("nik")) == ["Nike", "Nike ACG", "Nikon Apparel"]
    assert upstream.requests == 1

    upstream.reset("sleep", delay=0.5)
    upstream.brands = ["Nike", "Nike SB"]
    clock.now += 2 * HOUR
    answers: list[tuple[dict, float]] = []

    def ask(client: HttpBrandClient) -> None:
        answers.append(timed(client.search, "nik"))

    threads = [threading.Thread(target=ask, args=(backends[i % 2],)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {answer["source"] for answer, _ in answers} == {"stale"}
    assert all(names(answer) == ["Nike", "Nike ACG", "Nikon Apparel"] for answer, _ in answers)
    assert max(elapsed for _, elapsed in answers) < 0.5  # nobody waited for the refreshing call

    deadline = time.monotonic() + 5
    while (answer := backends[1].search("nik"))["source"] != "cache":
        assert time.monotonic() < deadline, "the stale entry was never refreshed"
        time.sleep(0.05)
    assert names(answer) == ["Nike", "Nike SB"]
    assert upstream.requests == 1  # one refresh for both backends and all ten requests


def test_entries_older_than_a_day_are_not_served(upstream: BrandServer, memcached: Memcached) -> None:
    clock = FakeClock()
    client = make_client(upstream, memcached, clock=clock)
    client.search("zara")
    clock.now += 25 * HOUR
    assert client.search("zara")["source"] == "upstream"
    assert upstream.requests == 2


GEVENT_SCRIPT = """
from gevent import monkey
monkey.patch_all()
import json, sys, time
from wardrobe.clients.brands import CatalogueBrands, HttpBrandClient
from wardrobe.clients.cache import NullCache
client = HttpBrandClient(sys.argv[1], cache=NullCache(), fallback=CatalogueBrands(), timeout=float(sys.argv[2]))
started = time.monotonic()
answer = client.search("nike")
print(json.dumps({"elapsed": time.monotonic() - started, "source": answer["source"]}))
"""


@pytest.mark.parametrize("mode", ["sleep", "trickle"])
def test_under_gevent_the_deadline_holds_too(upstream: BrandServer, mode: str) -> None:
    upstream.reset(mode, delay=5)
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, upstream.url, str(DEADLINE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["source"] == "catalogue"
    assert outcome["elapsed"] < DEADLINE + MARGIN
