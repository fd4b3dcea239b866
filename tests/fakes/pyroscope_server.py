"""A local stand-in for Pyroscope's `POST /ingest`, validating requests the way the real server does.

400 for a bad or missing name (unknown profile type, invalid app name or tag key), 422 for a body it cannot
parse; every request is recorded. `status` forces an answer and `hang` stalls before answering.
Run by hand with `python -m tests.fakes.pyroscope_server --port 4040`.
"""

from __future__ import annotations

import argparse
import gzip
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.local_http import LocalHTTPServer, QuietHandler

PROFILE_TYPES = {
    "cpu", "wall", "itimer", "inuse_objects", "alloc_objects", "inuse_space", "alloc_space",
    "goroutines", "mutex_count", "mutex_duration", "block_count", "block_duration", "exceptions",
}  # fmt: skip
_APP_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_TAG_KEY = re.compile(r"^[A-Za-z0-9_.]+$")


class IngestError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_name(name: str) -> tuple[str, dict[str, str]]:
    """Split `app.type{k=v,...}` like Pyroscope's segment key parser: a value ends at ',' or '}'."""
    app, brace, rest = name.partition("{")
    app = app.strip()
    if not app or not _APP_NAME.match(app):
        raise IngestError(400, f"invalid application name: {app!r}")
    labels: dict[str, str] = {}
    if brace:
        # Everything after the first '}' is ignored by the real parser too.
        body = rest.split("}", 1)[0]
        for pair in filter(None, body.split(",")):
            key, eq, value = pair.partition("=")
            key = key.strip()
            if not eq or not _TAG_KEY.match(key):
                raise IngestError(400, f"invalid tag key: {key!r}")
            labels[key] = value.strip()
    return app, labels


@dataclass
class Ingest:
    name: str
    app: str
    profile_type: str
    labels: dict[str, str]
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    stacks: dict[str, int] = field(default_factory=dict)


def parse_folded(body: bytes) -> dict[str, int]:
    stacks: dict[str, int] = {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise IngestError(422, "body is not utf-8") from None
    for line in text.splitlines():
        if not line.strip():
            continue
        stack, space, count = line.rpartition(" ")
        if not space or not stack or not count.isdigit():
            raise IngestError(422, f"unparsable folded line: {line[:80]!r}")
        stacks[stack] = stacks.get(stack, 0) + int(count)
    return stacks


class PyroscopeServer(LocalHTTPServer):
    def __init__(self, port: int = 0) -> None:
        self.ingests: list[Ingest] = []
        self.rejections: list[tuple[int, str]] = []
        self.status: int | None = None  # force this answer (after validation passed)
        self.hang = 0.0  # seconds to stall before answering
        self._lock = threading.Lock()
        super().__init__(port)

    def stop(self) -> None:
        self.hang = 0.0
        super().stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Ingest]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.ingests) >= count:
                    return list(self.ingests)
            time.sleep(0.02)
        with self._lock:
            return list(self.ingests)

    def handle(self, path: str, query: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        if path != "/ingest":
            return 404, "not found"
        params = dict(parse_qsl(query, keep_blank_values=True))
        try:
            ingest = self._validate(params, headers, body)
        except IngestError as error:
            with self._lock:
                self.rejections.append((error.status, str(error)))
            return error.status, str(error)
        if self.hang:
            time.sleep(self.hang)
        if self.status is not None:
            return self.status, "forced"
        with self._lock:
            self.ingests.append(ingest)
        return 200, ""

    def _validate(self, params: dict[str, str], headers: dict[str, str], body: bytes) -> Ingest:
        name = params.get("name", "")
        if not name:
            raise IngestError(400, "name is required")
        app, labels = parse_name(name)
        for key in ("from", "until"):
            if key in params and not params[key].lstrip("-").isdigit():
                raise IngestError(400, f"{key} must be unix seconds")
        fmt = params.get("format", "folded")
        if fmt == "folded":
            profile_type = app.rsplit(".", 1)[-1]
            if "." not in app or profile_type not in PROFILE_TYPES:
                raise IngestError(400, f"unknown profile type: {profile_type}")
            stacks = parse_folded(body)
        elif fmt == "pprof":
            profile_type, stacks = "", {}
            if body[:2] == b"\x1f\x8b":
                try:
                    gzip.decompress(body)
                except OSError:
                    raise IngestError(422, "bad gzip body") from None
        else:
            raise IngestError(400, f"unknown format: {fmt}")
        return Ingest(name, app, profile_type, labels, params, headers, body, stacks)

    def _handler_class(self):
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {key.lower(): value for key, value in self.headers.items()}
                status, message = server.handle(split.path, split.query, headers, body)
                self.send_body(status, message.encode(), "text/plain")

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=4040)
    args = parser.parse_args()
    server = PyroscopeServer(args.port)
    server.serve_until_interrupted(f"fake pyroscope on {server.url}")


if __name__ == "__main__":
    main()
