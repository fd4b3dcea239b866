"""Connects the app's hooks to Prometheus and Sentry, and guards the operator-only endpoints.

The domain code only calls plain callables (`on_error`, `observe`, ...); this module decides what they record.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import falcon

from wardrobe.green import gevent_active
from wardrobe.ops import metrics

log = logging.getLogger(__name__)


class OperatorGuard:
    """/metrics and /debug/*: a matching bearer token, or a direct (not proxied) loopback client."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def __call__(self, req: falcon.Request) -> bool:
        header = req.get_header("Authorization") or ""
        if self._token and header.startswith("Bearer "):
            if hmac.compare_digest(header[7:].strip().encode(), self._token):
                return True
            raise falcon.HTTPForbidden(description="Wrong operator token.")
        if req.get_header("X-Forwarded-For"):
            raise falcon.HTTPForbidden(description="Operator endpoints are not served through the balancer.")
        try:
            if ipaddress.ip_address(req.remote_addr or "").is_loopback:
                return True
        except ValueError:
            pass
        raise falcon.HTTPForbidden(description="Operator endpoints need the metrics token.")


class PoolMetrics:
    """The Postgres pool's observer: every acquire's wait timed; connections in use and greenlets waiting
    published as live gauges (metrics.LiveGauges), not written on every acquire."""

    def watch(self, pool: Any) -> None:
        c = metrics.collectors()
        live = metrics.live_gauges()
        live.watch(c.db_pool_in_use, lambda: pool.in_use)
        live.watch(c.db_pool_waiting, lambda: pool.waiting)

    def acquired(self, seconds: float) -> None:
        metrics.collectors().db_pool_acquire.observe(seconds)


def cache_error(kind: str) -> None:
    metrics.collectors().dependency_errors.labels(dependency="memcached").inc()


def cache_result(kind: str, hit: bool) -> None:
    metrics.collectors().cache_requests.labels(kind=kind, result="hit" if hit else "miss").inc()


def dependency_error(dependency: str) -> None:
    metrics.collectors().dependency_errors.labels(dependency=dependency).inc()


def rate_limit_fail_open(rule: str) -> None:
    metrics.collectors().ratelimit_fail_open.labels(limit=rule).inc()
    dependency_error("redis")


def brand_outcome(outcome: str) -> None:
    metrics.collectors().brand_api_requests.labels(outcome=outcome).inc()


def breaker_state(old: str, new: str) -> None:
    metrics.collectors().brand_breaker_state.set(metrics.BREAKER_STATES.get(new.replace("_", "-"), 0))


def openai_call(alias: str, outcome: str, tokens: int) -> None:
    c = metrics.collectors()
    if outcome.startswith("429:"):
        c.openai_rate_limited.labels(key_alias=alias, kind=outcome[4:]).inc()
        return
    c.openai_requests.labels(key_alias=alias, status=outcome).inc()
    if tokens:
        c.openai_tokens.labels(key_alias=alias).inc(tokens)


def job_finished(kind: str, outcome: str, seconds: float) -> None:
    c = metrics.collectors()
    c.jobs.labels(kind=kind, outcome=outcome).inc()
    c.job_duration.labels(kind=kind, outcome=outcome).observe(seconds)


def _per_queue(rows: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """JobLedger.backlog() rows (per stage) as (waiting, oldest age) per queue; every queue, empty ones too."""
    from wardrobe.queue import STAGE_QUEUE

    per_queue = {q: (0, 0.0) for q in set(STAGE_QUEUE.values())}
    for row in rows:
        queue = STAGE_QUEUE.get(row["stage"], row["stage"])
        count, age = per_queue.get(queue, (0, 0.0))
        per_queue[queue] = (count + int(row["waiting"]), max(age, float(row["oldest_age"])))
    return per_queue


def queue_backlog(rows: list[dict[str, Any]]) -> None:
    c = metrics.collectors()
    for queue, (count, age) in _per_queue(rows).items():
        c.queue_length.labels(queue=queue).set(count)
        c.queue_oldest_age.labels(queue=queue).set(age)


class QueueBacklog:
    """wardrobe_queue_length and wardrobe_queue_oldest_age_seconds on the API's /metrics, read from Postgres (the
    truth about queued jobs) when Prometheus scrapes, so a box exports them whether or not a consumer, its reaper
    or its metrics port runs there.

    One read per `max_age` seconds per worker whatever the number of scrapers, and only one at a time; a scrape
    waits for it at most `timeout` seconds (also the query's server-side bound). A failed read counts a postgres
    dependency error and leaves the two families out until a read succeeds: no number is better than a stale
    one that looks current. `read` is JobLedger.backlog (taking `statement_timeout_ms`).
    """

    families = frozenset({metrics.QUEUE_LENGTH[0], metrics.QUEUE_OLDEST_AGE[0]})

    def __init__(
        self,
        read: Callable[..., list[dict[str, Any]]],
        *,
        max_age: float = 2.0,
        timeout: float = 1.0,
        stale_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._max_age = max_age
        self._timeout = timeout
        self._stale_after = stale_after
        self._clock = clock
        self._next_read = float("-inf")
        self._reading: Any = None  # the greenlet of the read in progress, under gevent
        self._values: dict[str, tuple[int, float]] | None = None
        self._read_at = float("-inf")

    def refresh(self) -> None:
        now = self._clock()
        if now < self._next_read:
            return
        self._next_read = now + self._max_age
        if not gevent_active():
            self._read_once()  # plain WSGI servers and tests: the statement timeout bounds it
            return
        import gevent

        if self._reading is None or self._reading.dead:
            self._reading = gevent.spawn(self._read_once)
        # A slow read goes on after the scrape answers; its result serves the next one.
        self._reading.join(self._timeout)

    def _read_once(self) -> None:
        try:
            rows = self._read(statement_timeout_ms=max(int(self._timeout * 1000), 1))
            values = _per_queue(rows)
        except Exception as exc:  # noqa: BLE001 - the rest of the scrape must answer whatever went wrong
            self._values = None
            dependency_error("postgres")
            log.warning("queue backlog not readable for /metrics: %s", exc)
            return
        self._values, self._read_at = values, self._clock()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        values = self._values
        if values is None or self._clock() - self._read_at > self._stale_after:
            return
        length = GaugeMetricFamily(*metrics.QUEUE_LENGTH, labels=["queue"])
        oldest = GaugeMetricFamily(*metrics.QUEUE_OLDEST_AGE, labels=["queue"])
        for queue, (count, age) in sorted(values.items()):
            length.add_metric([queue], count)
            oldest.add_metric([queue], age)
        yield length
        yield oldest


# --- Sentry --------------------------------------------------------------------------------------------------


def init_sentry(dsn: str, environment: str, role: str, transport: Any = None) -> bool:
    """Per process, after fork. 4xx never reach Sentry: they are the client's, and falcon answers them.
    No personal data is sent by default: events carry a user id tag, never names or init data."""
    if not dsn:
        return False
    import sentry_sdk

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        exc = (hint.get("exc_info") or (None, None))[1]
        if isinstance(exc, falcon.HTTPError) and exc.status_code < 500:
            return None
        return event

    options: dict[str, Any] = {
        "dsn": dsn,
        "environment": environment,
        "traces_sample_rate": 0.0,
        "before_send": before_send,
    }
    if transport is not None:
        options["transport"] = transport
    sentry_sdk.init(**options)
    sentry_sdk.set_tag("role", role)
    return True


def report(exc: BaseException | None = None, message: str | None = None, **tags: Any) -> None:
    """Send a failure to Sentry (a no-op when it is not configured)."""
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        for key, value in tags.items():
            if value is not None:
                scope.set_tag(key, str(value))
        if exc is not None:
            sentry_sdk.capture_exception(exc)
        elif message:
            sentry_sdk.capture_message(message, level="error")


class SentryTags:
    """Tags the request's Sentry scope with its route, user id and request id (falcon middleware)."""

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any
    ) -> None:
        import sentry_sdk

        scope = sentry_sdk.get_isolation_scope()
        scope.set_tag("route", req.uri_template or "unmatched")
        scope.set_tag("request_id", getattr(req.context, "request_id", None))
        user = getattr(req.context, "user", None)
        if user is not None:
            scope.set_user({"id": str(user.id)})
