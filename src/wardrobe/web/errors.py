"""Errors as clients see them: JSON `{"title", "description"}` with the right status, never a traceback."""

from __future__ import annotations

import logging

import falcon
import psycopg2
import psycopg2.errors

from wardrobe import jsonio
from wardrobe.clients.images import ImageError, StoreUnavailable
from wardrobe.store.db import DatabaseUnavailable, PoolTimeout

log = logging.getLogger(__name__)


class ServiceUnavailable(falcon.HTTPServiceUnavailable):
    def __init__(self, description: str, retry_after: int = 2) -> None:
        super().__init__(title="Service Unavailable", description=description, retry_after=retry_after)


def _pool_timeout(req, resp, exc, params):
    raise ServiceUnavailable("The service is busy; retry shortly.", retry_after=1)


def _database_down(req, resp, exc, params):
    log.warning("database unavailable: %s", exc)
    raise ServiceUnavailable("The database is unavailable; retry shortly.", retry_after=5)


def _query_canceled(req, resp, exc, params):
    log.warning("query canceled on %s: %s", req.path, exc)
    raise ServiceUnavailable("The database is overloaded; retry shortly.", retry_after=2)


def _bad_value(req, resp, exc, params):
    # A safety net: validation should have caught it, but a value Postgres rejects is the client's, not ours.
    log.warning("value rejected by the database on %s: %s", req.path, exc)
    raise falcon.HTTPBadRequest(title="Invalid value", description="A value in the request cannot be stored.")


def _image_error(req, resp, exc, params):
    raise falcon.HTTPError(
        falcon.code_to_http_status(exc.status), title="Invalid image", description=str(exc)
    )


def _store_down(req, resp, exc, params):
    # Raised before the item and its job are written (the image is stored first), so a retry starts clean.
    log.warning("image store unavailable on %s %s: %s", req.method, req.path, exc)
    raise ServiceUnavailable("Image storage is unavailable; retry shortly.", retry_after=5)


def _unexpected(req, resp, exc, params):
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(description="Something went wrong on our side; it has been logged.")


def _forgetting_users(forget):
    def handler(req, resp, exc, params):
        # The user's row vanished after this process cached "known" (an account wiped by an operator):
        # forget it, so the retry recreates the row instead of failing again.
        user = getattr(req.context, "user", None)
        if user is not None:
            forget(user.id)
        log.warning("foreign key violation on %s: %s", req.path, exc)
        raise ServiceUnavailable("Your account is being set up again; retry.", retry_after=1)

    return handler


def _serialize_json(req, resp, exception: falcon.HTTPError) -> None:
    # Falcon's default negotiates with Accept: XML for `Accept: application/xml`, and no body at all for
    # `text/html` or `image/*`. The contract is JSON, always.
    resp.data = jsonio.dumps(exception.to_dict())
    resp.content_type = falcon.MEDIA_JSON


def install(app: falcon.App, forget_user=None) -> None:
    app.set_error_serializer(_serialize_json)
    # Falcon picks the most specific handler by exception class, so the generic one can go first.
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(PoolTimeout, _pool_timeout)
    app.add_error_handler(DatabaseUnavailable, _database_down)
    app.add_error_handler(psycopg2.OperationalError, _query_canceled)
    app.add_error_handler(psycopg2.DataError, _bad_value)
    if forget_user is not None:
        app.add_error_handler(psycopg2.errors.ForeignKeyViolation, _forgetting_users(forget_user))
    app.add_error_handler(ImageError, _image_error)
    app.add_error_handler(StoreUnavailable, _store_down)
