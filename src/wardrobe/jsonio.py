"""JSON for the hot paths (responses, request bodies, the access log, cached pages), through orjson.

orjson is several times faster than the standard library at both ends, writes UTF-8 directly (the stdlib's
`ensure_ascii=False`), and is stricter on input: NaN/Infinity literals, lone surrogates and integers beyond
64 bits are rejected (a 400 at the API), where the standard library would let them through to Postgres.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.media
import orjson

# Dict keys that are not strings (ints in a cached structure) are written as strings, as the stdlib does.
_OPTIONS = orjson.OPT_NON_STR_KEYS

loads = orjson.loads


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTIONS)


def dumps_text(value: Any) -> str:
    return orjson.dumps(value, option=_OPTIONS).decode()


# Request bodies only. No request of ours comes near either bound (the schemas are two levels deep and a few KB at
# most); past them, validation itself is the cost: the validators recurse (a RecursionError, well inside orjson's own
# limit of 1024 levels) and report every bad element of a list (tens of seconds of CPU for a 2 MB body, blocking a
# whole gevent worker).
MAX_REQUEST_DEPTH = 32
MAX_REQUEST_BYTES = 64 * 1024


class _RequestJSONHandler(falcon.media.JSONHandler):
    """Falcon's JSON handler on orjson, refusing request bodies too large (413) or nested too deep (400)."""

    def __init__(self, max_depth: int, max_bytes: int) -> None:
        super().__init__(dumps=dumps, loads=loads)
        self._max_depth = max_depth
        self._max_bytes = max_bytes
        # Falcon takes its fast path only for the base class; serializing is unchanged, so keep it.
        self._serialize_sync = self.serialize

    def deserialize(self, stream: Any, content_type: str | None, content_length: int | None) -> Any:
        if content_length is not None and content_length > self._max_bytes:
            raise _too_large(self._max_bytes)
        data = stream.read(self._max_bytes + 1)  # never more than the bound, whatever was declared
        if len(data) > self._max_bytes:
            raise _too_large(self._max_bytes)
        value = self._deserialize(data)
        if nested_deeper_than(value, self._max_depth):
            raise falcon.MediaMalformedError("JSON") from ValueError(
                f"nested deeper than {self._max_depth} levels"
            )
        return value


def _too_large(limit: int) -> falcon.HTTPContentTooLarge:
    return falcon.HTTPContentTooLarge(description=f"JSON bodies are limited to {limit} bytes.")


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True if objects and arrays nest more than `limit` levels deep; iterative, so any depth is safe."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def media_handler(
    max_depth: int = MAX_REQUEST_DEPTH, max_bytes: int = MAX_REQUEST_BYTES
) -> falcon.media.JSONHandler:
    """Falcon's JSON handler on orjson; undecodable bodies get a 400, too deep a 400, too large a 413."""
    return _RequestJSONHandler(max_depth, max_bytes)
