"""Cache-aside for the expensive reads (item and capsule lists), keyed by the user's wardrobe version.

The version lives in Postgres and is bumped in the same transaction as every write, so a key built from it can
never name stale data: a write is visible on the very next request, from any backend, whatever the TTLs.
A memcached outage only costs the cache (reads fall through to Postgres).

Reading the version is a round trip, and on these machines a round trip (memcached's or Postgres's alike) costs
the client 0.1-0.2 ms of CPU, mostly in the kernel. With `WARDROBE_VERSION_CACHE_TTL` set the version comes from
memcached (store/users.py `VersionCache`) in the same round trip as the page it most likely keys: the one of the
version this process saw last for the user; only a wrong guess (the user wrote meanwhile) or a version missing
from memcached takes a second trip. By default it comes from Postgres: on one box that measured 4-7 % less API
CPU per request on the session mix, because every write then pays two more memcached round trips to raise the
version (bench/README.md, "The version round trip").
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

import falcon

from wardrobe.clients.cache import MISSING
from wardrobe.clients.images import image_url
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
    def __init__(
        self,
        users: Users,
        items: Items,
        capsules: Capsules,
        cache: Any,
        capsule_ttl: int,
        seen_capacity: int = 200_000,
        image_url: Callable[[str | None], str | None] = image_url,
    ) -> None:
        self._users = users
        self._cache = cache
        # The version each user's last list read here had: which page to ask memcached for with the version.
        self._seen: dict[int, int] = {}
        self._seen_capacity = seen_capacity
        # kind -> (load rows and next cursor, serialize one row, TTL)
        self._kinds: dict[str, tuple[Callable[..., Any], Callable[[Any], dict], int]] = {
            "items": (items.list, functools.partial(serialize_item, image_url=image_url), ITEM_PAGE_TTL),
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
        version, page, asked = self._version_and_page(kind, user_id, params)
        if not not_modified(req, resp, etag_for(version, kind, params)):
            if page is MISSING:
                page = self.page(kind, user_id, version, params, cached=not asked)
            resp.media = page

    def _version_and_page(self, kind: str, user_id: int, params: dict[str, Any]) -> tuple[int, Any, bool]:
        """The user's current version; its page when the guess of the version was right (else MISSING); and
        whether memcached was already asked for that page (so a miss need not ask again)."""
        versions = self._users.versions
        guess = self._seen.get(user_id)
        asked = False
        if versions is None or guess is None:
            version, page = self._users.version(user_id), MISSING
        else:
            key = self._cache.key(kind, user_id, guess, params)
            page = self._cache.get_local(key, kind)
            if page is not MISSING:
                version = versions.get(user_id)
            else:
                version, page = versions.get_with(user_id, key, kind)
                asked = version == guess
                if page is not MISSING and asked:
                    self._cache.set_local(key, page)
            if version is None:
                version = self._users.stored_version(user_id)  # not in memcached: Postgres refills it
            if version != guess:
                page = MISSING
        if len(self._seen) >= self._seen_capacity:
            self._seen.clear()  # a hint only: forgetting costs one extra round trip per user
        self._seen[user_id] = version
        return version, page, asked

    def page(
        self, kind: str, user_id: int, version: int, params: dict[str, Any], *, cached: bool = True
    ) -> dict[str, Any]:
        """The page from the caches (unless `cached` is False: they were just asked) or else from Postgres."""
        load, serialize, ttl = self._kinds[kind]
        key = self._cache.key(kind, user_id, version, params)
        page = self._cache.get(key, kind, local=True) if cached else MISSING
        if page is MISSING:
            rows, next_cursor = load(user_id, **params)
            page = {"items": [serialize(r) for r in rows], "next_cursor": next_cursor}
            # Not waiting for memcached's "STORED" saves a receive: a lost fill costs one later miss.
            self._cache.set(key, page, ttl, kind, local=True, wait=False)
        return page
