"""Request-wide concerns: request ids, the JSON access log, and Telegram authentication by route."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from typing import Any

import falcon

from wardrobe import jsonio
from wardrobe.store.users import Users
from wardrobe.web.auth import AuthError, InitDataValidator

access_log = logging.getLogger("wardrobe.access")
# The balancer keeps a caller's id by this same rule (the X-Request-ID map in conf/nginx/*.conf and the Ansible
# template; tests/test_request_ids.py holds them to it), so both logs always name a request alike.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{8,128}")


class RequestId:
    """Accepts a sane X-Request-ID from the balancer or makes one; returns it and logs one JSON line."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        incoming = req.get_header("X-Request-ID") or ""
        # A new one has uuid4's randomness without building a UUID object.
        req.context.request_id = incoming if REQUEST_ID_RE.fullmatch(incoming) else os.urandom(16).hex()
        req.context.user = None
        resp.set_header("X-Request-ID", req.context.request_id)

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        user = getattr(req.context, "user", None)
        started = getattr(req.context, "started", None)
        length = resp.content_length
        if length is None and resp.stream is None:
            body = resp.render_body()  # rendered once and kept by falcon, so this costs nothing extra
            length = len(body) if body else 0
        access_log.info(
            jsonio.dumps_text(
                {
                    "request_id": getattr(req.context, "request_id", None),
                    "method": req.method,
                    "route": req.uri_template or "unmatched",
                    "status": int(resp.status_code),
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
                    "user_id": user.id if user else None,
                    "bytes": length,
                }
            )
        )


class TelegramAuth:
    """Every route needs valid init data unless it is named public; its user row exists after the first sight.

    Decided on the route Falcon matched, not on the raw path: `//api/v1/me` routes to the same resource as
    `/api/v1/me`, and must not reach it unauthenticated. A request that matched nothing is left to Falcon's 404.
    """

    def __init__(self, validator: InitDataValidator, users: Users, public: Iterable[str] = ()) -> None:
        self._validator = validator
        self._users = users
        self._public = frozenset(public)  # route templates, e.g. "/images/{name}"

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any
    ) -> None:
        if resource is None or req.method == "OPTIONS" or req.uri_template in self._public:
            return
        try:
            user = self._validator.authenticate(req.get_header("Authorization"))
        except AuthError as exc:
            raise falcon.HTTPUnauthorized(
                title="Unauthorized", description=str(exc), challenges=["tma"]
            ) from None
        self._users.ensure(user)
        req.context.user = user
