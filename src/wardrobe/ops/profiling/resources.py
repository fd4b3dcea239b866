"""Falcon resources serving retained profiles: pprof or folded downloads and an HTML flame graph.

With shared windows (the API's), any worker answers for the whole box: its own samples up to now and the other
workers' up to their last closed window; `X-Profile-Workers` says which and how far.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import falcon

from wardrobe.green import gevent_active
from wardrobe.ops.profiling import flamegraph, folded, pprof
from wardrobe.ops.profiling.aggregation import PROFILE_TYPES, Profile
from wardrobe.ops.profiling.sampler import Profiler

Authorize = Callable[[falcon.Request], object]
MAX_ROUTE_LENGTH = 300
T = TypeVar("T")


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


def _describe_sources(resp: falcon.Response, profile: Profile) -> None:
    # Which processes the answer covers and how far: the answering one live, the others up to the end of the
    # last window they shared (a worker that died stays listed until its windows age out).
    resp.set_header(
        "X-Profile-Workers",
        ", ".join(f"{pid}=live" if until is None else f"{pid}={until:.0f}" for pid, until in profile.sources),
    )


class _ProfileResource:
    def __init__(self, profiler: Profiler, authorize: Authorize) -> None:
        self._profiler = profiler
        self._authorize = authorize
        self._thread: Any = None

    def _off_the_hub(self, build: Callable[[], T]) -> T:
        """Run `build` on a native thread of its own under gevent: merging the box's windows can take seconds
        of CPU, and on the hub it would stall every request of this worker meanwhile. One at a time per
        endpoint, so repeated reloads queue up instead of piling onto the CPU."""
        if not gevent_active():
            return build()
        if self._thread is None:
            from gevent.threadpool import ThreadPool

            self._thread = ThreadPool(1)
        return self._thread.spawn(build).get()


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

        def build() -> tuple[Profile, bytes]:
            profile = self._profiler.profile(profile_type, seconds, route)
            if output == "folded":
                return profile, folded.render(profile).encode()
            return profile, pprof.encode_gzip(profile)

        profile, body = self._off_the_hub(build)
        resp.cache_control = ["no-store"]
        _describe_sources(resp, profile)
        if output == "folded":
            resp.content_type = "text/plain; charset=utf-8"
        else:
            resp.content_type = "application/octet-stream"
            resp.downloadable_as = f"{profile_type}.pb.gz"
        resp.data = body


class FlamegraphResource(_ProfileResource):
    """GET /debug/flamegraph?type=cpu|wall&seconds=N&route=..."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _check_access(self._authorize, req)
        profile_type, seconds, route = _query(req, self._profiler, default_seconds=300)

        def build() -> tuple[Profile, str]:
            # The page filters by route itself, so it gets every route and only preselects the requested one.
            profile = self._profiler.profile(profile_type, seconds)
            return profile, flamegraph.render(profile, selected_route=route)

        profile, page = self._off_the_hub(build)
        resp.cache_control = ["no-store"]
        _describe_sources(resp, profile)
        resp.content_type = falcon.MEDIA_HTML
        resp.text = page
