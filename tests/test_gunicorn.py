"""The real server: gunicorn with the gevent worker, driven over HTTP by a few hundred concurrent clients."""

import http.client
import runpy
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import auth_header, image_bytes, multipart, server_env
from gunicorn.config import Config as GunicornConfig
from gunicorn.http import message
from processes import ROOT, gunicorn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn")
    env = server_env(tmp, WARDROBE_DB_POOL_SIZE=10)
    proc, base = gunicorn(env, tmp / "gunicorn.log")
    yield base, proc
    proc.stop()


def test_hundreds_of_concurrent_connections_all_get_answers(server):
    base, proc = server
    port = int(base.rsplit(":", 1)[1])
    users = [auth_header(900_000_000 + i) for i in range(40)]
    body, ctype = multipart({"image": ("a.jpg", image_bytes(), "image/jpeg")})
    start = threading.Barrier(300)

    def session(n: int) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = users[n % len(users)]
        statuses = []
        start.wait()  # all 300 connections are open and in flight together
        for i in range(4):
            if n % 25 == 0 and i == 0:
                conn.request("POST", "/api/v1/items", body=body, headers={**headers, "Content-Type": ctype})
            else:
                conn.request("GET", "/api/v1/items?limit=5" if i % 2 else "/api/v1/me", headers=headers)
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        conn.close()
        return statuses

    began = time.monotonic()
    with ThreadPoolExecutor(300) as pool:
        results = [s for statuses in pool.map(session, range(300)) for s in statuses]
    elapsed = time.monotonic() - began
    assert len(results) == 1200
    assert set(results) <= {200, 202}, {s: results.count(s) for s in set(results)}
    assert proc.proc.poll() is None
    print(f"1200 requests over 300 concurrent connections in {elapsed:.1f}s")


def test_access_log_lines_are_json_with_request_id(server):
    base, proc = server
    conn = http.client.HTTPConnection(base.split("//")[1])
    conn.request("GET", "/healthz", headers={"X-Request-ID": "probe-123"})
    resp = conn.getresponse()
    assert resp.getheader("X-Request-ID") == "probe-123"
    time.sleep(0.3)
    assert '"request_id":"probe-123"' in proc.output()


def test_the_api_config_gets_gunicorns_c_http_parser(monkeypatch, tmp_path):
    # gunicorn falls back to its Python parser silently (no gunicorn_h1c, or a setting it is incompatible with),
    # which costs about a tenth of a worker's CPU under load.
    monkeypatch.setenv("WARDROBE_TELEGRAM_BOT_TOKEN", "1:parser-check")
    monkeypatch.setenv("WARDROBE_DATA_DIR", str(tmp_path))
    # The config file exports its metrics directory into os.environ; set here, monkeypatch takes it back after,
    # so the processes later tests start do not all inherit (and wipe) one shared directory.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    cfg = GunicornConfig()
    for name, value in runpy.run_path(str(ROOT / "conf" / "gunicorn.conf.py")).items():
        if name in cfg.settings:
            cfg.set(name, value)
    assert message._check_fast_parser(cfg)


def test_a_malformed_request_line_or_header_is_a_400_from_the_c_parser(server):
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    for raw in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", b"GET\x00 / HTTP/1.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(raw)
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
