"""What an item of clothing is, said by OpenAI (or by its colours alone when no key is set), and naming of capsules.

Huey tasks act on three errors: RateLimited (reschedule after `retry_after`), TransientAIError (retry with
backoff), PermanentAIError (give up on the AI step; `reason` says why).
"""

from __future__ import annotations

import base64
import collections
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import jsonschema
import openai
from PIL import Image, UnidentifiedImageError
from redis.exceptions import RedisError

from tasks.analysis import palette
from tasks.analysis.openai_keys import Lease, OpenAIKeyPool, parse_go_duration
from wardrobe.web.schemas import CATEGORIES, SEASONS, STYLES

PATTERNS = ["solid", "striped", "checked", "floral", "dotted", "animal", "graphic", "other"]
MATERIALS = ["cotton", "denim", "wool", "knit", "leather", "suede", "linen", "silk", "synthetic", "other"]

# Strict structured outputs require every property listed in `required` and closed objects.
ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["category", "colors", "pattern", "material", "season", "style", "formality"],
    "properties": {
        "category": {"type": "string", "enum": CATEGORIES},
        "colors": {
            "type": "array",
            "description": "Main colours, most visible first.",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "hex"],
                "properties": {
                    "name": {"type": "string", "enum": list(palette.COLOR_NAMES)},
                    "hex": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"},
                },
            },
        },
        "pattern": {"type": "string", "enum": PATTERNS},
        "material": {"type": "string", "enum": MATERIALS},
        "season": {"type": "string", "enum": SEASONS},
        "style": {"type": "string", "enum": STYLES},
        "formality": {
            "type": "integer",
            "minimum": 1,
            "maximum": 5,
            "description": "1 loungewear, 5 black tie",
        },
    },
}

CAPSULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["capsules"],
    "properties": {
        "capsules": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "description", "item_ids"],
                "properties": {
                    "name": {"type": "string", "description": "Two to four words."},
                    "description": {
                        "type": "string",
                        "description": "One sentence on when and why to wear it.",
                    },
                    "item_ids": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}

_ITEM_INSTRUCTIONS = (
    "You catalogue clothes for a wardrobe app. The image is one garment cut out from a photo. "
    "Describe that garment only. Colour names must come from the given list; hex is the colour as seen."
)
_CAPSULE_INSTRUCTIONS = (
    "You are a stylist. From the candidate outfits (lists of item ids from the user's wardrobe), choose the "
    "best ones for the request, up to `size`, and give each a short name and a one-sentence description. "
    "Use only item ids that appear in the candidates."
)
_ITEM_MAX_TOKENS = 300
_CAPSULE_MAX_TOKENS = 1200
_LOW_DETAIL_IMAGE_TOKENS = 85
# Transparent pixels reach the model as black on some paths, which reads as a dark garment: flatten the
# cutout onto a light neutral grey instead (not white, so white garments keep an edge).
_BACKDROP = (236, 236, 236)
_VISION_JPEG_QUALITY = 85
log = logging.getLogger(__name__)

_RETRY_HINT = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+)", re.IGNORECASE)


class AIError(Exception):
    """Analysis failed; `reason` is a short stable code for logs, metrics and the job's error field."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RateLimited(AIError):
    """No key may send now (our budget or OpenAI's 429): run the task again after `retry_after` seconds."""

    def __init__(self, retry_after: float, reason: str = "rate_limited", detail: str = "") -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class TransientAIError(AIError):
    """Worth retrying with backoff: timeouts, connection errors, 408/409/5xx."""


class LimiterUnavailable(TransientAIError):
    """Redis, which holds the keys' shared budget, is out of reach (down, or a Sentinel failover under way)."""


class PermanentAIError(AIError):
    """Retrying the same input will fail again.

    Covers 400/401/403/404/422, insufficient_quota, request too large, a refusal, an answer cut at
    max tokens, JSON that does not parse or does not match our schema, and images we cannot read. A
    refusal or a truncated answer repeats for the same image and prompt, so they are not retried; the task
    layer may fall back to LocalAnalyzer for the colours.
    """


class ItemAnalyzer(Protocol):
    source: str

    def analyze_item(self, png_bytes: bytes) -> dict[str, Any]:
        """category, colors [{name, hex}], pattern, material, season, style, formality (1-5), source."""
        ...

    def choose_capsules(
        self, candidates: Sequence[Any], wardrobe: Sequence[Mapping[str, Any]], request: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Named outfits {name, description, item_ids, source}, item ids all from `wardrobe`."""
        ...


class OpenAIAnalyzer:
    """Asks OpenAI through our shared key pool; one SDK client per key, created on first use in this process."""

    source = "openai"

    def __init__(
        self,
        key_pool: OpenAIKeyPool,
        base_url: str,
        model: str,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_wait: float = 2.0,
        bad_key_cool_down: float = 300.0,
        max_image_pixels: int = 40_000_000,
        client_factory: Callable[[str], openai.OpenAI] | None = None,
        observe: Callable[[str, str, int], None] | None = None,
    ) -> None:
        # observe(key_alias, outcome, tokens): outcome is the HTTP status or an error kind, for metrics.
        self._observe = observe or (lambda alias, outcome, tokens: None)
        self._pool = key_pool
        self._model = model
        self._max_wait = max_wait
        self._bad_key_cool_down = bad_key_cool_down
        self._max_image_pixels = max_image_pixels
        self._client_factory = client_factory or (
            lambda api_key: openai.OpenAI(
                api_key=api_key,
                base_url=base_url,
                timeout=openai.Timeout(timeout, connect=connect_timeout),
                # Our Redis limiter and the task layer own retries; the SDK's would double them.
                max_retries=0,
            )
        )
        self._clients: dict[str, openai.OpenAI] = {}
        self._clients_lock = threading.Lock()

    def analyze_item(self, png_bytes: bytes) -> dict[str, Any]:
        image = _flattened_jpeg(png_bytes, self._max_image_pixels, max_side=512)
        data_url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
        messages = [
            {"role": "system", "content": _ITEM_INSTRUCTIONS},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe this garment."},
                    {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
                ],
            },
        ]
        prompt_tokens = _text_tokens(_ITEM_INSTRUCTIONS, ITEM_SCHEMA) + _LOW_DETAIL_IMAGE_TOKENS + 20
        answer = self._structured(messages, "item_analysis", ITEM_SCHEMA, _ITEM_MAX_TOKENS, prompt_tokens)
        return _validated_item(answer)

    def choose_capsules(
        self, candidates: Sequence[Any], wardrobe: Sequence[Mapping[str, Any]], request: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        known = {str(item["id"]): item for item in wardrobe}
        outfits = _known_outfits(candidates, known)
        size = int(request.get("size") or 3)
        if not outfits:
            return []
        used = {item_id for outfit in outfits for item_id in outfit}
        brief = {
            "request": {"occasion": request.get("occasion"), "season": request.get("season"), "size": size},
            "wardrobe": [_item_summary(known[item_id]) for item_id in known if item_id in used],
            "candidates": [{"item_ids": outfit} for outfit in outfits],
        }
        text = json.dumps(brief, ensure_ascii=False)
        messages = [{"role": "system", "content": _CAPSULE_INSTRUCTIONS}, {"role": "user", "content": text}]
        prompt_tokens = _text_tokens(_CAPSULE_INSTRUCTIONS + text, CAPSULE_SCHEMA)
        answer = self._structured(messages, "capsules", CAPSULE_SCHEMA, _CAPSULE_MAX_TOKENS, prompt_tokens)
        capsules = []
        for proposal in answer.get("capsules", []) if isinstance(answer, dict) else []:
            item_ids = _known_ids(proposal.get("item_ids"), known)
            if not item_ids:
                continue
            number = len(capsules) + 1
            items = [known[str(i)] for i in item_ids]
            capsules.append(
                {
                    "name": str(proposal.get("name") or "").strip()[:64] or _fallback_name(number, request),
                    "description": str(proposal.get("description") or "").strip()[:400]
                    or _fallback_description(items),
                    "item_ids": item_ids,
                    "source": "openai",
                }
            )
        return capsules[:size]

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()

    def _client(self, lease: Lease) -> openai.OpenAI:
        with self._clients_lock:
            client = self._clients.get(lease.alias)
            if client is None:
                client = self._clients[lease.alias] = self._client_factory(lease.api_key)
            return client

    def _structured(
        self,
        messages: list[dict[str, Any]],
        name: str,
        schema: dict[str, Any],
        max_tokens: int,
        prompt_tokens: int,
    ) -> Any:
        # OpenAI counts a request against TPM as its prompt plus max_tokens when it arrives, whatever the
        # answer's length, so that is what we reserve and later correct.
        estimated = prompt_tokens + max_tokens
        last: RateLimited | None = None
        # After a 429 on one key the pool skips it, so another key may take the request at once.
        for _ in range(len(self._pool.aliases)):
            try:
                lease = self._pool.acquire(estimated, max_wait=self._max_wait)
            except RedisError as exc:
                # Without the shared budget we could overrun every key at once: wait for Redis instead.
                raise LimiterUnavailable("limiter_unavailable", str(exc)) from exc
            if not lease:
                raise RateLimited(lease.retry_after, "no_key_has_budget")
            try:
                raw = self._client(lease).chat.completions.with_raw_response.create(
                    model=self._model,
                    messages=messages,
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": name, "strict": True, "schema": schema},
                    },
                    max_completion_tokens=max_tokens,
                )
            except openai.APIStatusError as exc:
                self._bookkeeping(self._pool.observe_headers, lease.alias, exc.response.headers)
                error = self._classified(lease, exc)
                self._observe(lease.alias, str(exc.status_code), 0)
                if exc.status_code == 429:
                    self._observe(lease.alias, "429:" + (getattr(error, "reason", None) or "rate_limit"), 0)
                if isinstance(error, RateLimited):
                    last = error
                    continue
                raise error from exc
            except openai.APITimeoutError as exc:
                self._observe(lease.alias, "timeout", 0)
                raise TransientAIError("timeout", str(exc)) from exc
            except openai.APIConnectionError as exc:
                self._observe(lease.alias, "connection_error", 0)
                raise TransientAIError("connection", str(exc)) from exc
            self._bookkeeping(self._pool.observe_headers, lease.alias, raw.headers)
            completion = raw.parse()
            self._observe(lease.alias, "200", completion.usage.total_tokens if completion.usage else 0)
            if completion.usage is not None:
                charged = completion.usage.prompt_tokens + max_tokens
                self._bookkeeping(self._pool.record_usage, lease.alias, charged, estimated)
            return _structured_content(completion)
        raise last or RateLimited(self._max_wait, "no_key_has_budget")

    @staticmethod
    def _bookkeeping(update: Callable[..., Any], *args: Any) -> None:
        # The request is made (and paid for): a Redis hiccup while noting its headers must not lose it.
        try:
            update(*args)
        except RedisError as exc:  # the limiter fails open: the next call reads the budget afresh
            log.warning("could not update the OpenAI key budget: %s: %s", type(exc).__name__, exc)

    def _classified(self, lease: Lease, exc: openai.APIStatusError) -> AIError:
        body = exc.body if isinstance(exc.body, dict) else {}
        message = str(body.get("message") or exc.message)
        status = exc.status_code
        if status == 429:
            if exc.code == "insufficient_quota":
                # Quota belongs to the key's organisation; other keys may still have some.
                log.error(
                    "OpenAI key %s has no quota left; resting it %.0f s", lease.alias, self._bad_key_cool_down
                )
                self._bookkeeping(self._pool.cool_down, lease.alias, self._bad_key_cool_down)
                return PermanentAIError("insufficient_quota", message)
            if "request too large" in message.lower():
                return PermanentAIError("request_too_large", message)
            retry_after = retry_after_hint(exc.response.headers, message)
            log.warning("OpenAI rate limit on %s, cooling it down for %.1f s", lease.alias, retry_after)
            self._bookkeeping(self._pool.cool_down, lease.alias, retry_after)
            return RateLimited(retry_after, "rate_limit_exceeded", f"{lease.alias}: {message}")
        if status in (401, 403):
            log.error(
                "OpenAI key %s was refused (%s); resting it %.0f s",
                lease.alias,
                status,
                self._bad_key_cool_down,
            )
            self._bookkeeping(self._pool.cool_down, lease.alias, self._bad_key_cool_down)
            return PermanentAIError(
                "unauthorized" if status == 401 else "forbidden", f"{lease.alias}: {message}"
            )
        if status in (408, 409) or status >= 500:
            return TransientAIError(f"http_{status}", message)
        return PermanentAIError(f"http_{status}", message)


class LocalAnalyzer:
    """The stand-in when no OpenAI key is configured: colours from the pixels, names from the rule engine."""

    source = "local"

    def __init__(
        self, max_colors: int = 3, min_share: float = 0.12, max_image_pixels: int = 40_000_000
    ) -> None:
        self._max_colors = max_colors
        self._min_share = min_share
        self._max_image_pixels = max_image_pixels

    def analyze_item(self, png_bytes: bytes) -> dict[str, Any]:
        colors = dominant_colors(png_bytes, self._max_colors, self._min_share, self._max_image_pixels)
        return {
            "category": None,
            "colors": colors,
            "pattern": None,
            "material": None,
            "season": None,
            "style": None,
            "formality": None,
            "source": self.source,
        }

    def choose_capsules(
        self, candidates: Sequence[Any], wardrobe: Sequence[Mapping[str, Any]], request: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        known = {str(item["id"]): item for item in wardrobe}
        size = int(request.get("size") or 3)
        capsules = []
        for outfit in _known_outfits(candidates, known)[:size]:
            item_ids = [known[i]["id"] for i in outfit]
            capsules.append(
                {
                    "name": _fallback_name(len(capsules) + 1, request),
                    "description": _fallback_description([known[i] for i in outfit]),
                    "item_ids": item_ids,
                    "source": self.source,
                }
            )
        return capsules


def dominant_colors(
    png_bytes: bytes, max_colors: int = 3, min_share: float = 0.12, max_pixels: int = 40_000_000
) -> list[dict[str, str]]:
    """Palette colours covering at least `min_share` of the opaque pixels, most common first.

    The hex is the mean of the pixels named that colour, so it says which red rather than the palette's.
    """
    image = _opened(png_bytes, max_pixels).convert("RGBA")
    image.thumbnail((96, 96))
    counts: collections.Counter[palette.PaletteColor] = collections.Counter()
    sums: dict[palette.PaletteColor, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    data = image.tobytes()
    for offset in range(0, len(data), 4):
        r, g, b, a = data[offset : offset + 4]
        if a < 128:
            continue
        # Rounding to 4 levels per step keeps the naming cache small without changing any name.
        color = palette.nearest((r & 0xFC, g & 0xFC, b & 0xFC))
        counts[color] += 1
        total = sums[color]
        total[0] += r
        total[1] += g
        total[2] += b
    opaque = sum(counts.values())
    colors = []
    for color, count in counts.most_common(max_colors):
        if count / opaque < min_share:
            break
        mean = tuple(round(channel / count) for channel in sums[color])
        colors.append({"name": color.name, "hex": palette.rgb_to_hex(mean)})
    return colors


def retry_after_hint(headers: Mapping[str, str], message: str, default: float = 1.0) -> float:
    """Seconds OpenAI asks us to wait after a 429: retry-after-ms, Retry-After, then the message's hint."""
    try:
        if headers.get("retry-after-ms"):
            return _clamped(float(headers["retry-after-ms"]) / 1000)
    except ValueError:
        pass
    retry_after = headers.get("retry-after")
    if retry_after:
        try:
            return _clamped(float(retry_after))
        except ValueError:
            try:
                moment = parsedate_to_datetime(retry_after)
                return _clamped(moment.timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    match = _RETRY_HINT.search(message)
    if match:
        try:
            return _clamped(parse_go_duration(match.group(1)))
        except ValueError:
            pass
    return default


def _clamped(seconds: float) -> float:
    # Never zero (that would spin), never an hour (a wrong hint must not park a job for long).
    return min(max(seconds, 0.05), 600.0)


def _opened(png_bytes: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(png_bytes))
    except (UnidentifiedImageError, OSError) as exc:
        raise PermanentAIError("invalid_image", str(exc)) from exc
    # The header gives the size before any pixel is decoded: refuse decompression bombs here.
    if image.width * image.height > max_pixels:
        raise PermanentAIError("image_too_large", f"{image.width}x{image.height}")
    return image


def _flattened_jpeg(png_bytes: bytes, max_pixels: int, max_side: int) -> bytes:
    """The cutout on a light backdrop, as the JPEG a low-detail vision call sees (at most 512 px).

    JPEG, not PNG: an optimised PNG of a photo took ~110 ms of the worker's CPU per item and ~45 KB; this is
    ~25 ms (mostly decoding the cutout) and ~8 KB, which also shrinks every request to OpenAI.
    """
    image = _opened(png_bytes, max_pixels).convert("RGBA")
    image.thumbnail((max_side, max_side))
    flat = Image.new("RGB", image.size, _BACKDROP)
    flat.paste(image, mask=image.getchannel("A"))
    out = io.BytesIO()
    flat.save(out, format="JPEG", quality=_VISION_JPEG_QUALITY)
    return out.getvalue()


def _text_tokens(text: str, schema: dict[str, Any]) -> int:
    # About four characters per token for English and JSON; the response schema is part of the prompt.
    return (len(text) + len(json.dumps(schema))) // 4 + 10


def _structured_content(completion: Any) -> Any:
    if not completion.choices:
        raise PermanentAIError("empty_answer")
    choice = completion.choices[0]
    if getattr(choice.message, "refusal", None):
        raise PermanentAIError("refusal", choice.message.refusal)
    if choice.finish_reason == "length":
        raise PermanentAIError("truncated", "the answer reached max_completion_tokens")
    if choice.finish_reason == "content_filter":
        raise PermanentAIError("content_filter")
    try:
        return json.loads(choice.message.content)
    except (TypeError, ValueError) as exc:
        raise PermanentAIError("invalid_json", (choice.message.content or "")[:200]) from exc


_ITEM_VALIDATOR = jsonschema.Draft202012Validator(ITEM_SCHEMA)


def _validated_item(answer: Any) -> dict[str, Any]:
    problems = [error.message for error in _ITEM_VALIDATOR.iter_errors(answer)]
    formality = answer.get("formality") if isinstance(answer, dict) else None
    if not problems and not (isinstance(formality, int) and 1 <= formality <= 5):
        problems.append(f"formality {formality!r} is not 1-5")
    if problems:
        raise PermanentAIError("invalid_answer", "; ".join(problems)[:300])
    colors, seen = [], set()
    for color in answer["colors"]:
        if color["name"] not in seen:
            seen.add(color["name"])
            colors.append({"name": color["name"], "hex": color["hex"].lower()})
    return {
        "category": answer["category"],
        "colors": colors[:3],
        "pattern": answer["pattern"],
        "material": answer["material"],
        "season": answer["season"],
        "style": answer["style"],
        "formality": formality,
        "source": "openai",
    }


def _known_ids(ids: Any, known: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """The ids that are really in the wardrobe, in order, once each, with their original type."""
    result, seen = [], set()
    for item_id in ids if isinstance(ids, list | tuple) else []:
        key = str(item_id)
        if key in known and key not in seen:
            seen.add(key)
            result.append(known[key]["id"])
    return result


def _known_outfits(candidates: Sequence[Any], known: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    # A candidate is either {"item_ids": [...]} or a plain list of ids, as the rule engine builds them.
    outfits = []
    for candidate in candidates:
        ids = candidate.get("item_ids") if isinstance(candidate, Mapping) else candidate
        outfit = [str(i) for i in _known_ids(list(ids or []), known)]
        if outfit:
            outfits.append(outfit)
    return outfits


def _item_summary(item: Mapping[str, Any]) -> dict[str, Any]:
    summary = {"id": str(item["id"])}
    for name in ("category", "season", "style", "pattern", "material", "formality", "brand"):
        if item.get(name) is not None:
            summary[name] = item[name]
    colors = [c.get("name") for c in item.get("colors") or [] if isinstance(c, Mapping) and c.get("name")]
    if colors:
        summary["colors"] = colors
    return summary


def _fallback_name(number: int, request: Mapping[str, Any]) -> str:
    words = [
        str(request["season"]) if request.get("season") else "",
        str(request.get("occasion") or "everyday"),
    ]
    return f"{' '.join(w for w in words if w).capitalize()} look {number}"


def _fallback_description(items: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for item in items:
        colors = item.get("colors") or []
        color = colors[0].get("name") if colors and isinstance(colors[0], Mapping) else None
        parts.append(" ".join(p for p in (color, item.get("category") or "item") if p))
    if not parts:
        return ""
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."
