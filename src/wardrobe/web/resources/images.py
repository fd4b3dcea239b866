"""Content-addressed image files: public, immutable, cacheable forever by browsers and the CDN."""

from __future__ import annotations

import falcon

from wardrobe.clients.images import CONTENT_TYPES, KEY_RE, ImageStore


class ImageFiles:
    def __init__(self, store: ImageStore) -> None:
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if not KEY_RE.match(name):
            raise falcon.HTTPNotFound()
        etag = f'"{name.split(".")[0]}"'
        resp.cache_control = ["public", "max-age=31536000", "immutable"]
        resp.etag = etag
        if req.if_none_match and any(
            str(tag) == name.split(".")[0] or tag == "*" for tag in req.if_none_match
        ):
            resp.status = falcon.HTTP_304
            resp.content_type = None
            return
        path = self._store.path(name)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise falcon.HTTPNotFound() from None
        resp.content_type = CONTENT_TYPES[name.rsplit(".", 1)[1]]
        resp.set_stream(handle, path.stat().st_size)
