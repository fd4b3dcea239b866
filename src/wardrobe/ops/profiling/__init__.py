"""Greenlet-aware continuous profiler: sampling, retained windows, pprof/folded/flame graph, Pyroscope.

Start it in gunicorn's post_worker_init (after gevent has patched) or Huey's on_startup, never at import.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from wardrobe.ops.profiling import shared
from wardrobe.ops.profiling.activity import ACTIVITIES, ActivityRegistry, ProfilingMiddleware, task_context
from wardrobe.ops.profiling.aggregation import Profile, Window
from wardrobe.ops.profiling.pyroscope import PushStats, PyroscopePusher
from wardrobe.ops.profiling.resources import FlamegraphResource, PprofResource
from wardrobe.ops.profiling.sampler import Profiler

if TYPE_CHECKING:
    from wardrobe.config import Config

__all__ = [
    "ACTIVITIES",
    "ActivityRegistry",
    "FlamegraphResource",
    "PprofResource",
    "Profile",
    "Profiler",
    "ProfilingMiddleware",
    "PushStats",
    "PyroscopePusher",
    "Window",
    "build_profiler",
    "task_context",
]


def build_profiler(
    config: Config, role: str, *, share: bool = False, **tags: str
) -> tuple[Profiler | None, PyroscopePusher | None]:
    """The profiler (and its Pyroscope pusher) a process of this role runs, not yet started; None when off.

    `share`: the role's processes on a box (gunicorn's workers) pool their windows under the data dir, so a
    profile request answered by any of them shows the whole box."""
    if not config.profile_hz:
        return None, None
    tags = {"host": socket.gethostname(), "role": role, **tags}
    pusher = PyroscopePusher(config.pyroscope_url, "wardrobe", tags=tags) if config.pyroscope_url else None
    profiler = Profiler(
        hz=config.profile_hz,
        keep_minutes=config.profile_keep_minutes,
        clock_mode=config.profile_clock,
        tags=tags,
        on_window=[pusher.submit] if pusher else (),
        share_dir=shared.directory_for(config.data_dir, role) if share else None,
    )
    return profiler, pusher
