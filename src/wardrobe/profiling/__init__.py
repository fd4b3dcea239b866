"""Greenlet-aware continuous profiler: sampling, retained windows, pprof/folded/flame graph, Pyroscope.

Start it in gunicorn's post_worker_init (after gevent has patched) or Huey's on_startup, never at import.
"""

from wardrobe.profiling.activity import ACTIVITIES, ActivityRegistry, ProfilingMiddleware, task_context
from wardrobe.profiling.aggregation import Profile, Window
from wardrobe.profiling.pyroscope import PushStats, PyroscopePusher
from wardrobe.profiling.resources import FlamegraphResource, PprofResource
from wardrobe.profiling.sampler import Profiler

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
    "task_context",
]
