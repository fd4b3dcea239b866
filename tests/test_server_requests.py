"""Hostile requests through real gunicorn (gevent worker): path handling that depends on the server, and
uploads the app turns away, which must leave one access line each and no traceback in the server's log."""

import http.client
import json
import time

import pytest
from conftest import auth_header, image_bytes, multipart, png_bomb, server_env
from processes import gunicorn

pytestmark = pytest.mark.slow

PATHS = [
    "//api/v1/me",
    "///api/v1/items",
    "//api/v1/items/00000000-0000-0000-0000-000000000000",
    "/api/v1/./me",
    "/api/v1/../v1/me",
    "/api/v1/%2e%2e/v1/me",
    "/api/v1/%2E%2E/%2E%2E/healthz",
    "/api/v1/items/",
    "/api/v1/items%2F",
    "/api/v1/items/a%2Fb",
    "/api/v1/items/%00",
    "/api/v1/jobs/%00",
    "/api/v1/me%00",
    "/api/v1/items?limit=%C2%B2",
    "/api/v1/items?limit=%D9%A1%D9%A2",
    "/api/v1/capsules?limit=%C2%B2",
    "/api/v1/brands?q=uni&limit=%EF%BC%91",
    "/api/v1/items?limit=1&limit=2",
    "/api/v1/items?cursor=%00",
    "/api/v1/brands?q=ab%00",
    "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/images/..%2F..%2Fetc%2Fpasswd",
    "//healthz",
    "//readyz",
    "//metrics",
    "/%2e/api/v1/me",
    "/api/v1/%ff%fe",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server-requests")
    proc, base = gunicorn(
        server_env(tmp, WARDROBE_RATE_LIMIT_UPLOAD="1000/60"), tmp / "gunicorn.log", workers=1
    )
    yield int(base.rsplit(":", 1)[1]), proc
    proc.stop()


def send(port, method, target, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in {"Content-Length": str(len(body or b"")), **(headers or {})}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
def test_path_tricks_through_gunicorn_are_never_a_server_error(server, signed_in):
    port, _ = server
    headers = auth_header(555_000_111_222) if signed_in else {}
    bad = []
    for path in PATHS:
        for method in ("GET", "DELETE", "PATCH"):
            status, content_type, body = send(port, method, path, headers)
            if status >= 500:
                bad.append((method, path, status, body[:120]))
            elif status >= 400 and not (
                content_type.startswith("application/json") and json.loads(body)["title"]
            ):
                bad.append((method, path, status, content_type, body[:120]))
    assert bad == [], "\n".join(map(repr, bad))


def test_turned_away_uploads_log_one_access_line_each_and_no_traceback(server):
    port, proc = server
    user = auth_header(555_000_111_333)
    cases = [
        (b"\xff\xd8\xff" + b"\x00" * 200, 400),  # corrupt JPEG
        (image_bytes("JPEG", size=(300, 300))[:400], 400),  # truncated
        (b"GIF89a" + b"\x00" * 100, 415),  # not JPEG, PNG or WebP
        (png_bomb(), 413),  # billions of pixels claimed
    ]
    before = len(proc.output())
    for data, status in cases:
        body, ctype = multipart({"image": ("x.jpg", data, "application/octet-stream")})
        answer = send(port, "POST", "/api/v1/items", {**user, "Content-Type": ctype}, body)
        assert answer[0] == status, answer
        assert json.loads(answer[2])["title"]
    # The last access line is written after the answer is sent; wait for it (not a timing assertion).
    deadline = time.monotonic() + 10
    while (
        proc.output()[before:].count('"route":"/api/v1/items"') < len(cases) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    log = proc.output()[before:]
    access = [json.loads(line) for line in log.splitlines() if line.startswith('{"request_id"')]
    assert sorted(a["status"] for a in access) == sorted(s for _, s in cases), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "failed with" not in log, log[-3000:]
