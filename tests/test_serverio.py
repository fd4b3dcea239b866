"""The API's response writer: gunicorn's exact bytes, in one send where the head and a body go together."""

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from wardrobe.ops import serverio

JSON = [("Content-Type", "application/json"), ("Content-Length", "11")]


class RecordingSocket:
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes, *flags: int) -> None:
        self.sends.append(bytes(data))


def respond(request: bytes, status: str, headers: list, body: list[bytes], cfg=None) -> list[bytes]:
    cfg = cfg or Config()
    req = next(iter(RequestParser(cfg, iter([request]), ("127.0.0.1", 40000))))
    sock = RecordingSocket()
    resp, _ = wsgi.create(req, sock, ("127.0.0.1", 40000), ("127.0.0.1", 8000), cfg)
    resp.start_response(status, headers)
    for part in body:
        resp.write(part)
    resp.close()
    return sock.sends


CASES = {
    "a JSON answer": (b"GET /api/v1/me HTTP/1.1\r\nHost: a\r\n\r\n", "200 OK", JSON, [b'{"id": 123}']),
    "HTTP/1.0, closing": (b"GET /api/v1/me HTTP/1.0\r\n\r\n", "200 OK", JSON, [b'{"id": 123}']),
    "an empty body": (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", "200 OK", [("Content-Length", "0")], [b""]),
    "no body parts": (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", "204 No Content", [], []),
    "HEAD": (b"HEAD /api/v1/me HTTP/1.1\r\nHost: a\r\n\r\n", "200 OK", JSON, [b'{"id": 123}']),
    "304": (b"GET /api/v1/items HTTP/1.1\r\nHost: a\r\n\r\n", "304 Not Modified", [("ETag", '"v1"')], [b""]),
    "chunked": (
        b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        "200 OK",
        [("Content-Type", "text/plain")],
        [b"ab", b"cd"],
    ),
    "several parts": (
        b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        "200 OK",
        [("Content-Length", "6")],
        [b"ab", b"cd", b"ef"],
    ),
    "a body longer than its length": (
        b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        "200 OK",
        [("Content-Length", "3")],
        [b"abcdef"],
    ),
}


@pytest.fixture
def same_date(monkeypatch):
    monkeypatch.setattr(util, "http_date", lambda timestamp=None: "Tue, 24 Nov 2026 22:55:43 GMT")


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_client_receives_exactly_gunicorns_bytes(case, same_date, monkeypatch):
    gunicorns = b"".join(respond(*CASES[case]))
    monkeypatch.setattr(wsgi.Response, "write", wsgi.Response.write)  # restored after the test
    serverio.send_head_with_body()
    assert b"".join(respond(*CASES[case])) == gunicorns


def test_a_json_answer_leaves_in_one_send_instead_of_two(same_date, monkeypatch):
    request, status, headers, body = CASES["a JSON answer"]
    assert len(respond(request, status, headers, body)) == 2  # gunicorn alone: the head, then the body
    monkeypatch.setattr(wsgi.Response, "write", wsgi.Response.write)
    serverio.send_head_with_body()
    (sent,) = respond(request, status, headers, body)
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n") and sent.endswith(b'\r\n\r\n{"id": 123}')
    # Later parts of a body still follow as they come.
    assert len(respond(*CASES["several parts"])) == 3


def test_a_workers_settings_read_the_same_from_the_snapshot_and_requests_go_out_alike(same_date):
    configured = Config()
    configured.set("keepalive", 75)
    configured.set("forwarded_allow_ips", "10.0.0.1")
    snapshot = Config()
    snapshot.set("keepalive", 75)
    snapshot.set("forwarded_allow_ips", "10.0.0.1")
    serverio.snapshot_settings(snapshot)
    for name in configured.settings:
        assert getattr(snapshot, name) == getattr(configured, name), name
    assert snapshot.keepalive == 75 and "keepalive" in vars(snapshot)  # read without Config.__getattr__
    assert snapshot.worker_class is configured.worker_class  # properties still compute themselves
    for case in CASES.values():
        assert respond(*case, cfg=snapshot) == respond(*case, cfg=configured)


def test_the_startup_heap_is_out_of_the_collectors_reach():
    import gc

    try:
        serverio.freeze_startup_heap()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the modules and objects this test process started with
        # A full collection now walks only what was created after the freeze.
        assert len(gc.get_objects()) < frozen
    finally:
        gc.unfreeze()
