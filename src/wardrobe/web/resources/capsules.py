"""Outfit capsules: request one (built in the background), list them, read one with its items."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from wardrobe.clients.images import image_url
from wardrobe.store.capsules import Capsules
from wardrobe.store.capsules import serialize as serialize_capsule
from wardrobe.store.jobs import serialize as serialize_job
from wardrobe.web.reads import WardrobeReads
from wardrobe.web.resources import AfterCommit, Collection, Throttle, found, json_body, page_limit
from wardrobe.web.schemas import CAPSULE_REQUEST


class CapsuleCollection(Collection):
    def __init__(
        self, capsules: Capsules, after_commit: AfterCommit, reads: WardrobeReads, limit: Throttle
    ) -> None:
        super().__init__(after_commit, reads, limit)
        self._capsules = capsules

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._reads.respond(
            req, resp, "capsules", {"limit": page_limit(req), "cursor": req.get_param("cursor")}
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._limit(req, resp, "capsule")
        params = json_body(req, CAPSULE_REQUEST, optional=True)
        capsule, job = self._capsules.request(req.context.user.id, params, req.context.request_id)
        self._after_commit([job])
        resp.status = falcon.HTTP_202
        resp.location = f"/api/v1/capsules/{capsule['id']}"
        resp.media = {"capsule": serialize_capsule(capsule), "job": serialize_job(job)}


class Capsule:
    def __init__(self, capsules: Capsules, image_url: Callable[[str | None], str | None] = image_url) -> None:
        self._capsules = capsules
        self._image_url = image_url  # the image store's: its items' images may be under a CDN

    def on_get(self, req: falcon.Request, resp: falcon.Response, capsule_id: str) -> None:
        row, wardrobe = found(self._capsules.get(req.context.user.id, capsule_id), "capsule")
        resp.media = serialize_capsule(row, wardrobe, self._image_url)
