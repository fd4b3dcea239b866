"""The user's items: list, upload, read, correct, delete."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from wardrobe.clients import images
from wardrobe.clients.images import ImageStore, image_url
from wardrobe.store.items import Items
from wardrobe.store.items import serialize as serialize_item
from wardrobe.store.jobs import serialize as serialize_job
from wardrobe.web.reads import WardrobeReads
from wardrobe.web.resources import (
    AfterCommit,
    Collection,
    Throttle,
    choice_param,
    found,
    json_body,
    page_limit,
)
from wardrobe.web.schemas import CATEGORIES, ITEM_PATCH, SEASONS

FORM_FIELD_LIMITS = {"category": 32, "brand": 64, "notes": 2000}
CHUNK = 64 * 1024


class ItemCollection(Collection):
    def __init__(
        self,
        items: Items,
        store: ImageStore,  # or objectstore.S3ImageStore
        after_commit: AfterCommit,
        reads: WardrobeReads,
        limit: Throttle,
        *,
        max_upload_bytes: int,
        max_image_pixels: int,
        offload: Callable[..., Any],
    ) -> None:
        super().__init__(after_commit, reads, limit)
        self._items = items
        self._store = store
        self._max_bytes = max_upload_bytes
        self._max_pixels = max_image_pixels
        self._offload = offload

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = {
            "limit": page_limit(req),
            "cursor": req.get_param("cursor"),
            "category": choice_param(req, "category", CATEGORIES),
            "season": choice_param(req, "season", SEASONS),
        }
        self._reads.respond(req, resp, "items", params)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._limit(req, resp, "upload")
        if not (req.content_type or "").lower().startswith("multipart/form-data"):
            raise falcon.HTTPUnsupportedMediaType(
                description="Send multipart/form-data with an 'image' part."
            )
        # Refuse a declared oversize body before reading a byte of it.
        if req.content_length is not None and req.content_length > self._max_bytes + 64 * 1024:
            raise _too_large(self._max_bytes)
        data, fields = self._read_form(req)
        normalized, ext = self._offload(images.normalize, data, self._max_pixels)
        key = self._store.put(normalized, ext)
        item, job = self._items.create(req.context.user.id, key, fields, req.context.request_id)
        self._after_commit([job])
        resp.status = falcon.HTTP_202
        resp.location = f"/api/v1/items/{item['id']}"
        resp.media = {"item": serialize_item(item, self._store.url), "job": serialize_job(job)}

    def _read_form(self, req: falcon.Request) -> tuple[bytes, dict[str, Any]]:
        data = None
        fields: dict[str, Any] = {}
        for part in req.get_media():
            if part.name == "image":
                if data is not None:
                    raise falcon.HTTPBadRequest(title="Invalid form", description="Send exactly one image.")
                data = _read_bounded(part.stream, self._max_bytes)
            elif part.name in FORM_FIELD_LIMITS:
                value = part.get_text()
                if value is None or len(value) > FORM_FIELD_LIMITS[part.name] or "\x00" in value:
                    raise falcon.HTTPBadRequest(
                        title="Invalid form",
                        description=f"{part.name} must be text (no NUL) of at most {FORM_FIELD_LIMITS[part.name]} chars.",
                    )
                fields[part.name] = value.strip() or None
            else:
                part.stream.pipe()  # unknown parts are drained and ignored
        if not data:
            raise falcon.HTTPBadRequest(title="Invalid form", description="The 'image' file part is missing.")
        if fields.get("category") not in (None, *CATEGORIES):
            raise falcon.HTTPBadRequest(
                title="Invalid form", description=f"category must be one of: {', '.join(CATEGORIES)}."
            )
        return data, fields


class Item:
    def __init__(self, items: Items, image_url: Callable[[str | None], str | None] = image_url) -> None:
        self._items = items
        self._image_url = image_url  # the image store's: under a CDN with WARDROBE_IMAGE_BASE_URL

    def on_get(self, req: falcon.Request, resp: falcon.Response, item_id: str) -> None:
        resp.media = serialize_item(
            found(self._items.get(req.context.user.id, item_id), "item"), self._image_url
        )

    def on_patch(self, req: falcon.Request, resp: falcon.Response, item_id: str) -> None:
        changes = json_body(req, ITEM_PATCH)
        item = found(self._items.update(req.context.user.id, item_id, changes), "item")
        resp.media = serialize_item(item, self._image_url)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, item_id: str) -> None:
        if not self._items.delete(req.context.user.id, item_id):
            raise falcon.HTTPNotFound(description="No such item.")
        resp.status = falcon.HTTP_204


def _too_large(limit: int) -> falcon.HTTPContentTooLarge:
    return falcon.HTTPContentTooLarge(description=f"Uploads are limited to {limit} bytes.")


def _read_bounded(stream: Any, limit: int) -> bytes:
    chunks, total = [], 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        chunks.append(chunk)
