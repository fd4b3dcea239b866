"""Liveness and readiness probes for the balancer and the orchestrator."""

from __future__ import annotations

from collections.abc import Callable

import falcon


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Ready:
    """Probes each dependency; a required one down → 503, an optional one (cache) down → degraded."""

    def __init__(self, probes: dict[str, tuple[Callable[[], None], bool]]) -> None:
        self._probes = probes  # name -> (probe raising on failure, required)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks: dict[str, str] = {}
        ready = True
        for name, (probe, required) in self._probes.items():
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready", the reason is reported
                checks[name] = (
                    f"down: {type(exc).__name__}" if required else f"degraded: {type(exc).__name__}"
                )
                ready = ready and not required
        resp.media = {"status": "ready" if ready else "unavailable", "checks": checks}
        if not ready:
            resp.status = falcon.HTTP_503
            resp.set_header("Retry-After", "5")
        resp.cache_control = ["no-store"]
