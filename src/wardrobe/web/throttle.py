"""Throttling the expensive endpoints by the per-user limits in Redis: 429 with Retry-After and RateLimit-* headers."""

from __future__ import annotations

from typing import Any

import falcon

from wardrobe.clients.ratelimit import rate_limit_headers


class Throttle:
    def __init__(self, limiter: Any) -> None:
        self._limiter = limiter

    def __call__(self, req: falcon.Request, resp: falcon.Response, rule: str) -> None:
        decision = self._limiter.check(req.context.user.id, rule)
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            raise falcon.HTTPTooManyRequests(
                description=f"Too many {rule} requests; retry in {headers.get('Retry-After', '1')} s.",
                headers=headers,
            )
        resp.set_headers(headers)
