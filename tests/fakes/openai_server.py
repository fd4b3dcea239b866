"""A local stand-in for OpenAI's chat completions API: same wire protocol, rate limits and failure modes.

In tests: `server = FakeOpenAI(keys=["sk-test"], rpm=30).start()`, point the SDK at `server.url`, then
`server.stop()`. For `make run` and benchmarks:
`python -m tests.fakes.openai_server --port 8089 --rpm 500 --latency-ms 200`.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import math
import random
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What a scripted failure can be; see FakeOpenAI.fail_next.
FAILURES = (
    "rate_limit",  # 429 rate_limit_exceeded with a retry hint
    "insufficient_quota",  # 429, never worth retrying
    "too_large",  # 429 "Request too large", never worth retrying
    "server_error",  # 500
    "bad_request",  # 400
    "refusal",  # 200 with content null and a refusal
    "length",  # 200, finish_reason "length" and JSON cut in half
    "invalid_json",  # 200 with content that is not JSON
    "hang",  # answers only after `hang_seconds`, to trip client timeouts
    "content",  # 200 with the exact content given to fail_next
)

_IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 765}


@dataclass
class RecordedRequest:
    key: str | None
    at: float  # time.monotonic() when the request arrived
    status: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None


@dataclass
class _Scripted:
    kind: str
    retry_after: float
    content: str | None


def format_go_duration(seconds: float) -> str:
    """How OpenAI spells durations in headers and messages: 12ms, 1s, 6m0s, 23h18m29.144s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs_text}"
    if minutes:
        return f"{int(minutes)}m{secs_text}"
    return secs_text


class FakeOpenAI:
    """An OpenAI-compatible server on 127.0.0.1 whose behaviour a test sets and whose traffic it reads."""

    def __init__(
        self,
        keys: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        window: float = 60.0,
        latency: float = 0.0,
        hang_seconds: float = 2.0,
        port: int = 0,
        seed: int = 7,
        host: str = "127.0.0.1",
        keep: int | None = None,
    ) -> None:
        self.keys = set(keys) if keys else None
        self.rpm, self.tpm, self.window = rpm, tpm, window
        self.latency, self.hang_seconds = latency, hang_seconds
        self.requests: list[RecordedRequest] = []
        self._host, self._port = host, port
        self._keep = keep  # how many requests to remember (None: all, as tests read them)
        self._lock = threading.Lock()
        self._script: collections.deque[_Scripted] = collections.deque()
        self._sent: dict[str | None, collections.deque[tuple[float, int]]] = collections.defaultdict(
            collections.deque
        )
        self._random = random.Random(seed)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        """The SDK's base_url (it includes /v1, as OpenAI's does)."""
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # -- what tests set and read --------------------------------------------------------------------------

    def fail_next(
        self, kind: str, times: int = 1, retry_after: float = 1.5, content: str | None = None
    ) -> None:
        """The next `times` requests (after authentication) answer with this failure instead."""
        if kind not in FAILURES:
            raise ValueError(f"unknown failure {kind!r}; one of {FAILURES}")
        with self._lock:
            self._script.extend(_Scripted(kind, retry_after, content) for _ in range(times))

    def count(self, key: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (key is None or r.key == key) and (status is None or r.status == status)
            )

    @property
    def rate_limited(self) -> int:
        """429s sent, of every kind."""
        return self.count(status=429)

    def last_body(self) -> dict[str, Any]:
        with self._lock:
            return self.requests[-1].body

    # -- the protocol ---------------------------------------------------------------------------------------

    def handle(self, key: str | None, body: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
        record = RecordedRequest(key=key, at=time.monotonic(), body=body if isinstance(body, dict) else {})
        with self._lock:
            self.requests.append(record)
            if self._keep is not None and len(self.requests) > self._keep:
                del self.requests[: -self._keep]
        status, headers, payload = self._answer(key, body)
        if "x-ratelimit-limit-requests" not in headers:
            with self._lock:
                headers = {**self._limit_headers(self._window_of(key), time.monotonic()), **headers}
        # Like OpenAI, a request counts against the limits when it arrives; the model's time comes after.
        if self.latency:
            time.sleep(self.latency)
        record.status = status
        if status >= 400:
            record.error_code = payload["error"].get("code")
        return status, headers, payload

    def _answer(self, key: str | None, body: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
        if key is None or (self.keys is not None and key not in self.keys):
            shown = (key or "")[:3] + "*" * 4 + (key or "")[-4:]
            return (
                401,
                {},
                _error(f"Incorrect API key provided: {shown}.", "invalid_request_error", "invalid_api_key"),
            )
        problem = _request_problem(body)
        if problem:
            return 400, {}, _error(problem, "invalid_request_error", None)
        model = body["model"]
        tokens = _prompt_tokens(body) + int(
            body.get("max_completion_tokens") or body.get("max_tokens") or 256
        )
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        kind = scripted.kind if scripted else None
        if kind == "hang":
            time.sleep(self.hang_seconds)

        if kind == "insufficient_quota":
            return (
                429,
                {},
                _error(
                    "You exceeded your current quota, please check your plan and billing details.",
                    "insufficient_quota",
                    "insufficient_quota",
                ),
            )
        if kind == "too_large" or (self.tpm and tokens > self.tpm):
            return (
                429,
                {},
                _error(
                    f"Request too large for {model} in organization org-fake on tokens per min (TPM): "
                    f"Limit {self.tpm or 30000}, Requested {tokens}. "
                    "The input or output tokens must be reduced in order to run successfully.",
                    "tokens",
                    "rate_limit_exceeded",
                ),
            )
        if kind == "server_error":
            return (
                500,
                {},
                _error("The server had an error while processing your request.", "server_error", None),
            )
        if kind == "bad_request":
            return 400, {}, _error("Invalid value for 'messages'.", "invalid_request_error", None)

        with self._lock:
            now = time.monotonic()
            sent = self._window_of(key)
            used_tokens = sum(t for _, t in sent)
            wait, budget = None, "requests"
            if kind == "rate_limit":
                wait = scripted.retry_after
            elif self.rpm and len(sent) >= self.rpm:
                wait = sent[0][0] + self.window - now
            elif self.tpm and used_tokens + tokens > self.tpm:
                budget, freed = "tokens", 0
                for at, spent in sent:
                    freed += spent
                    if used_tokens - freed + tokens <= self.tpm:
                        wait = at + self.window - now
                        break
            if wait is None:
                sent.append((now, tokens))
            headers = self._limit_headers(sent, now)
        if wait is not None:
            limit = (self.rpm or 10_000) if budget == "requests" else (self.tpm or 10_000_000)
            unit = "requests per min (RPM)" if budget == "requests" else "tokens per min (TPM)"
            return (
                429,
                {
                    **headers,
                    "retry-after": str(max(1, math.ceil(wait))),
                    "retry-after-ms": str(round(wait * 1000)),
                },
                _error(
                    f"Rate limit reached for {model} in organization org-fake on {unit}: Limit {limit}. "
                    f"Please try again in {format_go_duration(wait)}. "
                    "Visit https://platform.openai.com/account/rate-limits to learn more.",
                    budget,
                    "rate_limit_exceeded",
                ),
            )
        return 200, headers, self._completion(body, scripted, tokens)

    def _window_of(self, key: str | None) -> collections.deque[tuple[float, int]]:
        """This key's accepted requests of the last window (caller holds the lock)."""
        now = time.monotonic()
        sent = self._sent[key]
        while sent and sent[0][0] <= now - self.window:
            sent.popleft()
        return sent

    def _limit_headers(self, sent: collections.deque[tuple[float, int]], now: float) -> dict[str, str]:
        # Limits that are not enforced are reported as generous ones, as a real account always has some.
        headers = {}
        for budget, limit, used in (
            ("requests", self.rpm or 10_000, len(sent)),
            ("tokens", self.tpm or 10_000_000, sum(t for _, t in sent)),
        ):
            remaining = max(0, limit - used)
            if remaining == 0 and sent:
                # Exhausted: say when the next request will be accepted.
                reset = sent[0][0] + self.window - now
            else:
                # OpenAI's meaning: time until the budget has refilled completely.
                reset = (limit - remaining) * self.window / limit
            headers[f"x-ratelimit-limit-{budget}"] = str(limit)
            headers[f"x-ratelimit-remaining-{budget}"] = str(remaining)
            headers[f"x-ratelimit-reset-{budget}"] = format_go_duration(max(0.0, reset))
        return headers

    def _completion(self, body: dict[str, Any], scripted: _Scripted | None, tokens: int) -> dict[str, Any]:
        kind = scripted.kind if scripted else None
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        finish_reason = "stop"
        if kind == "refusal":
            message["refusal"] = "I'm sorry, I can't help with that request."
        elif kind == "invalid_json":
            message["content"] = 'Sure! Here it is: {"category": "top", "colors": ['
        elif kind == "content":
            message["content"] = scripted.content
        else:
            response_format = body.get("response_format") or {}
            if response_format.get("type") == "json_schema":
                schema = response_format["json_schema"]["schema"]
                with self._lock:
                    document = _Answer(schema, _id_groups(body), self._random).value(schema, "")
                message["content"] = json.dumps(document)
            else:
                message["content"] = "A navy blazer over a white shirt works for most offices."
            if kind == "length":
                message["content"] = message["content"][: len(message["content"]) // 2]
                finish_reason = "length"
        completion_tokens = max(1, len(message["content"] or message["refusal"] or "") // 4)
        prompt_tokens = _prompt_tokens(body)
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_fake",
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    server_fake: FakeOpenAI

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            self._send(404, {}, _error(f"Invalid URL (POST {self.path})", "invalid_request_error", None))
            return
        auth = self.headers.get("Authorization", "")
        key = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        status, headers, payload = self.server_fake.handle(key, body)
        self._send(status, headers, payload)

    def _send(self, status: int, headers: dict[str, str], payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", "req_" + uuid.uuid4().hex)
            self.send_header("openai-processing-ms", "1")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _texts(body: dict[str, Any]) -> list[str]:
    texts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(part.get("text", "") for part in content if part.get("type") == "text")
    return texts


def _prompt_tokens(body: dict[str, Any]) -> int:
    tokens = sum(len(text) for text in _texts(body)) // 4 + 4 * len(body.get("messages") or [])
    for message in body.get("messages") or []:
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                if part.get("type") == "image_url":
                    tokens += _IMAGE_TOKENS.get(part["image_url"].get("detail", "auto"), 765)
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        tokens += len(json.dumps(response_format["json_schema"].get("schema", {}))) // 4
    return tokens


def _id_groups(body: dict[str, Any]) -> list[list[str]]:
    """Outfits named in the prompt as "item_ids": [...], so capsule answers only use ids the caller sent."""
    groups = []
    for text in _texts(body):
        for match in re.finditer(r'"item_ids"\s*:\s*(\[[^\]]*\])', text):
            try:
                ids = json.loads(match.group(1))
            except ValueError:
                continue
            if ids:
                groups.append([str(i) for i in ids])
    return groups


def _request_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    if not body.get("model"):
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "Invalid 'messages': empty array. Expected an array with minimum length 1."
    for i, message in enumerate(messages):
        if message.get("role") not in ("system", "developer", "user", "assistant"):
            return f"Invalid value for 'messages[{i}].role'."
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                problem = _part_problem(part, f"messages[{i}].content[{j}]")
                if problem:
                    return problem
        elif not isinstance(content, str):
            return f"Invalid type for 'messages[{i}].content'."
    response_format = body.get("response_format")
    if response_format is not None and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", str(spec.get("name", ""))):
            return "Invalid 'response_format.json_schema.name'."
        schema = spec.get("schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return "Invalid schema for response_format: the root must be an object."
        if spec.get("strict"):
            return _strict_problem(schema, (), schema.get("$defs", {}))
    return None


def _part_problem(part: dict[str, Any], where: str) -> str | None:
    if part.get("type") == "text":
        return None if isinstance(part.get("text"), str) else f"Missing required parameter: '{where}.text'."
    if part.get("type") != "image_url":
        return f"Invalid value: '{part.get('type')}'. Supported values are: 'text' and 'image_url'."
    image = part.get("image_url") or {}
    url = str(image.get("url", ""))
    if image.get("detail", "auto") not in _IMAGE_TOKENS:
        return f"Invalid value for '{where}.image_url.detail'."
    if url.startswith(("http://", "https://")):
        return None
    match = re.fullmatch(r"data:image/(png|jpeg|gif|webp);base64,([A-Za-z0-9+/=]+)", url)
    if not match:
        return f"Invalid '{where}.image_url.url': expected a URL or a base64 data URL of an image."
    try:
        data = base64.b64decode(match.group(2), validate=True)
    except ValueError:
        data = b""
    if not data.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"RIFF")):
        return "You uploaded an unsupported image. Please make sure your image is valid."
    return None


def _strict_problem(schema: dict[str, Any], path: tuple[str, ...], defs: dict[str, Any]) -> str | None:
    """What OpenAI's strict structured outputs would reject: open objects, optional properties."""
    where = f"context=({', '.join(repr(p) for p in path)})"
    types = schema.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types) or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return (
                f"Invalid schema for response_format: In {where}, 'additionalProperties' is required "
                "to be supplied and to be false."
            )
        properties = schema.get("properties", {})
        missing = [name for name in properties if name not in schema.get("required", [])]
        if missing:
            return (
                f"Invalid schema for response_format: In {where}, 'required' is required to be supplied "
                f"and to be an array including every key in properties. Missing '{missing[0]}'."
            )
        for name, sub in properties.items():
            problem = _strict_problem(sub, (*path, "properties", name), defs)
            if problem:
                return problem
    if isinstance(schema.get("items"), dict):
        problem = _strict_problem(schema["items"], (*path, "items"), defs)
        if problem:
            return problem
    for i, sub in enumerate(schema.get("anyOf", [])):
        problem = _strict_problem(sub, (*path, "anyOf", str(i)), defs)
        if problem:
            return problem
    return None


class _Answer:
    """A plausible document satisfying a JSON schema; arrays of "item_ids" reuse the prompt's outfits."""

    def __init__(self, root: dict[str, Any], id_groups: list[list[str]], rng: random.Random) -> None:
        self._defs = root.get("$defs", {})
        self._groups = id_groups
        self._next_group = 0
        self._rng = rng

    def value(self, schema: dict[str, Any], name: str) -> Any:
        if "$ref" in schema:
            return self.value(self._defs[schema["$ref"].rsplit("/", 1)[-1]], name)
        if "anyOf" in schema:
            return self.value(schema["anyOf"][0], name)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            choices = [c for c in schema["enum"] if c is not None] or [None]
            return self._rng.choice(choices)
        types = schema.get("type", "string")
        if isinstance(types, list):
            types = next((t for t in types if t != "null"), "null")
        if types == "object":
            return {key: self.value(sub, key) for key, sub in schema.get("properties", {}).items()}
        if types == "array":
            return self._array(schema, name)
        if types == "integer":
            return self._rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 10)))
        if types == "number":
            return round(self._rng.uniform(schema.get("minimum", 0), schema.get("maximum", 1)), 2)
        if types == "boolean":
            return True
        if types == "null":
            return None
        return self._string(schema, name)

    def _array(self, schema: dict[str, Any], name: str) -> list[Any]:
        items = schema.get("items", {})
        low, high = schema.get("minItems", 1), schema.get("maxItems", 3)
        if name == "item_ids" and self._groups:
            group = self._groups[self._next_group % len(self._groups)]
            self._next_group += 1
            return group[:high]
        if "item_ids" in items.get("properties", {}) and self._groups:
            count = len(self._groups)
        else:
            count = self._rng.randint(max(low, 1), max(low, 1, min(high, 2)))
        return [self.value(items, name) for _ in range(max(low, min(count, high)))]

    def _string(self, schema: dict[str, Any], name: str) -> str:
        if name == "hex" or "#" in schema.get("pattern", ""):
            return f"#{self._rng.randrange(0x1000000):06x}"
        if name == "name":
            return self._rng.choice(["Easy Weekend", "Office Classic", "City Evening", "Smart Casual Friday"])
        if name == "description":
            return "Relaxed layers in matching tones that work from morning to evening."
        return self._rng.choice(["cotton", "plain", "classic"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--rpm", type=int, default=None, help="requests per window per key (none: unlimited)")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per window per key (none: unlimited)")
    parser.add_argument("--window", type=float, default=60.0, help="sliding window of the limits, seconds")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--keys", default="", help="comma-separated accepted keys (default: any key)")
    args = parser.parse_args()
    keys = [k.strip() for k in args.keys.split(",") if k.strip()] or None
    fake = FakeOpenAI(
        keys=keys,
        rpm=args.rpm,
        tpm=args.tpm,
        window=args.window,
        latency=args.latency_ms / 1000,
        port=args.port,
        host=args.host,
        keep=1000,  # a long-running server must not grow without bound
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    fake.start()
    print(
        f"fake OpenAI listening on {fake.url} (rpm={args.rpm}, tpm={args.tpm}, window={args.window}s)",
        flush=True,
    )
    stopped.wait()
    fake.stop()


if __name__ == "__main__":
    main()
