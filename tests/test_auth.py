"""Telegram init data: what gets in, what is turned away with 401, and that nothing crashes."""

import re
import time
import urllib.parse

import falcon.inspect
import falcon.testing
import pytest
from conftest import BOT_TOKEN, auth_header, make_config

from wardrobe.app import create_app
from wardrobe.web.auth import AuthError, InitDataValidator, sign_init_data


def test_valid_init_data_signs_in_and_creates_the_user(client, user):
    resp = client.simulate_get("/api/v1/me", headers=user)
    assert resp.status_code == 200
    assert resp.json["display_name"] == "Test"


def test_real_capture_with_escaped_json_and_signature_field_validates():
    # The user JSON is used exactly as received (with its \/ escapes); a `signature` field stays in the check.
    user = (
        '{"id":279058397,"first_name":"Vladislav","photo_url":"https:\\/\\/t.me\\/i\\/userpic\\/320\\/x.svg"}'
    )
    pairs = [("auth_date", "1733584787"), ("signature", "abc_def-123"), ("user", user)]
    import hashlib
    import hmac

    secret = hmac.new(b"WebAppData", BOT_TOKEN.encode(), hashlib.sha256).digest()
    check = "\n".join(sorted(f"{k}={v}" for k, v in pairs))
    digest = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    raw = urllib.parse.urlencode([*pairs, ("hash", digest)])
    validator = InitDataValidator(BOT_TOKEN, max_age=0)
    assert validator.validate(raw).id == 279058397
    tampered = raw.replace("Vladislav", "Mallory")
    with pytest.raises(AuthError):
        validator.validate(tampered)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer abc",
        "tma ",
        "tma garbage",
        "tma hash=abc&auth_date=1&user=%7B%7D",
        "tma " + "a" * 20000,
        "tma user=%ff%fe&hash=00",
        "tma \u00e9\u00e8=1&hash=2",
        "tma auth_date=1&auth_date=2&hash=3",
    ],
)
def test_missing_or_malformed_header_is_401_json(client, header):
    headers = {} if header is None else {"Authorization": header}
    resp = client.simulate_get("/api/v1/items", headers=headers)
    assert resp.status_code == 401
    assert resp.json["title"] == "Unauthorized"
    assert resp.headers["www-authenticate"].startswith("tma")


def test_wrong_bot_token_is_rejected(client):
    resp = client.simulate_get("/api/v1/me", headers=auth_header(77, token="999:other-bot"))
    assert resp.status_code == 401
    assert "signature" in resp.json["description"]


def test_expired_init_data_is_rejected_and_replay_allowed_when_max_age_is_zero(tmp_path):
    import falcon.testing

    from wardrobe.app import create_app

    old = auth_header(4242, auth_date=int(time.time()) - 2 * 86400)
    strict = falcon.testing.TestClient(create_app(make_config(tmp_path)))
    resp = strict.simulate_get("/api/v1/me", headers=old)
    assert resp.status_code == 401
    assert "expired" in resp.json["description"]

    replay = falcon.testing.TestClient(create_app(make_config(tmp_path, WARDROBE_INIT_DATA_MAX_AGE=0)))
    assert replay.simulate_get("/api/v1/me", headers=old).status_code == 200


def test_non_integer_user_id_is_rejected():
    raw = sign_init_data(BOT_TOKEN, {"id": "12", "first_name": "x"})
    with pytest.raises(AuthError):
        InitDataValidator(BOT_TOKEN, 0).validate(raw)


def test_health_is_public_and_api_is_not(client):
    assert client.simulate_get("/healthz").status_code == 200
    assert client.simulate_get("/api/v1/me").status_code == 401


def test_a_remembered_session_still_expires():
    now = [1_000_000.0]
    validator = InitDataValidator(BOT_TOKEN, max_age=60, clock=lambda: now[0])
    raw = sign_init_data(BOT_TOKEN, {"id": 5, "first_name": "x"}, auth_date=int(now[0]))
    assert validator.validate(raw).id == 5
    assert validator.validate(raw).id == 5  # second time from memory
    now[0] += 61
    with pytest.raises(AuthError, match="expired"):
        validator.validate(raw)
    with pytest.raises(AuthError):
        validator.validate(raw.replace("hash=", "hash=0"))


# Routes anyone may call; /metrics and /debug/* have the operator guard of their own.
PUBLIC_ROUTES = set(
    "/healthz /readyz /openapi.json /images/{name} /app /app/{name} /metrics /debug/pprof/profile /debug/flamegraph".split()
)


@pytest.mark.parametrize(
    "path", ["//api/v1/me", "///api/v1/me", "//api/v1/me/", "//api/v1/items", "//api/v1/brands"]
)
def test_api_routes_reached_through_extra_slashes_still_need_init_data(client, path):
    resp = client.simulate_get(path, params={"q": "uni"})
    assert resp.status_code == 401, resp.text
    assert resp.json["title"] == "Unauthorized"


def test_user_data_stays_private_however_its_path_is_spelled(client, user):
    resp = client.simulate_get("//api/v1/me", headers=user)
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "private, no-cache"
    assert resp.headers["vary"] == "Authorization"


def test_every_route_needs_init_data_unless_it_is_declared_public(tmp_path):
    # The profiler on, so the /debug routes are mounted too; a new route is covered without editing this test.
    app = create_app(make_config(tmp_path, WARDROBE_PROFILE_HZ=100))
    client = falcon.testing.TestClient(app)
    routes = falcon.inspect.inspect_routes(app)
    assert PUBLIC_ROUTES <= {r.path for r in routes}
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", route.path)
        for method in (m.method for m in route.methods if not m.internal):
            resp = client.simulate_request(method, path)
            if route.path in PUBLIC_ROUTES:
                assert resp.status_code != 401, (method, route.path)
            else:
                assert resp.status_code == 401, (method, route.path, resp.status_code)
                assert resp.json["title"] == "Unauthorized"


@pytest.mark.parametrize("path", ["/api/v1/nope", "//api/v1/nope", "/api/v2/me", "/nope", "/api/v1/./me"])
def test_unmatched_paths_are_404_json_with_or_without_init_data(client, user, path):
    for headers in ({}, user):
        resp = client.simulate_get(path, headers=headers)
        assert resp.status_code == 404, (path, headers.keys(), resp.status_code)
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json["title"]
