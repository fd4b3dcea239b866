"""One request, one id: nginx and the app keep and log the same X-Request-ID, whatever the client sent.

Real nginx (conf/nginx/wardrobe-local.conf) in front of real gunicorn; the fleet config and the Ansible template
are checked to hold the same rule as the one exercised here.
"""

import http.client
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import auth_header, image_bytes, multipart, server_env
from processes import gunicorn

from harness.processes import ROOT, free_port, stop_process, wait_port
from wardrobe.web.middleware import REQUEST_ID_RE

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONFIGS = [
    ROOT / "conf" / "nginx" / "wardrobe.conf",
    ROOT / "conf" / "nginx" / "wardrobe-local.conf",
    ROOT / "ansible" / "roles" / "nginx_lb" / "templates" / "wardrobe.conf.j2",
]
MAP_RE = re.compile(r"map \$http_x_request_id \$wardrobe_request_id \{\s*\"~\^(?P<pattern>[^\"]*)\$\"")


@pytest.mark.parametrize("path", NGINX_CONFIGS, ids=lambda p: p.name)
def test_nginx_keeps_exactly_the_request_ids_the_app_keeps(path):
    found = MAP_RE.search(path.read_text())
    assert found, f"no X-Request-ID map in {path}"
    assert found["pattern"] == REQUEST_ID_RE.pattern


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """(nginx port, gunicorn process, nginx access log) with nginx proxying to the app."""
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed")
    tmp = tmp_path_factory.mktemp("edge")
    app, base = gunicorn(server_env(tmp), tmp / "gunicorn.log", workers=1)
    # Not pytest's tmp_path: nginx's workers run as nobody when tests run as root and must traverse it.
    prefix = Path(tempfile.mkdtemp(prefix="wardrobe-edge-"))
    prefix.chmod(0o755)
    for sub in ("logs", "tmp", "cache"):
        (prefix / sub).mkdir()
    port = free_port()
    text = (ROOT / "conf" / "nginx" / "wardrobe-local.conf").read_text()
    text = text.replace("@PREFIX@", str(prefix)).replace("@LISTEN@", f"127.0.0.1:{port}")
    (prefix / "nginx.conf").write_text(text.replace("@BACKEND@", base.split("//")[1]))
    nginx = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, 10, nginx)
        yield port, app, prefix / "logs" / "access.log"
    finally:
        stop_process(nginx, timeout=10)
        app.stop()
        shutil.rmtree(prefix, ignore_errors=True)


def through(port, method, path, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Host": "localhost", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.msg.get_all("X-Request-ID") or [], resp.msg, body
    finally:
        conn.close()


def logged(log_text, request_id):
    return [line for line in log_text.splitlines() if f'"request_id":"{request_id}"' in line]


def wait_logged(read, request_id):
    # Both access lines are written after the answer has left; wait for them (this asserts no timing).
    deadline = time.monotonic() + 10
    while not logged(read(), request_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    return logged(read(), request_id)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sent, kept",
    [
        ("r" * 100, True),
        ("edge-" + "a1B2.c3:d4_" * 11, True),  # 126 characters of the whole allowed set
        ("probe-12", True),
        ("r" * 129, False),
        ("short", False),
        ("no spaces please", False),
    ],
)
def test_the_client_nginx_and_the_app_see_one_and_the_same_id(edge, sent, kept):
    port, app, nginx_log = edge
    status, ids, _, _ = through(port, "GET", "/healthz", {"X-Request-ID": sent})
    assert status == 200
    assert len(ids) == 1, ids  # one header: nginx's, the same as the app's
    (request_id,) = ids
    if kept:
        assert request_id == sent
    else:
        assert request_id != sent and re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert len(wait_logged(app.output, request_id)) == 1, app.tail()
    assert len(wait_logged(nginx_log.read_text, request_id)) == 1


@pytest.mark.slow
def test_a_cached_image_answers_with_this_requests_id_not_the_first_ones(edge):
    port, _, _ = edge
    form, ctype = multipart({"image": ("a.jpg", image_bytes(color=(1, 2, 3)), "image/jpeg")})
    status, _, _, body = through(
        port, "POST", "/api/v1/items", {**auth_header(444_000_111_222), "Content-Type": ctype}, form
    )
    assert status == 202, body
    image_url = json.loads(body)["item"]["image_url"]
    for n, cache in ((1, "MISS"), (2, "HIT")):
        sent = f"image-request-{n}"
        status, ids, headers, _ = through(port, "GET", image_url, {"X-Request-ID": sent})
        assert (status, headers["X-Cache-Status"]) == (200, cache)
        assert ids == [sent]
