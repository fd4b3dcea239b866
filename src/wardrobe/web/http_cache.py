"""HTTP caching for JSON answers: strong ETags, 304s, and headers that keep user data out of shared caches."""

from __future__ import annotations

import hashlib

import falcon


def not_modified(req: falcon.Request, resp: falcon.Response, etag: str) -> bool:
    """Set the ETag; True (and a bodiless 304) when the client already has this representation."""
    resp.etag = f'"{etag}"'
    if req.if_none_match and any(tag == "*" or str(tag) == etag for tag in req.if_none_match):
        resp.status = falcon.HTTP_304
        resp.content_type = None  # a 304 carries no content, so no Content-Type either
        return True
    return False


class JsonValidators:
    """For every successful GET of JSON: an ETag from the content (unless the resource set a cheaper one),
    304 on a match, and `private, no-cache` + `Vary: Authorization` for anything answered to a signed-in user."""

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        if req.method not in ("GET", "HEAD") or not req_succeeded:
            return
        # By who was served, not by how the path was spelled (`//api/v1/me` is the same user's data).
        if getattr(req.context, "user", None) is not None:
            resp.cache_control = (
                resp.cache_control if resp.get_header("Cache-Control") else ["private", "no-cache"]
            )
            resp.vary = ["Authorization"]
        if resp.status_code != 200 or resp.etag is not None or resp.stream is not None:
            return
        body = resp.render_body()
        if not body:
            return
        digest = hashlib.sha1(body, usedforsecurity=False).hexdigest()[:20]
        if not_modified(req, resp, digest):
            resp.media = None
            resp.data = None
