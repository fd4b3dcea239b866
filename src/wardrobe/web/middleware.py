"""Request-wide concerns: request ids, the JSON access log, and Telegram authentication for /api/v1."""

from __future__ import annotations

import logging
import re
import time
import uuid

import falcon

from wardrobe import jsonio
from wardrobe.store.users import Users
from wardrobe.web.auth import AuthError, InitDataValidator

access_log = logging.getLogger("wardrobe.access")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestId:
    """Accepts a sane X-Request-ID from the balancer or makes one; returns it and logs one JSON line."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        incoming = req.get_header("X-Request-ID") or ""
        req.context.request_id = incoming if REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
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
    """Every /api/v1 request must carry valid init data; its user row exists after the first sight."""

    def __init__(self, validator: InitDataValidator, users: Users, prefix: str = "/api/") -> None:
        self._validator = validator
        self._users = users
        self._prefix = prefix

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not req.path.startswith(self._prefix) or req.method == "OPTIONS":
            return
        try:
            user = self._validator.authenticate(req.get_header("Authorization"))
        except AuthError as exc:
            raise falcon.HTTPUnauthorized(
                title="Unauthorized", description=str(exc), challenges=["tma"]
            ) from None
        self._users.ensure(user)
        req.context.user = user
