"""Brand suggestions for an item, from the upstream brand API (cached) or the bundled catalogue."""

from __future__ import annotations

from typing import Any

import falcon

from wardrobe.clients.brands import MAX_LIMIT, BrandsUnavailable, InvalidQuery
from wardrobe.web.resources import page_limit


class Brands:
    def __init__(self, search: Any, limit: Any) -> None:
        self._search = search
        self._limit = limit  # per-user rate limit check: (req, resp, rule) -> None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._limit(req, resp, "brands")
        query = req.get_param("q")
        if query is None:
            raise falcon.HTTPBadRequest(
                title="Invalid query", description="Pass ?q= with 2 to 64 characters."
            )
        try:
            resp.media = self._search.search(query, page_limit(req, default=10, maximum=MAX_LIMIT))
        except InvalidQuery as exc:
            raise falcon.HTTPBadRequest(title="Invalid query", description=str(exc)) from None
        except BrandsUnavailable as exc:
            raise falcon.HTTPServiceUnavailable(
                description="Brand suggestions are unavailable right now.",
                retry_after=max(1, int(getattr(exc, "retry_after", 5) or 5)),
            ) from None
        resp.cache_control = ["private", "max-age=300"]
