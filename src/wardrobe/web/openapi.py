"""The OpenAPI 3 document, built from the same schemas the resources validate with.

`tests/test_openapi.py` checks that it names exactly the routes the app serves, and fuzzes the API with it.
"""

from __future__ import annotations

from typing import Any

import falcon

from wardrobe.web import schemas

AUTH = [{"telegram": []}]


# The query both profile endpoints take.
PROFILE_QUERY = [
    {"name": "seconds", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "type", "in": "query", "schema": {"enum": ["cpu", "wall"]}},
    {"name": "route", "in": "query", "schema": {"type": "string"}},
]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _page(ref: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": ref}},
            "next_cursor": {"type": ["string", "null"]},
        },
        "required": ["items", "next_cursor"],
    }


COMMON_ERRORS = {
    "401": _error("Missing, invalid or expired Telegram init data"),
    "503": _error("A dependency is down; see Retry-After"),
}
ID = {"type": "string", "maxLength": 64}


def _op(summary: str, responses: dict[str, Any], *, auth: bool = True, **extra: Any) -> dict[str, Any]:
    op = {"summary": summary, "responses": {**responses, **(COMMON_ERRORS if auth else {})}, **extra}
    if auth:
        op["security"] = AUTH
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": ID}


def paths() -> dict[str, Any]:
    item = {"$ref": "#/components/schemas/Item"}
    job = {"$ref": "#/components/schemas/Job"}
    capsule = {"$ref": "#/components/schemas/Capsule"}
    list_params = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    ]
    return {
        "/healthz": {"get": _op("Process is alive", {"200": _json({"type": "object"})}, auth=False)},
        "/readyz": {
            "get": _op(
                "Dependencies reachable (each dependency's state for operators only)",
                {
                    "200": _json(schemas.READINESS, "Ready, or degraded (an optional dependency is down)"),
                    "503": _json(schemas.READINESS, "Unready: a required dependency is down"),
                },
                auth=False,
            )
        },
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})}, auth=False)},
        "/images/{name}": {
            "get": _op(
                "A content-addressed image (immutable)",
                {
                    "200": {"description": "The image", "content": {"image/*": {}}},
                    "304": {"description": "Not modified"},
                    "404": _error("No such image"),
                },
                auth=False,
                parameters=[_path_param("name")],
            )
        },
        "/app": {
            "get": _op(
                "The Mini App's page (index.html, revalidated: no-cache)",
                {
                    "200": {"description": "The page", "content": {"text/html": {}}},
                    "304": {"description": "Not modified"},
                },
                auth=False,
            )
        },
        "/app/{name}": {
            "get": _op(
                "A Mini App asset named by its content hash (immutable)",
                {
                    "200": {"description": "The asset", "content": {"*/*": {}}},
                    "304": {"description": "Not modified"},
                    "404": _error("No such file"),
                },
                auth=False,
                parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
        "/api/v1/me": {
            "get": _op(
                "The signed-in user's profile", {"200": _json({"$ref": "#/components/schemas/Profile"})}
            ),
            "patch": _op(
                "Change display name and preferences",
                {
                    "200": _json({"$ref": "#/components/schemas/Profile"}),
                    "400": _error("Invalid body"),
                    "415": _error("Not JSON"),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": schemas.PROFILE_PATCH}},
                },
            ),
        },
        "/api/v1/items": {
            "get": _op(
                "The user's items, newest first",
                {"200": _json(_page("#/components/schemas/Item")), "400": _error("Invalid parameter")},
                parameters=[
                    *list_params,
                    {"name": "category", "in": "query", "schema": {"enum": schemas.CATEGORIES}},
                    {"name": "season", "in": "query", "schema": {"enum": schemas.SEASONS}},
                ],
            ),
            "post": _op(
                "Upload a photo of an item; processing continues in the background",
                {
                    "202": _json({"type": "object", "properties": {"item": item, "job": job}}, "Accepted"),
                    "400": _error("Corrupt image or invalid form"),
                    "413": _error("Too many bytes or pixels"),
                    "415": _error("Not a JPEG, PNG or WebP"),
                    "429": _error("Upload rate limit"),
                },
                requestBody={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["image"],
                                "properties": {
                                    "image": {"type": "string", "format": "binary"},
                                    "category": {"enum": schemas.CATEGORIES},
                                    "brand": {"type": "string", "maxLength": 64},
                                    "notes": {"type": "string", "maxLength": 2000},
                                },
                            }
                        }
                    },
                },
            ),
        },
        "/api/v1/items/{item_id}": {
            "parameters": [_path_param("item_id")],
            "get": _op("One item", {"200": _json(item), "404": _error("No such item")}),
            "patch": _op(
                "Correct an item's attributes (the AI never overwrites them afterwards)",
                {
                    "200": _json(item),
                    "400": _error("Invalid body"),
                    "404": _error("No such item"),
                    "415": _error("Not JSON"),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": schemas.ITEM_PATCH}},
                },
            ),
            "delete": _op(
                "Delete an item", {"204": {"description": "Deleted"}, "404": _error("No such item")}
            ),
        },
        "/api/v1/jobs/{job_id}": {
            "parameters": [_path_param("job_id")],
            "get": _op("A background job", {"200": _json(job), "404": _error("No such job")}),
        },
        "/api/v1/capsules": {
            "get": _op(
                "The user's capsules, newest first",
                {"200": _json(_page("#/components/schemas/Capsule")), "400": _error("Invalid parameter")},
                parameters=list_params,
            ),
            "post": _op(
                "Ask for outfit capsules built from the wardrobe",
                {
                    "202": _json(
                        {"type": "object", "properties": {"capsule": capsule, "job": job}}, "Accepted"
                    ),
                    "400": _error("Invalid body"),
                    "415": _error("Not JSON"),
                    "429": _error("Capsule rate limit"),
                },
                requestBody={"content": {"application/json": {"schema": schemas.CAPSULE_REQUEST}}},
            ),
        },
        "/api/v1/brands": {
            "get": _op(
                "Brand suggestions for an item",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "brands": {"type": "array", "items": {"type": "object"}},
                                "source": {"enum": ["upstream", "cache", "stale", "catalogue"]},
                            },
                        }
                    ),
                    "400": _error("Query too short or too long"),
                    "429": _error("Brand search rate limit"),
                },
                parameters=[
                    {
                        "name": "q",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 2, "maxLength": 64},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 20},
                    },
                ],
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (operators: loopback or bearer token)",
                {
                    "200": {"description": "Text exposition format", "content": {"text/plain": {}}},
                    "403": _error("Not an operator"),
                },
                auth=False,
            )
        },
        "/debug/pprof/profile": {
            "get": _op(
                "Continuous profile (pprof protobuf, or folded text)",
                {
                    "200": {
                        "description": "gzipped profile.proto or folded stacks",
                        "content": {"application/octet-stream": {}},
                    },
                    "400": _error("Invalid parameter"),
                    "403": _error("Not an operator"),
                },
                auth=False,
                parameters=[
                    *PROFILE_QUERY,
                    {"name": "format", "in": "query", "schema": {"enum": ["pprof", "folded"]}},
                ],
            )
        },
        "/debug/flamegraph": {
            "get": _op(
                "Flame graph of recent samples (HTML)",
                {
                    "200": {"description": "A self-contained HTML page", "content": {"text/html": {}}},
                    "400": _error("Invalid parameter"),
                    "403": _error("Not an operator"),
                },
                auth=False,
                parameters=PROFILE_QUERY,
            )
        },
        "/api/v1/capsules/{capsule_id}": {
            "parameters": [_path_param("capsule_id")],
            "get": _op(
                "One capsule with its items", {"200": _json(capsule), "404": _error("No such capsule")}
            ),
        },
    }


def document(served: set[str] | None = None) -> dict[str, Any]:
    """The document; with `served`, limited to the routes this app instance actually has."""
    all_paths = paths()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Wardrobe API",
            "version": "1.0.0",
            "description": "Backend of the Wardrobe Telegram Mini App.",
        },
        "servers": [{"url": "/"}],
        "paths": {p: v for p, v in all_paths.items() if served is None or p in served},
        "components": {
            "securitySchemes": {
                "telegram": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`tma <initDataRaw>` exactly as Telegram hands it to the Mini App",
                }
            },
            "schemas": {
                "Item": schemas.ITEM,
                "Job": schemas.JOB,
                "Profile": schemas.PROFILE,
                "Capsule": schemas.CAPSULE,
                "Error": schemas.ERROR,
            },
        },
    }


class OpenAPI:
    def __init__(self, served: set[str]) -> None:
        self._served = served
        self._doc: dict[str, Any] | None = None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._doc is None:
            self._doc = document(self._served)
        resp.media = self._doc
        resp.cache_control = ["public", "max-age=300"]
