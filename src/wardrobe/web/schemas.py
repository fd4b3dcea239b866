"""JSON schemas of what clients send and receive: used to validate requests and to build /openapi.json."""

from __future__ import annotations

import itertools
from typing import Any

import jsonschema

CATEGORIES = ["top", "bottom", "dress", "outerwear", "shoes", "bag", "accessory"]
SEASONS = ["summer", "winter", "demi-season", "all-season"]
STYLES = ["casual", "business", "sport", "evening", "streetwear", "classic", "romantic", "minimalist", "boho"]
ITEM_STATUSES = ["processing", "ready", "failed"]
JOB_STATES = ["queued", "running", "succeeded", "failed"]
OCCASIONS = ["everyday", "work", "date", "party", "sport", "travel", "formal"]

_short = {"type": "string", "maxLength": 64}
_color = {
    "type": "object",
    "properties": {"name": _short, "hex": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"}},
    "required": ["name"],
    "additionalProperties": False,
}

PROFILE_PATCH: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "display_name": {"type": "string", "minLength": 1, "maxLength": 64},
        "style": {"type": "array", "items": {"enum": STYLES}, "maxItems": len(STYLES), "uniqueItems": True},
        "sizes": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                k: {"type": "string", "maxLength": 16} for k in ("top", "bottom", "shoes", "dress")
            },
        },
        "favourite_colors": {"type": "array", "items": _short, "maxItems": 12, "uniqueItems": True},
        "gender": {"enum": ["female", "male", "unisex", None]},
    },
}

ITEM_PATCH: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "category": {"enum": [*CATEGORIES, None]},
        "colors": {"type": "array", "items": _color, "maxItems": 8},
        "season": {"enum": [*SEASONS, None]},
        "style": {"enum": [*STYLES, None]},
        "pattern": {"type": ["string", "null"], "maxLength": 64},
        "material": {"type": ["string", "null"], "maxLength": 64},
        "formality": {"type": ["integer", "null"], "minimum": 1, "maximum": 5},
        "brand": {"type": ["string", "null"], "maxLength": 64},
        "notes": {"type": ["string", "null"], "maxLength": 2000},
    },
}

CAPSULE_REQUEST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "occasion": {"enum": [*OCCASIONS, None]},
        "season": {"enum": [*SEASONS, None]},
        "size": {"type": "integer", "minimum": 1, "maximum": 10},
    },
}

ITEM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "status": {"enum": ITEM_STATUSES},
        "category": {"enum": [*CATEGORIES, None]},
        "colors": {"type": "array", "items": _color},
        "season": {"enum": [*SEASONS, None]},
        "style": {"type": ["string", "null"]},
        "pattern": {"type": ["string", "null"]},
        "material": {"type": ["string", "null"]},
        "formality": {"type": ["integer", "null"]},
        "brand": {"type": ["string", "null"]},
        "notes": {"type": ["string", "null"]},
        "source": {"type": ["string", "null"], "description": "who described it: openai, local or null"},
        "image_url": {"type": "string"},
        "cutout_url": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
    "required": ["id", "status", "image_url", "created_at", "updated_at"],
}

JOB: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "kind": {"enum": ["process_item", "build_capsule"]},
        "state": {"enum": JOB_STATES},
        "attempts": {"type": "integer"},
        "error": {"type": ["string", "null"]},
        "result": {"type": ["object", "null"]},
        "queue": {
            "description": "While the upload waits for its cutout: the cutouts ahead of it, the recent rate, and "
            "an estimate of when its own is done (null when nothing was cut out lately); null otherwise.",
            "type": ["object", "null"],
            "properties": {
                "ahead": {"type": "integer", "minimum": 0},
                "cutouts_per_minute": {"type": "number", "minimum": 0},
                "estimate_seconds": {"type": ["integer", "null"], "minimum": 0},
            },
        },
        "poll_after_seconds": {
            "description": "While the job is unfinished: how many seconds to wait before asking again.",
            "type": ["integer", "null"],
            "minimum": 1,
        },
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
    "required": ["id", "kind", "state", "attempts"],
}

PROFILE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "display_name": {"type": "string"},
        "username": {"type": ["string", "null"]},
        "preferences": {"type": "object"},
        "created_at": {"type": "string", "format": "date-time"},
    },
    "required": ["id", "display_name", "preferences"],
}

CAPSULE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "state": {"enum": ["pending", "ready", "failed"]},
        "occasion": {"type": ["string", "null"]},
        "season": {"type": ["string", "null"]},
        "name": {"type": ["string", "null"]},
        "description": {"type": ["string", "null"]},
        "outfits": {"type": "array", "items": {"type": "object"}},
        "source": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
    },
    "required": ["id", "state"],
}

READINESS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"enum": ["ready", "degraded", "unready"]},
        "checks": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "operators only (direct loopback or the metrics token): ok, degraded: <error> or down: <error>",
        },
    },
    "required": ["status"],
}

ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
    "required": ["title"],
}


def validation_errors(schema: dict[str, Any], document: Any, limit: int = 5) -> list[str]:
    """Human-readable messages, one per problem (the first `limit` found), naming the field."""
    validator = jsonschema.Draft202012Validator(schema)
    # The errors come lazily: stop after a few, or a list of thousands of bad elements costs a second of CPU.
    found = itertools.islice(validator.iter_errors(document), limit)
    messages = []
    for error in sorted(found, key=lambda e: [str(p) for p in e.path]):
        where = ".".join(str(p) for p in error.path) or "body"
        messages.append(f"{where}: {error.message[:200]}")
    return messages
