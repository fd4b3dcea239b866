"""A local stand-in for the upstream brand API (`GET /brands?q=&limit=` → `{"brands": [{"name": ...}]}`).

`mode` picks how it misbehaves: normal, sleep, error (500), garbage, huge, huge_unsized, trickle, and
body (answers 200 with whatever bytes are in `.body`).
Run by hand with `python -m tests.fakes.brand_server --port 8090`.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.fakes.local_http import LocalHTTPServer, QuietHandler

DEFAULT_BRANDS = ["Nike", "Nike ACG", "Nikon Apparel", "Adidas", "Zara", "Upstream Only Label"]
MODES = ("normal", "sleep", "error", "garbage", "huge", "huge_unsized", "trickle", "body")


class BrandServer(LocalHTTPServer):
    """Threaded HTTP server on 127.0.0.1 with a settable failure mode and a request counter."""

    def __init__(self, brands: list[str] | None = None, port: int = 0):
        self.brands = list(brands or DEFAULT_BRANDS)
        self.mode = "normal"
        self.delay = 0.0  # seconds: how long "sleep" waits before answering normally
        self.trickle_interval = 0.1  # seconds between single bytes in "trickle"
        self.body = b""  # what "body" answers
        self.queries: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        super().__init__(port)

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.queries)

    def reset(self, mode: str = "normal", delay: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self.mode, self.delay = mode, delay
            self.queries.clear()

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    def _answer(self, q: str) -> bytes:
        matches = [name for name in self.brands if q.casefold() in name.casefold()]
        return json.dumps({"brands": [{"name": name} for name in matches]}).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/brands":
                    self.send_body(404, b'{"error": "not found"}')
                    return
                q = parse_qs(url.query).get("q", [""])[0]
                with server._lock:
                    server.queries.append(q)
                    mode, delay = server.mode, server.delay
                try:
                    self._respond(mode, delay, q)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up at its deadline, which is the point of several modes

            def _respond(self, mode: str, delay: float, q: str) -> None:
                if mode == "sleep":
                    server._stopping.wait(delay)
                    self.send_body(200, server._answer(q))
                elif mode == "error":
                    self.send_body(500, b'{"error": "internal"}')
                elif mode == "body":
                    self.send_body(200, server.body)
                elif mode == "garbage":
                    self.send_body(200, b"<html>\x00\xff not json")
                elif mode == "huge":
                    self.send_body(200, b'{"brands": [' + b'{"name": "Padding"},' * 200_000 + b"]}")
                elif mode == "huge_unsized":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    for _ in range(200):
                        self.wfile.write(b'{"name": "Padding"},' * 1000)
                else:
                    body = server._answer(q)
                    if mode == "trickle":
                        self._trickle(body)
                    else:
                        self.send_body(200, body)

            def _trickle(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                for byte in body:
                    if server._stopping.wait(server.trickle_interval):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--mode", choices=MODES, default="normal")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    fake = BrandServer(port=args.port)
    fake.reset(args.mode, args.delay)
    fake.serve_until_interrupted(f"brand API fake on {fake.url} in mode {args.mode}")


if __name__ == "__main__":
    main()
