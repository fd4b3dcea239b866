"""A background job, as its owner polls it."""

from __future__ import annotations

import falcon

from wardrobe.store.jobs import Jobs, serialize
from wardrobe.web.resources import found


class Job:
    def __init__(self, jobs: Jobs) -> None:
        self._jobs = jobs

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        row = found(self._jobs.get(req.context.user.id, job_id), "job")
        resp.media = {**serialize(row), "queue": self._jobs.cutout_queue(row)}
        resp.cache_control = ["private", "no-cache"]
