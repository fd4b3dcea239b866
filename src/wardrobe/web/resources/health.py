"""Liveness and readiness probes for the balancer and the orchestrator."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import falcon

# How long the public share one probe. Through the balancer anyone can call /readyz, and a probe costs a database
# acquire, a Redis round trip and a call to every memcached node; a second is still fresh for a balancer.
READY_CACHE_SECONDS = 1.0


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Ready:
    """Probes each dependency: a required one down → 503 "unready", an optional one down → 200 "degraded".

    The schema counts as a required dependency (`wardrobe.migrate.SchemaCheck`): a backend on a database that
    lacks this release's migrations answers "unready", so neither a deploy nor the balancer sends it traffic.

    The public get the status alone, from a probe shared for READY_CACHE_SECONDS. Operators (`operator(req)`
    true: direct loopback or the metrics token) get a fresh probe with each dependency's state and the type of
    its error, since a deploy waits on them; their probe refreshes the shared one.
    """

    def __init__(
        self,
        probes: dict[str, tuple[Callable[[], None], bool]],
        operator: Callable[[falcon.Request], object],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probes = probes  # name -> (probe raising on failure, required)
        self._operator = operator
        self._clock = clock
        # Under gevent this is a green lock (the worker patches before the app is built): one greenlet probes
        # while the others wait for its answer instead of all probing at once.
        self._lock = threading.Lock()
        self._last: tuple[float, str, dict[str, str]] | None = None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._is_operator(req):
            status, checks = self._probe()
            resp.media = {"status": status, "checks": checks}
        else:
            status, _ = self._shared()
            resp.media = {"status": status}
        if status == "unready":
            resp.status = falcon.HTTP_503
            resp.set_header("Retry-After", "5")
        resp.cache_control = ["no-store"]

    def _is_operator(self, req: falcon.Request) -> bool:
        try:
            return bool(self._operator(req))
        except falcon.HTTPForbidden:  # the guard refuses outright; here that only means "the public answer"
            return False

    def _shared(self) -> tuple[str, dict[str, str]]:
        with self._lock:
            last = self._last
            if last is not None and self._clock() - last[0] < READY_CACHE_SECONDS:
                return last[1], last[2]
            return self._probe()

    def _probe(self) -> tuple[str, dict[str, str]]:
        checks: dict[str, str] = {}
        status = "ready"
        for name, (probe, required) in self._probes.items():
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready", the reason is reported
                checks[name] = f"{'down' if required else 'degraded'}: {type(exc).__name__}"
                if required:
                    status = "unready"
                elif status == "ready":
                    status = "degraded"
        self._last = (self._clock(), status, checks)
        return status, checks
