"""Content-addressed images: public, immutable, cacheable forever by browsers and the CDN.

Any backend answers for any image: from the local directory, or streamed from the bucket. With a base URL (a CDN
in front of the bucket) the API only points there: clients already get URLs under it, and an old `/images/` link
is sent on with a permanent redirect instead of passing the bytes through gunicorn.
"""

from __future__ import annotations

from typing import Any

import falcon

from wardrobe.clients.images import CACHE_CONTROL, CONTENT_TYPES, KEY_RE, ImageMissing


class ImageFiles:
    def __init__(self, store: Any, base_url: str = "") -> None:
        self._store = store  # clients.images.ImageStore or objectstore.S3ImageStore
        self._base_url = base_url.rstrip("/")

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if not KEY_RE.match(name):
            raise falcon.HTTPNotFound()
        if self._base_url:
            raise falcon.HTTPMovedPermanently(
                f"{self._base_url}/{name}", headers={"Cache-Control": CACHE_CONTROL}
            )
        digest = name.split(".")[0]
        resp.cache_control = [CACHE_CONTROL]
        resp.etag = f'"{digest}"'
        if req.if_none_match and any(str(tag) == digest or tag == "*" for tag in req.if_none_match):
            resp.status = falcon.HTTP_304
            resp.content_type = None
            return
        try:
            stream, length = self._store.open(name)  # a bucket down raises StoreUnavailable: a 503
        except ImageMissing:
            raise falcon.HTTPNotFound() from None
        resp.content_type = CONTENT_TYPES[name.rsplit(".", 1)[1]]
        resp.set_stream(stream, length)
