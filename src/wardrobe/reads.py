"""Cache-aside for the expensive reads (item and capsule lists), keyed by the user's wardrobe version.

The version lives in Postgres and is bumped in the same transaction as every write, so a key built from it can
never name stale data: a write is visible on the very next request, from any backend, whatever the TTLs.
A memcached outage only costs the cache (reads fall through to Postgres).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from . import capsules, items
from .cache import MISSING
from .capsules import Capsules
from .items import Items
from .users import Users


def etag_for(version: int, kind: str, params: dict[str, Any]) -> str:
    """A strong validator: the same version and parameters always render the same bytes."""
    digest = hashlib.sha1(
        json.dumps([kind, params], sort_keys=True).encode(), usedforsecurity=False
    ).hexdigest()
    return f"v{version}-{digest[:16]}"


class WardrobeReads:
    def __init__(
        self, users: Users, items_: Items, capsules_: Capsules, cache: Any, capsule_ttl: int
    ) -> None:
        self._users = users
        self._items = items_
        self._capsules = capsules_
        self._cache = cache
        self._capsule_ttl = capsule_ttl

    def version(self, user_id: int) -> int:
        return self._users.version(user_id)

    def item_page(self, user_id: int, version: int, params: dict[str, Any]) -> dict[str, Any]:
        key = self._cache.key("items", user_id, version, params)
        page = self._cache.get(key, "items", local=True)
        if page is not MISSING:
            return page
        rows, next_cursor = self._items.list(user_id, **params)
        page = {"items": [items.serialize(r) for r in rows], "next_cursor": next_cursor}
        self._cache.set(key, page, 3600, "items", local=True)
        return page

    def capsule_page(self, user_id: int, version: int, params: dict[str, Any]) -> dict[str, Any]:
        key = self._cache.key("capsules", user_id, version, params)
        page = self._cache.get(key, "capsules", local=True)
        if page is not MISSING:
            return page
        rows, next_cursor = self._capsules.list(user_id, **params)
        page = {"items": [capsules.serialize(r) for r in rows], "next_cursor": next_cursor}
        self._cache.set(key, page, self._capsule_ttl, "capsules", local=True)
        return page
