"""Cache-aside for the expensive reads (item and capsule lists), keyed by the user's wardrobe version.

The version lives in Postgres and is bumped in the same transaction as every write, so a key built from it can
never name stale data: a write is visible on the very next request, from any backend, whatever the TTLs.
A memcached outage only costs the cache (reads fall through to Postgres).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import falcon

from wardrobe.clients.cache import MISSING
from wardrobe.store import pagination
from wardrobe.store.capsules import Capsules
from wardrobe.store.capsules import serialize as serialize_capsule
from wardrobe.store.items import Items
from wardrobe.store.items import serialize as serialize_item
from wardrobe.store.users import Users
from wardrobe.web.http_cache import not_modified

ITEM_PAGE_TTL = 3600  # correctness comes from the version; the TTL only returns memory


def etag_for(version: int, kind: str, params: dict[str, Any]) -> str:
    """A strong validator: the same version and parameters always render the same bytes."""
    digest = hashlib.sha1(
        json.dumps([kind, params], sort_keys=True).encode(), usedforsecurity=False
    ).hexdigest()
    return f"v{version}-{digest[:16]}"


class WardrobeReads:
    def __init__(self, users: Users, items: Items, capsules: Capsules, cache: Any, capsule_ttl: int) -> None:
        self._users = users
        self._cache = cache
        # kind -> (load rows and next cursor, serialize one row, TTL)
        self._kinds: dict[str, tuple[Callable[..., Any], Callable[[Any], dict], int]] = {
            "items": (items.list, serialize_item, ITEM_PAGE_TTL),
            "capsules": (capsules.list, serialize_capsule, capsule_ttl),
        }

    def respond(self, req: falcon.Request, resp: falcon.Response, kind: str, params: dict[str, Any]) -> None:
        """Answer a list GET: a 304 when the client's copy is current (one primary-key read), else the page."""
        if params.get("cursor"):
            try:
                pagination.decode(params["cursor"])
            except pagination.InvalidCursor as exc:
                raise falcon.HTTPBadRequest(title="Invalid cursor", description=str(exc)) from None
        user_id = req.context.user.id
        version = self._users.version(user_id)
        if not not_modified(req, resp, etag_for(version, kind, params)):
            resp.media = self.page(kind, user_id, version, params)

    def page(self, kind: str, user_id: int, version: int, params: dict[str, Any]) -> dict[str, Any]:
        load, serialize, ttl = self._kinds[kind]
        key = self._cache.key(kind, user_id, version, params)
        page = self._cache.get(key, kind, local=True)
        if page is MISSING:
            rows, next_cursor = load(user_id, **params)
            page = {"items": [serialize(r) for r in rows], "next_cursor": next_cursor}
            self._cache.set(key, page, ttl, kind, local=True)
        return page
