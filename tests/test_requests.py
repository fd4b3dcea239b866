"""Hostile requests: whatever a client sends, the answer is never a 5xx, and every 4xx is a JSON error.

The corpus is sent to every route falcon.inspect finds on the app (so a new route is covered without editing this
file), with and without valid init data, through falcon's TestClient; test_server_requests.py repeats the path
tricks that depend on the server through real gunicorn.
"""

import re

import falcon.inspect
import falcon.testing
import pytest
from conftest import auth_header, image_bytes, make_config, multipart, upload

from wardrobe.app import create_app

LIST_ROUTES = ["/api/v1/items", "/api/v1/capsules", "/api/v1/brands?q=uni"]
# Digits to str.isdigit(), not to us: superscript, Arabic-Indic, fullwidth, NKo; and more digits than int() reads.
NON_ASCII_DIGITS = ["²", "١٢", "٣", "\uff11", "߁", "1" * 5000]


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture
def item_url(client, user):
    return "/api/v1/items/" + upload(client, user, image_bytes()).json["item"]["id"]


def problem(resp, what):
    """What is wrong with the answer to a hostile request, or None: a 5xx, or a 4xx that is not a JSON error."""
    if resp.status_code >= 500:
        return (what, resp.status_code, resp.text[:200])
    if resp.status_code >= 400:
        if not resp.headers.get("content-type", "").startswith("application/json"):
            return (what, resp.status_code, resp.headers.get("content-type"), resp.text[:100])
        try:
            body = resp.json
        except ValueError:
            body = None
        if not (isinstance(body, dict) and isinstance(body.get("title"), str)):
            return (what, resp.status_code, resp.text[:100])
    return None


class Problems(list):
    def check(self, resp, what):
        found = problem(resp, what)
        if found is not None:
            self.append(found)
        return resp

    def __bool__(self):
        return len(self) > 0

    def summary(self):
        return f"{len(self)} bad answers:\n" + "\n".join(repr(p)[:400] for p in self[:40])


@pytest.mark.parametrize("route", LIST_ROUTES)
@pytest.mark.parametrize("limit", NON_ASCII_DIGITS)
def test_limit_takes_only_ascii_digits(client, user, route, limit):
    sep = "&" if "?" in route else "?"
    resp = client.simulate_get(f"{route}{sep}limit={limit}", headers=user)
    assert resp.status_code == 400, resp.text
    assert resp.json["title"] == "Invalid limit"
    assert client.simulate_get(f"{route}{sep}limit=5", headers=user).status_code == 200


@pytest.mark.parametrize("depth", [40, 1000, 10_000])
def test_deeply_nested_json_is_400(client, user, item_url, depth):
    headers = {**user, "Content-Type": "application/json"}
    for method, path, field in (
        ("PATCH", "/api/v1/me", "display_name"),
        ("PATCH", item_url, "notes"),
        ("POST", "/api/v1/capsules", "occasion"),
    ):
        body = f'{{"{field}": {deep(depth)}}}'
        resp = client.simulate_request(method, path, body=body, headers=headers)
        assert resp.status_code == 400, (method, path, resp.status_code, resp.text[:200])
        assert resp.json["title"] == "Invalid JSON"
        assert "nested" in resp.json["description"] or "depth" in resp.json["description"]


def test_json_nested_within_the_bound_still_gets_the_schema_error(client, user):
    body = f'{{"display_name": {deep(20)}}}'
    resp = client.simulate_patch(
        "/api/v1/me", body=body, headers={**user, "Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json["title"] == "Invalid body"
    assert "display_name" in resp.json["description"]


def test_a_json_body_larger_than_any_real_request_is_413(client, user):
    # A valid shape, just enormous: validating it item by item would hold the worker for seconds.
    body = '{"favourite_colors": [' + ",".join(['"red"'] * 50_000) + "]}"
    resp = client.simulate_patch(
        "/api/v1/me", body=body, headers={**user, "Content-Type": "application/json"}
    )
    assert resp.status_code == 413, resp.text[:200]
    assert resp.json["title"]


@pytest.mark.parametrize(
    "accept",
    ["application/xml", "text/xml", "text/html", "image/png", "text/xml;q=1, application/json;q=0.1"],
)
def test_errors_are_json_whatever_the_client_accepts(client, user, accept):
    for path, headers in (("/api/v1/me", {}), ("/api/v1/items?limit=0", user), ("/nope", user)):
        resp = client.simulate_get(path, headers={**headers, "Accept": accept})
        assert resp.status_code in (400, 401, 404)
        assert resp.headers["content-type"].startswith("application/json"), (path, accept)
        assert resp.json["title"]


# --- the corpus ----------------------------------------------------------------------------------------------

ID = "00000000-0000-0000-0000-000000000000"
IMAGE = "ab" * 32 + ".png"
QUERIES = [
    "limit=²",
    "limit=١٢",
    "limit=\uff11",
    "limit=" + "9" * 5000,
    "limit=1&limit=2",
    "limit=",
    "limit=%00",
    "limit=-1",
    "cursor=%00",
    "cursor=" + "A" * 5000,
    "cursor=W10&cursor=W10",
    "category=top&category=shoes",
    "season=%00",
    "q=%00%00",
    "q=²²",
    "q=" + "x" * 10_000,
    "q=ab&q=cd",
    "seconds=²",
    "seconds=١٢",
    "seconds=" + "9" * 5000,
    "type=%00",
    "format=folded&format=pprof",
    "route=" + "r" * 1000,
    "%ff%fe=%ff",
    "=&&=&",
    "a[b][c]=1",
]
JSON = "application/json"
BODIES = [
    (deep(40), JSON),
    (deep(1000), JSON),
    (deep(5000), JSON),
    (f'{{"a": {deep(900)}}}', JSON),
    ('{"display_name": "' + "x" * 2_000_000 + '"}', JSON),
    ("[" + "0," * 200_000 + "0]", JSON),
    ('{"display_name": "a\\u0000b"}', JSON),
    ('{"a\\u0000": 1}', JSON),
    ('{"notes": "\x00"}', JSON),
    ('{"notes": "\\ud800"}', JSON),
    ('{"size": 1e400}', JSON),
    ('{"size": 99999999999999999999999}', JSON),
    ('{"size": NaN}', JSON),
    (b"\xff\xfe{}", JSON),
    ("{}", JSON),
    ("null", JSON),
    ('"x"', JSON),
    ("{", JSON),
    ("{}", "application/json; charset=ebcdic"),
    ("{}", "application/jsonx"),
    ("{}", "text/plain"),
    ("{}", "garbage"),
    ("{}", ";;;"),
    ("{}", "multipart/form-data"),
    ("{}", "multipart/form-data; boundary="),
    ("--b\r\n\r\n", "multipart/form-data; boundary=b"),
    ("{}", None),
    ("", None),
    ("", JSON),
]
# A malformed Content-Length is the WSGI server's to refuse (falcon's TestClient will not even send one).
HEADERS = [
    {"Authorization": "tma " + "a" * 20_000},
    {"Authorization": "Bearer " + "b" * 20_000},
    {"Authorization": "Bearer "},
    {"Authorization": "tma \x00"},
    {"X-Request-ID": "r" * 10_000},
    {"X-Request-ID": "abc\x00def"},
    {"X-Request-ID": "probe-123\n"},
    {"If-None-Match": '"' * 5000},
    {"If-None-Match": "W/" + "," * 5000},
    {"If-None-Match": "*"},
    {"Accept": "application/xml"},
    {"Accept": "text/html"},
    {"Accept": ";" * 5000},
    {"Content-Type": "x" * 10_000},
    {"X-Forwarded-For": "x" * 10_000},
    {"X-Forwarded-For": "127.0.0.1, ::1"},
    {"Range": "bytes=0-1,2-3"},
]
WRONG_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "TRACE"]
UNKNOWN_METHODS = ["FOO", "PROPFIND"]


@pytest.fixture(scope="module")
def corpus_app(tmp_path_factory):
    # Every route mounted (the profiler on), and limits high enough that they never answer instead of the route.
    config = make_config(
        tmp_path_factory.mktemp("corpus"),
        WARDROBE_PROFILE_HZ=100,
        WARDROBE_RATE_LIMIT_UPLOAD="100000/60",
        WARDROBE_RATE_LIMIT_CAPSULE="100000/60",
        WARDROBE_RATE_LIMIT_BRANDS="100000/60",
    )
    app = create_app(config)
    yield app
    app.services.close()


def routes(app):
    """(template, a concrete path, its methods) for every route the app serves."""
    out = []
    for route in falcon.inspect.inspect_routes(app):
        path = route.path.replace("{name}", IMAGE)
        path = re.sub(r"\{[^}]+\}", ID, path)
        out.append((route.path, path, {m.method for m in route.methods if not m.internal}))
    return out


def path_tricks(path):
    head, _, last = path.rpartition("/")
    tricks = [
        "/" + path,
        "//" + path,
        path + "/",
        path + "//",
        f"{head}/./{last}",
        f"{head}/../{head.rsplit('/', 1)[-1]}/{last}",
        f"{head}/%2e%2e/{last}",
        f"{head}%2F{last}",
        f"{head}/{last}%2F",
        "/" + path[1:].replace("/", "%2F"),
        path + "%00",
        path + "\x00",
        f"{head}/\x00{last}",
        path + "/" + "a" * 5000,
        path.upper(),
    ]
    return [t if t.startswith("/") else "/" + t for t in tricks]


def send(client, method, path, *, auth, query=None, body=None, content_type=None, headers=None):
    sent = {**(auth or {}), **(headers or {})}
    if content_type is not None:
        sent.setdefault("Content-Type", content_type)
    return client.simulate_request(method, path, query_string=query, body=body, headers=sent)


@pytest.fixture(params=[False, True], ids=["anonymous", "signed-in"])
def auth(request):
    return auth_header(987_654_321_000 + request.param) if request.param else None


def every_route(corpus_app, requests):
    """Send what `requests(path, methods)` yields as (method, path, send's keywords, label) to every route."""
    client, problems = falcon.testing.TestClient(corpus_app), Problems()
    for _, path, methods in routes(corpus_app):
        for method, sent_path, how, label in requests(path, methods):
            problems.check(send(client, method, sent_path, **how), label)
    return problems


def test_path_tricks_on_every_route(corpus_app, auth):
    problems = every_route(
        corpus_app,
        lambda path, methods: (
            (method, tricky, {"auth": auth}, (method, tricky[:80]))
            for tricky in path_tricks(path)
            for method in methods
        ),
    )
    assert not problems, problems.summary()


def test_hostile_query_strings_on_every_route(corpus_app, auth):
    problems = every_route(
        corpus_app,
        lambda path, methods: (
            (method, path, {"auth": auth, "query": query}, (method, path, query[:40]))
            for method in methods
            for query in QUERIES
        ),
    )
    assert not problems, problems.summary()


def test_hostile_bodies_on_every_route(corpus_app, auth):
    form, form_type = multipart({"image": ("a.gif", b"GIF89a" + b"\x00" * 64, "image/gif"), "notes": "\x00"})
    problems = every_route(
        corpus_app,
        lambda path, methods: (
            (
                method,
                path,
                {"auth": auth, "body": body, "content_type": content_type},
                (method, path, str(body)[:40], content_type),
            )
            for method in methods - {"GET"}
            for body, content_type in [*BODIES, (form, form_type)]
        ),
    )
    assert not problems, problems.summary()


def test_hostile_headers_on_every_route(corpus_app, auth):
    problems = every_route(
        corpus_app,
        lambda path, methods: (
            (
                method,
                path,
                {"auth": auth, "headers": headers, "body": "{}", "content_type": JSON},
                (method, path, {k: v[:40] for k, v in headers.items()}),
            )
            for method in methods
            for headers in HEADERS
        ),
    )
    assert not problems, problems.summary()


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")  # wsgiref's validator, about FOO and PROPFIND
def test_wrong_methods_on_every_route_are_405_json_with_allow(corpus_app, auth):
    client, problems = falcon.testing.TestClient(corpus_app), Problems()
    for template, path, methods in routes(corpus_app):
        for method in set(WRONG_METHODS) - methods:
            resp = problems.check(send(client, method, path, auth=auth), (method, path))
            if resp.status_code == 405:
                allowed = {m.strip() for m in resp.headers.get("allow", "").split(",")}
                if not methods <= allowed:
                    problems.append((method, template, "Allow", resp.headers.get("allow")))
            elif not (resp.status_code == 401 and auth is None):
                # only an authenticated route may turn the request away first, for want of init data
                problems.append((method, template, resp.status_code))
        for method in UNKNOWN_METHODS:
            resp = problems.check(send(client, method, path, auth=auth), (method, path))
            if resp.status_code not in (400, 401, 405):
                problems.append((method, template, resp.status_code))
    assert not problems, problems.summary()
