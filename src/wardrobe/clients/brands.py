"""Brand suggestions: the bundled catalogue and a guarded client for the upstream brand API.

Upstream protocol: `GET {base_url}/brands?q=<normalised query>&limit=<n>` answers 200 with
`{"brands": [{"name": "Nike"}, ...]}`; anything else counts as a failure of the upstream.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import math
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, Protocol

import gevent
import requests
import urllib3
from rapidfuzz import process
from rapidfuzz.distance import Indel, LCSseq

from wardrobe.clients.cache import MISSING, Cache, NullCache
from wardrobe.green import gevent_active

MIN_QUERY_CHARS = 2
MAX_QUERY_CHARS = 64
MAX_LIMIT = 20
MAX_NAME_CHARS = 100
# An upstream list longer than this is not a suggestion list; treat it as garbage.
MAX_UPSTREAM_ENTRIES = 100
_FUZZY_CUTOFF = 0.75


class InvalidQuery(ValueError):
    """The query or limit cannot be searched; the resource answers 400."""


class BrandsUnavailable(Exception):
    """Neither the upstream, the cache nor a fallback can answer; the resource answers 503."""

    def __init__(self, retry_after: int):
        super().__init__(f"brand suggestions unavailable, retry after {retry_after} s")
        self.retry_after = retry_after


class UpstreamError(Exception):
    """One upstream call failed (timeout, refused, non-200, oversized or malformed body)."""


class _DeadlineExceeded(UpstreamError):
    pass


class _Rejected(Exception):
    """The call was not attempted: breaker open or bulkhead full."""

    def __init__(self, reason: str, retry_after: int):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def normalise_query(q: str) -> str:
    """NFKC, casefold, trimmed with inner whitespace collapsed; InvalidQuery outside 2..64 chars."""
    if not isinstance(q, str):
        raise InvalidQuery("query must be a string")
    text = " ".join(unicodedata.normalize("NFKC", q).casefold().split())
    if not text.isprintable():
        raise InvalidQuery("query contains control characters")
    if not MIN_QUERY_CHARS <= len(text) <= MAX_QUERY_CHARS:
        raise InvalidQuery(f"query must be {MIN_QUERY_CHARS} to {MAX_QUERY_CHARS} characters")
    return text


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def _fold(text: str) -> str:
    """Diacritics-insensitive form used only for matching: 'Hermès' and 'hermes' meet here."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _words(folded: str) -> str:
    return " ".join(re.split(r"[\W_]+", folded)).strip()


def _compact(folded: str) -> str:
    return re.sub(r"[\W_]+", "", folded)


def _answer(names: Iterable[str], source: str, limit: int) -> dict[str, Any]:
    return {"brands": [{"name": name} for name in list(names)[:limit]], "source": source}


class BrandSearch(Protocol):
    def search(self, q: str, limit: int = 10) -> dict[str, Any]: ...


class CatalogueBrands:
    """Searches a fixed list of brand names: exact, prefix, word prefix, substring, then fuzzy.

    The first four tiers come from indexes built once (dicts, sorted keys searched with bisect, and one joined
    string searched with `str.find`), the fuzzy tier from rapidfuzz in C; answers are kept per folded query in a
    small LRU, because autocomplete asks the same few prefixes over and over.
    """

    def __init__(self, names: Iterable[str] | None = None, cache_size: int = 4096):
        if names is None:
            text = resources.files("wardrobe").joinpath("data/brands.txt").read_text(encoding="utf-8")
            names = (line.strip() for line in text.splitlines() if not line.startswith("#"))
        self._names: list[str] = []
        self._folded: list[str] = []
        self._compact: list[str] = []
        self._sort_keys: list[tuple[int, str, str]] = []
        seen = set()
        for name in names:
            folded = _fold(name)
            if name and folded not in seen:
                seen.add(folded)
                self._names.append(name)
                self._folded.append(folded)
                self._compact.append(_compact(folded))
                self._sort_keys.append((len(name), folded, name))
        self._exact = {folded: i for i, folded in enumerate(self._folded)}
        self._exact_compact: dict[str, list[int]] = {}
        self._by_initial: dict[str, list[int]] = {}
        for i, compact in enumerate(self._compact):
            if compact:
                self._exact_compact.setdefault(compact, []).append(i)
                self._by_initial.setdefault(compact[0], []).append(i)
        self._prefix_folded = _SortedKeys((folded, i) for i, folded in enumerate(self._folded))
        self._prefix_compact = _SortedKeys((c, i) for i, c in enumerate(self._compact) if c)
        # " words" in " name words" means the query's words start at one of the name's word boundaries: every
        # suffix of the name's words that starts at a boundary, searched by prefix, finds exactly those.
        self._prefix_words = _SortedKeys(
            (words[start:], i)
            for i, words in enumerate(_words(folded) for folded in self._folded)
            for start in (0, *(pos + 1 for pos, ch in enumerate(words) if ch == " "))
        )
        self._substring_folded = _Joined(self._folded)
        self._substring_compact = _Joined(self._compact)
        # Filled on first use; bounded by the query lengths (2..64) and the names' first letters.
        self._bands: dict[tuple[int, int], tuple[list[str], list[int]]] = {}
        self._head_slices: dict[tuple[str, int], tuple[list[str], list[int]]] = {}
        self._ranked = functools.lru_cache(maxsize=cache_size)(self._rank)

    def match(self, q: str, limit: int = 10) -> list[str]:
        # Ranked once at the largest limit: the fuzzy tier only fills in after the others and ranks last, so a
        # shorter list is always a prefix of the longest one.
        return list(self._ranked(_fold(normalise_query(q)))[:limit])

    def _rank(self, folded: str) -> tuple[str, ...]:
        words, compact = _words(folded), _compact(folded)
        tiers: dict[int, int] = {}

        def found(tier: int, indexes: Iterable[int]) -> None:
            for i in indexes:
                if i not in tiers:
                    tiers[i] = tier

        # Lower tiers first, so each name keeps the best tier it reaches, as the checks in order would give.
        if folded in self._exact:
            found(0, (self._exact[folded],))
        if compact:
            found(0, self._exact_compact.get(compact, ()))
        found(1, self._prefix_folded.starting_with(folded))
        if compact:
            found(1, self._prefix_compact.starting_with(compact))
        if words:
            found(2, self._prefix_words.starting_with(words))
        found(3, self._substring_folded.containing(folded))
        if compact:
            found(3, self._substring_compact.containing(compact))
        ranked = [(tier, 0.0, *self._sort_keys[i]) for i, tier in tiers.items()]
        # Fuzzy matching is the slow tier and always ranks last, so it only runs to fill the list.
        if len(ranked) < MAX_LIMIT and len(compact) >= 3:
            for i, score in self._fuzzy(compact, tiers).items():
                ranked.append((4, -score, *self._sort_keys[i]))
        ranked.sort()
        return tuple(entry[-1] for entry in ranked[:MAX_LIMIT])

    def _fuzzy(self, compact: str, exclude: dict[int, int]) -> dict[int, float]:
        """Names within the cutoff of the query, by the similarity 2 * LCS / total length.

        That is difflib's ratio with the longest common subsequence in place of difflib's greedy matching
        blocks, so it is never lower than difflib's and usually equal; rapidfuzz computes it in C.
        """
        size = len(compact)
        # 2 * LCS / (a + b) reaches the cutoff c only if the other length is within [a * c / (2 - c),
        # a * (2 - c) / c]: the names outside that band are never handed to rapidfuzz.
        lo = math.ceil(size * _FUZZY_CUTOFF / (2 - _FUZZY_CUTOFF) - 1e-9)
        hi = math.floor(size * (2 - _FUZZY_CUTOFF) / _FUZZY_CUTOFF + 1e-9)
        band = self._band(max(lo, 1), hi)
        # Comparing with the name's start catches typos in a half-typed name; requiring the same first letter
        # keeps short queries from matching anagrams ("zara" is not "arma...").
        heads = self._heads(compact[0], size)
        scores: dict[int, float] = {}
        for choices, indexes, whole in ((band[0], band[1], True), (heads[0], heads[1], False)):
            # A hair under the cutoff: rapidfuzz's float may differ from the exact ratio in the last bit.
            near = process.extract(
                compact,
                choices,
                scorer=Indel.normalized_similarity,
                score_cutoff=_FUZZY_CUTOFF - 1e-9,
                limit=None,
            )
            for _, _, at in near:
                i = indexes[at]
                if i not in exclude:
                    score = _ratio(compact, self._compact[i] if whole else choices[at])
                    if score >= _FUZZY_CUTOFF and score > scores.get(i, 0.0):
                        scores[i] = score
        return scores

    def _band(self, lo: int, hi: int) -> tuple[list[str], list[int]]:
        key = (lo, hi)
        if key not in self._bands:
            indexes = [i for i, c in enumerate(self._compact) if lo <= len(c) <= hi]
            self._bands[key] = ([self._compact[i] for i in indexes], indexes)
        return self._bands[key]

    def _heads(self, initial: str, size: int) -> tuple[list[str], list[int]]:
        key = (initial, size)
        if key not in self._head_slices:
            indexes = self._by_initial.get(initial, [])
            self._head_slices[key] = ([self._compact[i][:size] for i in indexes], indexes)
        return self._head_slices[key]

    def search(self, q: str, limit: int = 10) -> dict[str, Any]:
        return _answer(self.match(q, _check_limit(limit)), "catalogue", limit)


def _ratio(a: str, b: str) -> float:
    total = len(a) + len(b)
    return 2.0 * LCSseq.similarity(a, b) / total if total else 1.0


class _SortedKeys:
    """(key, entry index) pairs sorted by key: the keys starting with a prefix are one run found by bisect."""

    def __init__(self, pairs: Iterable[tuple[str, int]]):
        ordered = sorted(pairs)
        self._keys = [key for key, _ in ordered]
        self._entries = [i for _, i in ordered]

    def starting_with(self, prefix: str) -> Iterable[int]:
        keys, at = self._keys, bisect.bisect_left(self._keys, prefix)
        while at < len(keys) and keys[at].startswith(prefix):
            yield self._entries[at]
            at += 1


class _Joined:
    """Every text in one string, so a substring search over all of them is `str.find` in C."""

    # A query never contains it: normalise_query refuses unprintable characters.
    _SEPARATOR = "\x00"

    def __init__(self, texts: list[str]):
        self._text = self._SEPARATOR.join(texts)
        self._starts = list(itertools.accumulate((len(t) + 1 for t in texts[:-1]), initial=0))

    def containing(self, needle: str) -> Iterable[int]:
        at = self._text.find(needle)
        while at >= 0:
            i = bisect.bisect_right(self._starts, at) - 1
            yield i
            if i + 1 >= len(self._starts):
                return
            at = self._text.find(needle, self._starts[i + 1])


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; after `reset_timeout` s lets one probe through.

    States: "closed", "open", "half_open" (exposed as `state` and through `on_state_change` for metrics).
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[str, str], None] | None = None,
    ):
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._clock = clock
        self._on_state_change = on_state_change
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == self.OPEN and self._clock() - self._opened_at >= self._reset_timeout:
                return self.HALF_OPEN
            return self._state

    def _move(self, new: str) -> None:
        old, self._state = self._state, new
        if old != new and self._on_state_change is not None:
            self._on_state_change(old, new)

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one caller gets True until it reports back."""
        with self._lock:
            if self._state == self.OPEN:
                if self._clock() - self._opened_at < self._reset_timeout:
                    return False
                self._move(self.HALF_OPEN)
                self._probing = False
            if self._state == self.HALF_OPEN:
                if self._probing:
                    return False
                self._probing = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probing = False
            self._move(self.CLOSED)

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._state == self.HALF_OPEN or self._failures >= self._threshold:
                self._opened_at = self._clock()
                self._move(self.OPEN)

    def retry_after(self) -> int:
        with self._lock:
            if self._state != self.OPEN:
                return 1
            return max(1, math.ceil(self._reset_timeout - (self._clock() - self._opened_at)))


def _start_thread(target: Callable[..., None], *args: Any) -> None:
    # Under gevent's monkey patching this is a greenlet, otherwise a daemon OS thread.
    threading.Thread(target=target, args=args, daemon=True).start()


def _validated_names(body: bytes) -> list[str]:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise UpstreamError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("brands"), list):
        raise UpstreamError('body is not {"brands": [...]}')
    if len(doc["brands"]) > MAX_UPSTREAM_ENTRIES:
        raise UpstreamError(f"more than {MAX_UPSTREAM_ENTRIES} brands")
    names: list[str] = []
    seen = set()
    for entry in doc["brands"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UpstreamError('brand entry is not {"name": "..."}')
        name = " ".join(entry["name"].split())
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise UpstreamError("brand name is empty, too long or not printable")
        if name.casefold() not in seen:
            seen.add(name.casefold())
            names.append(name)
    return names[:MAX_LIMIT]


class HttpBrandClient:
    """Brand suggestions from the upstream API behind a deadline, a bulkhead, a breaker and the shared cache.

    Answers, in order: fresh cache ("cache"); stale cache served at once while one refresh runs ("stale");
    the upstream ("upstream"); the fallback catalogue ("catalogue") when the upstream fails, is skipped by
    the breaker or bulkhead; BrandsUnavailable only when no fallback was given.
    Any non-200 answer (4xx included) counts against the breaker. `clock` is wall time because cache
    entries are judged by every backend; deadlines use the monotonic clock. `on_outcome` receives
    "ok", "timeout", "error", "rejected_bulkhead" or "rejected_breaker" for each upstream attempt.
    """

    def __init__(
        self,
        base_url: str,
        *,
        cache: Cache | NullCache,
        fallback: BrandSearch | None = None,
        timeout: float = 0.8,
        connect_timeout: float = 0.3,
        max_concurrency: int = 4,
        max_body_bytes: int = 64 * 1024,
        fresh_ttl: int = 3600,
        stale_ttl: int = 86400,
        refresh_lock_ttl: int = 30,
        breaker: CircuitBreaker | None = None,
        session_factory: Callable[[], requests.Session] = requests.Session,
        clock: Callable[[], float] = time.time,
        on_outcome: Callable[[str], None] | None = None,
    ):
        self._url = base_url.rstrip("/") + "/brands"
        self._cache = cache
        self._fallback = fallback
        self._timeout = timeout
        self._connect_timeout = min(connect_timeout, timeout)
        self._max_concurrency = max_concurrency
        self._max_body = max_body_bytes
        self._fresh_ttl = fresh_ttl
        self._stale_ttl = stale_ttl
        self._refresh_lock_ttl = refresh_lock_ttl
        self.breaker = breaker or CircuitBreaker()
        self._session_factory = session_factory
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()
        self._clock = clock
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._refreshing: set[str] = set()
        self._refreshing_lock = threading.Lock()

    def search(self, q: str, limit: int = 10) -> dict[str, Any]:
        query = normalise_query(q)
        limit = _check_limit(limit)
        key = self._cache.key("brands", query)
        entry = self._cached(key)
        if entry is not None:
            age = self._clock() - entry["fetched_at"]
            if age < self._fresh_ttl:
                return _answer(entry["brands"], "cache", limit)
            self._refresh_in_background(query, key)
            return _answer(entry["brands"], "stale", limit)
        try:
            names = self._fetch_guarded(query)
        except _Rejected as exc:
            return self._fall_back(query, limit, exc.retry_after)
        except UpstreamError:
            return self._fall_back(query, limit, self.breaker.retry_after())
        self._store(key, names)
        return _answer(names, "upstream", limit)

    def _cached(self, key: str) -> dict[str, Any] | None:
        entry = self._cache.get(key, "brands")
        if entry is MISSING or not isinstance(entry, dict):
            return None
        fetched_at, names = entry.get("fetched_at"), entry.get("brands")
        if not isinstance(fetched_at, (int, float)) or not isinstance(names, list):
            return None
        if not all(isinstance(name, str) for name in names):
            return None
        if self._clock() - fetched_at >= self._stale_ttl:
            return None
        return entry

    def _store(self, key: str, names: list[str]) -> None:
        entry = {"brands": names, "fetched_at": self._clock()}
        self._cache.set(key, entry, self._stale_ttl, "brands")

    def _fall_back(self, query: str, limit: int, retry_after: int) -> dict[str, Any]:
        if self._fallback is None:
            raise BrandsUnavailable(retry_after)
        return self._fallback.search(query, limit)

    def _refresh_in_background(self, query: str, key: str) -> None:
        with self._refreshing_lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)
        try:
            _start_thread(self._refresh, query, key)
        except RuntimeError:
            with self._refreshing_lock:
                self._refreshing.discard(key)

    def _refresh(self, query: str, key: str) -> None:
        try:
            # The memcached lock makes one backend refresh; it is left to expire rather than deleted so a
            # backend that read the stale entry just before our write does not refresh it a second time.
            if not self._cache.add(
                self._cache.key("brands-refresh", query), 1, self._refresh_lock_ttl, "brands"
            ):
                return
            try:
                names = self._fetch_guarded(query)
            except (_Rejected, UpstreamError):
                return
            self._store(key, names)
        finally:
            with self._refreshing_lock:
                self._refreshing.discard(key)

    def _fetch_guarded(self, query: str) -> list[str]:
        if not self._slots.acquire(blocking=False):
            self._on_outcome("rejected_bulkhead")
            raise _Rejected("bulkhead full", retry_after=1)
        if not self.breaker.allow():
            self._slots.release()
            self._on_outcome("rejected_breaker")
            raise _Rejected("circuit open", retry_after=self.breaker.retry_after())
        deadline = time.monotonic() + self._timeout
        try:
            if gevent_active():
                names = self._fetch_with_gevent_timeout(query, deadline)
            else:
                names = self._fetch_in_thread(query, deadline)
        except UpstreamError as exc:
            self.breaker.record_failure()
            self._on_outcome("timeout" if isinstance(exc, _DeadlineExceeded) else "error")
            raise
        except BaseException:
            # gevent.GreenletExit and friends: the probe must not stay claimed.
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        self._on_outcome("ok")
        return names

    def _fetch_with_gevent_timeout(self, query: str, deadline: float) -> list[str]:
        timer = gevent.Timeout(max(0.0, deadline - time.monotonic()))
        timer.start()
        try:
            return self._request(query, deadline)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise _DeadlineExceeded(f"no answer within {self._timeout} s") from None
        finally:
            timer.close()
            self._slots.release()

    def _fetch_in_thread(self, query: str, deadline: float) -> list[str]:
        # Without gevent nothing can interrupt a blocked recv, so the call runs in a helper thread and the
        # caller stops waiting at the deadline; the helper keeps its bulkhead slot until its own timeouts end.
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["names"] = self._request(query, deadline)
            except UpstreamError as exc:
                outcome["error"] = exc
            finally:
                self._slots.release()
                done.set()

        try:
            _start_thread(run)
        except RuntimeError as exc:
            self._slots.release()
            raise UpstreamError(f"cannot start upstream call: {exc}") from None
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise _DeadlineExceeded(f"no answer within {self._timeout} s")
        if "error" in outcome:
            raise outcome["error"]
        if "names" not in outcome:
            raise UpstreamError("upstream call ended without an answer")
        return outcome["names"]

    def _session_for_call(self) -> requests.Session:
        with self._session_lock:
            if self._session is None:
                session = self._session_factory()
                adapter = requests.adapters.HTTPAdapter(
                    pool_connections=1, pool_maxsize=self._max_concurrency, max_retries=0
                )
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                self._session = session
            return self._session

    def _request(self, query: str, deadline: float) -> list[str]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlineExceeded("deadline passed before the call")
        try:
            response = self._session_for_call().get(
                self._url,
                params={"q": query, "limit": MAX_LIMIT},
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
                timeout=(min(self._connect_timeout, remaining), remaining),
                stream=True,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise UpstreamError(f"request failed: {exc}") from None
        with response:
            return _validated_names(self._read_body(response, deadline))

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        if response.status_code != 200:
            raise UpstreamError(f"upstream answered {response.status_code}")
        if response.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise UpstreamError("upstream sent an encoded body")
        declared = response.headers.get("Content-Length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_body):
            raise UpstreamError(f"body of {declared} bytes is over the cap")
        body = bytearray()
        try:
            # read1 returns after each recv, so a trickling upstream meets the deadline check per chunk.
            while chunk := response.raw.read1(8192, decode_content=False):
                body += chunk
                if len(body) > self._max_body:
                    raise UpstreamError(f"body over {self._max_body} bytes")
                if time.monotonic() > deadline:
                    raise _DeadlineExceeded(f"body not complete within {self._timeout} s")
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            raise UpstreamError(f"reading body failed: {exc}") from None
        return bytes(body)

    def close(self) -> None:
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None
