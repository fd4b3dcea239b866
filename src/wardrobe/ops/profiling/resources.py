"""Falcon resources serving retained profiles: pprof or folded downloads and an HTML flame graph."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from wardrobe.ops.profiling import flamegraph, folded, pprof
from wardrobe.ops.profiling.aggregation import PROFILE_TYPES
from wardrobe.ops.profiling.sampler import Profiler

Authorize = Callable[[falcon.Request], object]
MAX_ROUTE_LENGTH = 300


def _check_access(authorize: Authorize, req: falcon.Request) -> None:
    # authorize may raise its own falcon error; a falsy answer is a plain refusal.
    if not authorize(req):
        raise falcon.HTTPForbidden(title="Forbidden", description="Profiles are restricted to operators.")


def _query(req: falcon.Request, profiler: Profiler, default_seconds: int) -> tuple[str, int, str | None]:
    profile_type = req.get_param("type") or "cpu"
    if profile_type not in PROFILE_TYPES:
        raise falcon.HTTPBadRequest(
            title="Invalid parameter", description=f"type must be one of: {', '.join(PROFILE_TYPES)}."
        )
    retained = int(profiler.retained_seconds)
    raw_seconds = req.get_param("seconds")
    try:
        seconds = min(default_seconds, retained) if raw_seconds in (None, "") else int(raw_seconds)
    except ValueError:
        seconds = -1
    if not 1 <= seconds <= retained:
        raise falcon.HTTPBadRequest(
            title="Invalid parameter",
            description=f"seconds must be an integer from 1 to {retained} (the retained history).",
        )
    route = req.get_param("route") or None
    if route is not None and len(route) > MAX_ROUTE_LENGTH:
        raise falcon.HTTPBadRequest(title="Invalid parameter", description="route is too long.")
    return profile_type, seconds, route


class _ProfileResource:
    def __init__(self, profiler: Profiler, authorize: Authorize) -> None:
        self._profiler = profiler
        self._authorize = authorize


class PprofResource(_ProfileResource):
    """GET /debug/pprof/profile?seconds=N&type=cpu|wall[&format=pprof|folded][&route=...]"""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _check_access(self._authorize, req)
        output = req.get_param("format") or "pprof"
        if output not in ("pprof", "folded"):
            raise falcon.HTTPBadRequest(
                title="Invalid parameter", description="format must be pprof or folded."
            )
        profile_type, seconds, route = _query(req, self._profiler, default_seconds=30)
        profile = self._profiler.profile(profile_type, seconds, route)
        resp.cache_control = ["no-store"]
        if output == "folded":
            resp.content_type = "text/plain; charset=utf-8"
            resp.text = folded.render(profile)
            return
        resp.content_type = "application/octet-stream"
        resp.downloadable_as = f"{profile_type}.pb.gz"
        resp.data = pprof.encode_gzip(profile)


class FlamegraphResource(_ProfileResource):
    """GET /debug/flamegraph?type=cpu|wall&seconds=N&route=..."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _check_access(self._authorize, req)
        profile_type, seconds, route = _query(req, self._profiler, default_seconds=300)
        # The page filters by route itself, so it gets every route and only preselects the requested one.
        profile = self._profiler.profile(profile_type, seconds)
        resp.cache_control = ["no-store"]
        resp.content_type = falcon.MEDIA_HTML
        resp.text = flamegraph.render(profile, selected_route=route)
