"""Pushes each finished profile window to Pyroscope's /ingest as folded text, from its own OS thread.

The sampler only appends to a bounded queue (dropping and counting when it is full), so a slow or dead
Pyroscope costs the API nothing but lost profiles.
"""

from __future__ import annotations

import logging
import math
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from wardrobe.ops.profiling import os_threads
from wardrobe.ops.profiling.activity import Tags
from wardrobe.ops.profiling.aggregation import PROFILE_TYPES, Profile, Window, merge
from wardrobe.ops.profiling.folded import render as render_folded

log = logging.getLogger(__name__)

Transport = Callable[[str, bytes, Mapping[str, str], float], int]

# Per-sample tags that only make sense inside one process; pushing them would mint series on every restart.
PROCESS_LOCAL_TAGS = frozenset({"thread"})
MAX_BACKOFF_SECONDS = 60.0


# Pyroscope is addressed directly; proxy variables meant for other traffic must not reroute profiles.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_with_urllib(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST and return the status; raises OSError (timeouts included) when no response arrives."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def _label_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", key) or "_"


def _label_value(value: str) -> str:
    # Pyroscope ends a value at ',' or '}', so route templates' {field} become :field.
    value = re.sub(r"\{([^{}]*)\}", r":\1", value)
    return re.sub(r"[{},=\s]", "_", value)


def ingest_name(app_name: str, profile_type: str, tags: Mapping[str, str]) -> str:
    app = re.sub(r"[^A-Za-z0-9_.\-/]", "_", app_name)
    labels = ",".join(f"{_label_key(k)}={_label_value(v)}" for k, v in sorted(tags.items()))
    return f"{app}.{profile_type}{{{labels}}}"


@dataclass
class PushStats:
    windows_queued: int = 0
    windows_dropped: int = 0
    requests_sent: int = 0
    requests_rejected: int = 0
    requests_failed: int = 0
    last_error: str = ""


class PyroscopePusher(os_threads.Handoff[Window]):
    def __init__(
        self,
        url: str,
        app_name: str,
        tags: Mapping[str, str] | None = None,
        transport: Transport = post_with_urllib,
        timeout: float = 2.0,
        org_id: str | None = None,
        queue_size: int = 30,
        spy_name: str = "wardrobe",
    ) -> None:
        self._ingest_url = url.rstrip("/") + "/ingest"
        self._app_name = app_name
        self._tags = dict(tags or {})
        self._transport = transport
        self._timeout = timeout
        self._org_id = org_id
        self._spy_name = spy_name
        super().__init__(queue_size)
        self._backoff = 0.0
        self.stats = PushStats()

    def submit(self, window: Window) -> bool:
        """Queue a finished window; never blocks. False (and counted) when the queue is full."""
        if not self.offer(window):
            self.stats.windows_dropped += 1
            return False
        self.stats.windows_queued += 1
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after trying to push what is queued, waiting at most `timeout` seconds."""
        super().stop(timeout)

    def handle(self, window: Window) -> float:
        try:
            self.push(window)
        except Exception as error:
            self.stats.last_error = repr(error)
            log.exception("pushing a profile window failed")
        return self._backoff

    def requests_for(self, window: Window) -> list[tuple[str, bytes]]:
        """(url, folded body) for each profile type and tag set of the window."""
        requests = []
        for profile_type in PROFILE_TYPES:
            by_tags: dict[Tags, Profile] = {}
            whole = merge([window], profile_type, window.hz, window.start, window.end)
            for (tags, stack), count in whole.samples.items():
                kept = tuple((k, v) for k, v in tags if k not in PROCESS_LOCAL_TAGS)
                part = by_tags.setdefault(
                    kept, Profile(profile_type, window.hz, window.start, window.end, {})
                )
                part.samples[(kept, stack)] = part.samples.get((kept, stack), 0) + count
            for tags, part in sorted(by_tags.items()):
                body = render_folded(part).encode("utf-8")
                if not body:
                    continue
                params = {
                    "name": ingest_name(self._app_name, profile_type, {**self._tags, **dict(tags)}),
                    "from": str(int(window.start)),
                    "until": str(max(math.ceil(window.end), int(window.start) + 1)),
                    "format": "folded",
                    "sampleRate": str(window.hz),
                    "spyName": self._spy_name,
                    "units": "samples",
                    "aggregationType": "sum",
                }
                requests.append((f"{self._ingest_url}?{urlencode(params)}", body))
        return requests

    def push(self, window: Window) -> None:
        """Send one window now, on the calling thread. Stops at the first transient failure and backs off."""
        headers = {"Content-Type": "text/plain"}
        if self._org_id:
            headers["X-Scope-OrgID"] = self._org_id
        requests = self.requests_for(window)
        for index, (url, body) in enumerate(requests):
            try:
                status = self._transport(url, body, headers, self._timeout)
            except OSError as error:
                status, self.stats.last_error = 0, repr(error)
            if 200 <= status < 300:
                self.stats.requests_sent += 1
                self._backoff = 0.0
            elif 400 <= status < 500 and status != 429:
                # Our request is wrong; retrying the same body cannot help, the rest of the window may.
                self.stats.requests_rejected += 1
                self.stats.last_error = f"HTTP {status}"
                log.warning("pyroscope rejected a profile: HTTP %s", status)
            else:
                if status:
                    self.stats.last_error = f"HTTP {status}"
                self.stats.requests_failed += len(requests) - index
                self._backoff = min(max(self._backoff * 2, 1.0), MAX_BACKOFF_SECONDS)
                log.warning(
                    "pyroscope unavailable (%s); backing off %.0f s", self.stats.last_error, self._backoff
                )
                return
