"""Item analysis and capsule naming against the fake OpenAI server, with the real Redis key pool (db 5)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import uuid

import openai
import pytest
import redis
from PIL import Image, ImageDraw
from processes import local_redis

from tasks.analysis.ai import (
    CATEGORIES,
    LocalAnalyzer,
    OpenAIAnalyzer,
    PermanentAIError,
    RateLimited,
    TransientAIError,
)
from tasks.analysis.openai_keys import OpenAIKeyPool, parse_go_duration
from tasks.analysis.palette import COLOR_NAMES
from tests.fakes.openai_server import FakeOpenAI

REDIS_DB = 5
KEY_ONE, KEY_TWO = "sk-test-one-0123456789", "sk-test-two-0123456789"


def shirt_png(body=(200, 25, 35), trousers=None) -> bytes:
    """A cut-out garment: a T-shirt shape (and optionally trousers) on a fully transparent background."""
    image = Image.new("RGBA", (200, 320), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.polygon(
        [
            (50, 20),
            (150, 20),
            (190, 80),
            (160, 95),
            (150, 70),
            (150, 200),
            (50, 200),
            (50, 70),
            (40, 95),
            (10, 80),
        ],
        fill=(*body, 255),
    )
    if trousers:
        draw.polygon(
            [(55, 200), (145, 200), (150, 315), (105, 315), (100, 240), (95, 315), (50, 315)], fill=trousers
        )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def redis_db():
    with local_redis(REDIS_DB) as client:
        yield client


@pytest.fixture
def fake():
    server = FakeOpenAI(keys=[KEY_ONE, KEY_TWO]).start()
    yield server
    server.stop()


@pytest.fixture
def make_analyzer(redis_db):
    """Each call is one worker process: its own Redis connection and SDK clients, the shared key state."""
    prefix = f"test-ai:{uuid.uuid4().hex[:8]}"
    built = []

    def make(base_url, keys=(KEY_ONE,), rpm=600, tpm=200_000, window=60.0, **options):
        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        pool = OpenAIKeyPool(client, list(keys), rpm=rpm, tpm=tpm, prefix=prefix, window=window)
        analyzer = OpenAIAnalyzer(pool, base_url, "gpt-4o-mini", **options)
        built.append((analyzer, client))
        return analyzer

    yield make
    for analyzer, client in built:
        analyzer.close()
        client.close()


def test_openai_describes_an_item_with_our_vocabulary(fake, make_analyzer):
    result = make_analyzer(fake.url).analyze_item(shirt_png())

    assert result["source"] == "openai"
    assert result["category"] in CATEGORIES
    assert 1 <= result["formality"] <= 5
    assert result["colors"]
    assert all(c["name"] in COLOR_NAMES and c["hex"].startswith("#") for c in result["colors"])
    assert set(result) == {
        "category",
        "colors",
        "pattern",
        "material",
        "season",
        "style",
        "formality",
        "source",
    }


def test_the_request_is_a_low_detail_vision_call_with_a_strict_schema(fake, make_analyzer):
    make_analyzer(fake.url).analyze_item(shirt_png())

    body = fake.last_body()
    assert fake.count(key=KEY_ONE) == 1
    image_part = next(p for p in body["messages"][-1]["content"] if p["type"] == "image_url")
    assert image_part["image_url"]["detail"] == "low"
    assert image_part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(image_part["image_url"]["url"].split(",", 1)[1])))
    assert sent.format == "JPEG" and sent.mode == "RGB"
    assert max(sent.size) <= 512
    # Flattened onto the light backdrop, the garment's colour intact.
    assert all(abs(c - 236) <= 6 for c in sent.getpixel((2, 2)))
    red = sent.getpixel((100, 120))
    assert red[0] > 170 and red[1] < 60 and red[2] < 70
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True


def test_requests_are_spread_over_every_configured_key(fake, make_analyzer):
    analyzer = make_analyzer(fake.url, keys=(KEY_ONE, KEY_TWO))
    for _ in range(6):
        analyzer.analyze_item(shirt_png())
    assert fake.count(key=KEY_ONE) >= 2
    assert fake.count(key=KEY_TWO) >= 2


def test_a_429_rate_limit_is_rate_limited_with_openais_hint_and_cools_the_key_everywhere(fake, make_analyzer):
    fake.fail_next("rate_limit", retry_after=2.5)
    with pytest.raises(RateLimited) as raised:
        make_analyzer(fake.url).analyze_item(shirt_png())
    assert raised.value.retry_after == pytest.approx(2.5, abs=0.05)

    # Another worker does not even try the cooled key: it is told to come back later.
    with pytest.raises(RateLimited) as again:
        make_analyzer(fake.url, max_wait=0.0).analyze_item(shirt_png())
    assert 1.5 < again.value.retry_after <= 2.5
    assert fake.count() == 1


def test_after_a_429_on_one_key_the_request_goes_out_on_another(fake, make_analyzer):
    fake.fail_next("rate_limit", retry_after=5)
    result = make_analyzer(fake.url, keys=(KEY_ONE, KEY_TWO)).analyze_item(shirt_png())
    assert result["source"] == "openai"
    assert fake.rate_limited == 1
    assert {r.key for r in fake.requests} == {KEY_ONE, KEY_TWO}


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ("insufficient_quota", "insufficient_quota"),
        ("too_large", "request_too_large"),
        ("bad_request", "http_400"),
        ("refusal", "refusal"),
        ("length", "truncated"),
        ("invalid_json", "invalid_json"),
    ],
)
def test_failures_that_would_repeat_are_permanent(fake, make_analyzer, failure, reason):
    fake.fail_next(failure)
    with pytest.raises(PermanentAIError) as raised:
        make_analyzer(fake.url).analyze_item(shirt_png())
    assert raised.value.reason == reason
    assert fake.count() == 1


def test_an_answer_outside_our_schema_is_permanent(fake, make_analyzer):
    answer = {
        "category": "spaceship",
        "colors": [{"name": "red", "hex": "#c0202d"}],
        "pattern": "solid",
        "material": "cotton",
        "season": "summer",
        "style": "casual",
        "formality": 2,
    }
    fake.fail_next("content", content=json.dumps(answer))
    with pytest.raises(PermanentAIError) as raised:
        make_analyzer(fake.url).analyze_item(shirt_png())
    assert raised.value.reason == "invalid_answer"


def test_a_server_error_is_transient(fake, make_analyzer):
    fake.fail_next("server_error")
    with pytest.raises(TransientAIError) as raised:
        make_analyzer(fake.url).analyze_item(shirt_png())
    assert raised.value.reason == "http_500"


def test_a_slow_answer_is_a_transient_timeout(fake, make_analyzer):
    fake.fail_next("hang")
    with pytest.raises(TransientAIError) as raised:
        make_analyzer(fake.url, timeout=0.5).analyze_item(shirt_png())
    assert raised.value.reason == "timeout"


def test_an_unreachable_server_is_a_transient_connection_error(make_analyzer):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransientAIError) as raised:
        make_analyzer(f"http://127.0.0.1:{port}/v1", connect_timeout=1.0).analyze_item(shirt_png())
    assert raised.value.reason == "connection"


def test_a_rejected_key_is_permanent_and_is_not_used_again_for_a_while(fake, make_analyzer):
    analyzer = make_analyzer(fake.url, keys=("sk-revoked-0123456789",), max_wait=0.0)
    with pytest.raises(PermanentAIError) as raised:
        analyzer.analyze_item(shirt_png())
    assert raised.value.reason == "unauthorized"
    assert "sk-revoked" not in str(raised.value)
    with pytest.raises(RateLimited):
        analyzer.analyze_item(shirt_png())
    assert fake.count() == 1


WARDROBE = [
    {"id": "a1", "category": "top", "colors": [{"name": "white", "hex": "#f5f5f2"}]},
    {"id": "b2", "category": "bottom", "colors": [{"name": "navy", "hex": "#1d2950"}]},
    {"id": "c3", "category": "shoes", "colors": [{"name": "black", "hex": "#1c1c1c"}]},
    {"id": "d4", "category": "outerwear", "colors": [{"name": "beige", "hex": "#d9c3a0"}]},
]


def test_openai_names_capsules_using_only_items_from_the_wardrobe(fake, make_analyzer):
    candidates = [{"item_ids": ["a1", "b2", "c3"]}, ["d4", "a1", "b2", "not-mine"]]
    capsules = make_analyzer(fake.url).choose_capsules(candidates, WARDROBE, {"occasion": "work", "size": 3})

    assert len(capsules) == 2
    owned = {item["id"] for item in WARDROBE}
    for capsule in capsules:
        assert capsule["name"]
        assert capsule["description"]
        assert capsule["source"] == "openai"
        assert capsule["item_ids"]
        assert set(capsule["item_ids"]) <= owned
    # The id that is not in the wardrobe was never even offered to the model.
    assert "not-mine" not in json.dumps(fake.last_body()["messages"])


def test_item_ids_the_model_invents_are_dropped(fake, make_analyzer):
    answer = {
        "capsules": [
            {"name": "Office", "description": "Crisp.", "item_ids": ["a1", "zz-invented", "b2", "a1"]},
            {"name": "Ghost", "description": "Nothing real.", "item_ids": ["x9", "y8"]},
        ]
    }
    fake.fail_next("content", content=json.dumps(answer))
    capsules = make_analyzer(fake.url).choose_capsules([["a1", "b2", "c3"]], WARDROBE, {"occasion": "work"})
    assert [c["item_ids"] for c in capsules] == [["a1", "b2"]]
    assert capsules[0]["name"] == "Office"


def test_without_a_key_capsules_get_plain_names_from_their_items():
    capsules = LocalAnalyzer().choose_capsules(
        [["a1", "b2", "c3"], ["d4", "ghost"]], WARDROBE, {"occasion": "work", "season": "winter", "size": 5}
    )
    assert [c["name"] for c in capsules] == ["Winter work look 1", "Winter work look 2"]
    assert capsules[0]["description"] == "White top, navy bottom and black shoes."
    assert capsules[1]["item_ids"] == ["d4"]
    assert all(c["source"] == "local" for c in capsules)


def test_without_a_key_a_red_shirt_on_a_transparent_background_is_red():
    result = LocalAnalyzer().analyze_item(shirt_png(body=(200, 25, 35)))
    assert result["source"] == "local"
    assert [c["name"] for c in result["colors"]] == ["red"]
    assert {k for k, v in result.items() if v is None} == {
        "category",
        "pattern",
        "material",
        "season",
        "style",
        "formality",
    }


def test_without_a_key_two_garments_name_both_colours():
    result = LocalAnalyzer().analyze_item(shirt_png(body=(245, 245, 240), trousers=(30, 40, 80, 255)))
    assert {c["name"] for c in result["colors"]} == {"white", "navy"}


def test_a_fully_transparent_cutout_has_no_colours():
    empty = io.BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(empty, format="PNG")
    assert LocalAnalyzer().analyze_item(empty.getvalue())["colors"] == []


def test_bytes_that_are_not_an_image_are_permanent():
    with pytest.raises(PermanentAIError) as raised:
        LocalAnalyzer().analyze_item(b"definitely not a png")
    assert raised.value.reason == "invalid_image"


@pytest.mark.parametrize(
    ("rgb", "name"),
    [((0, 0, 128), "navy"), ((0, 0, 255), "blue"), ((128, 0, 0), "burgundy"), ((64, 64, 64), "grey")],
)
def test_without_a_key_common_garment_shades_get_the_names_people_use(rgb, name):
    result = LocalAnalyzer().analyze_item(shirt_png(body=rgb))
    assert result["colors"][0]["name"] == name


def test_the_fake_rejects_a_schema_openai_would_reject_and_always_sends_limit_headers(fake):
    client = openai.OpenAI(api_key=KEY_ONE, base_url=fake.url, max_retries=0)
    open_object = {"type": "object", "properties": {"name": {"type": "string"}}}
    try:
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "loose", "strict": True, "schema": open_object},
                },
            )
        assert "additionalProperties" in raised.value.body["message"]
        assert raised.value.response.headers["x-ratelimit-remaining-requests"]
    finally:
        client.close()


def test_the_fake_enforces_rpm_and_speaks_openais_rate_limit_headers():
    # Without our limiter, a burst over the budget gets 429s: the burst test below is not vacuous.
    server = FakeOpenAI(keys=[KEY_ONE], rpm=5, window=2.0).start()
    client = openai.OpenAI(api_key=KEY_ONE, base_url=server.url, max_retries=0)
    try:
        messages = [{"role": "user", "content": "hi"}]
        ok = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        assert ok.headers["x-ratelimit-limit-requests"] == "5"
        assert ok.headers["x-ratelimit-remaining-requests"] == "4"
        assert parse_go_duration(ok.headers["x-ratelimit-reset-requests"]) > 0
        for _ in range(4):
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert raised.value.code == "rate_limit_exceeded"
        assert "Please try again in" in raised.value.body["message"]
        assert 0 < float(raised.value.response.headers["retry-after-ms"]) <= 2000
        assert server.rate_limited == 1
    finally:
        client.close()
        server.stop()


def test_a_burst_twice_the_budget_from_two_boxes_gets_no_429(make_analyzer):
    # 30 requests per 4 s window (a minute, shrunk) enforced by the fake; 60 items from 8 worker threads on
    # two "boxes" sharing the Redis budget. A worker told RateLimited reschedules, like the Huey task does.
    server = FakeOpenAI(keys=[KEY_ONE], rpm=30, window=4.0, latency=0.05).start()
    try:
        boxes = [make_analyzer(server.url, rpm=30, window=4.0) for _ in range(2)]
        pending = list(range(60))
        done: list[int] = []
        lock = threading.Lock()

        def worker(analyzer):
            while True:
                with lock:
                    if not pending:
                        return
                    item = pending.pop()
                while True:
                    try:
                        analyzer.analyze_item(shirt_png())
                        break
                    except RateLimited as exc:
                        time.sleep(exc.retry_after)
                with lock:
                    done.append(item)

        threads = [threading.Thread(target=worker, args=(boxes[i % 2],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert sorted(done) == list(range(60))
        assert server.rate_limited == 0
    finally:
        server.stop()
