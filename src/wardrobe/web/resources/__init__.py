"""Falcon resources: parse and authorise, call a domain object, shape the response."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import falcon

from wardrobe.web.schemas import validation_errors

if TYPE_CHECKING:
    from wardrobe.web.reads import WardrobeReads

_ASCII_NUMBER = re.compile(r"[0-9]{1,9}")


def json_body(req: falcon.Request, schema: dict[str, Any], *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object, validated; 400/415 with the reason otherwise."""
    if optional and not req.content_length:
        body: Any = {}
    else:
        if not req.content_type or not req.content_type.lower().startswith("application/json"):
            raise falcon.HTTPUnsupportedMediaType(description="Send the body as application/json.")
        body = req.get_media()
    if not isinstance(body, dict):
        raise falcon.HTTPBadRequest(title="Invalid body", description="The body must be a JSON object.")
    if _has_nul(body):
        raise falcon.HTTPBadRequest(title="Invalid body", description="Text must not contain NUL characters.")
    errors = validation_errors(schema, body)
    if errors:
        raise falcon.HTTPBadRequest(title="Invalid body", description="; ".join(errors))
    return body


T = TypeVar("T")


def found(row: T | None, what: str) -> T:
    """The user's own row, or 404: another user's id answers exactly as an id that does not exist."""
    if row is None:
        raise falcon.HTTPNotFound(description=f"No such {what}.")
    return row


AfterCommit = Callable[[list[dict[str, Any]]], None]  # hands committed jobs to the queues
Throttle = Callable[[falcon.Request, falcon.Response, str], None]  # a 429 past the user's limit for the rule


class Collection:
    """A list that accepts new work: pages come through the cached reads, writes are throttled per user, and the
    jobs a write committed are handed to `after_commit` (the dispatcher) once the transaction is done."""

    def __init__(self, after_commit: AfterCommit, reads: WardrobeReads, limit: Throttle) -> None:
        self._after_commit = after_commit
        self._reads = reads
        self._limit = limit


def page_limit(req: falcon.Request, default: int = 20, maximum: int = 100) -> int:
    raw = req.get_param("limit")
    if raw is None:
        return default
    # Not str.isdigit(): it is true for '²', '١٢' and fullwidth digits too, which int() rejects or reads as numbers.
    if not _ASCII_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise falcon.HTTPBadRequest(
            title="Invalid limit", description=f"limit must be an integer 1..{maximum}."
        )
    return int(raw)


def choice_param(req: falcon.Request, name: str, allowed: list[str]) -> str | None:
    value = req.get_param(name)
    if value is not None and value not in allowed:
        raise falcon.HTTPBadRequest(
            title=f"Invalid {name}", description=f"{name} must be one of: {', '.join(allowed)}."
        )
    return value


def _has_nul(value: Any) -> bool:
    # Postgres text cannot hold U+0000; refuse it up front rather than fail at the database.
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
