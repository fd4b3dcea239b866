"""A background job, as its owner polls it."""

from __future__ import annotations

from typing import Any

import falcon

from wardrobe.store.jobs import Jobs, serialize
from wardrobe.web.resources import found


class Job:
    def __init__(self, jobs: Jobs) -> None:
        self._jobs = jobs

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        row = found(self._jobs.get(req.context.user.id, job_id), "job")
        queue = self._jobs.cutout_queue(row)
        resp.media = {**serialize(row), "queue": queue, "poll_after_seconds": poll_after(row, queue)}
        resp.cache_control = ["private", "no-cache"]


def poll_after(job: dict[str, Any], queue: dict[str, Any] | None) -> int | None:
    """When asking again is worth it. A user behind a long queue of cutouts polling every second only adds load
    to the box that is already behind: wait about a quarter of the estimate instead (at most 30 s)."""
    if job["state"] in ("succeeded", "failed"):
        return None
    if queue is None or job["state"] == "running":
        return 1
    if queue["estimate_seconds"] is None:
        return 5  # nothing cut out lately: no rate to go by
    return max(1, min(30, round(queue["estimate_seconds"] / 4)))
