"""Prometheus metrics of the API and the workers: collectors, the falcon middleware feeding them, /metrics,
the Huey-side exporter, and the gunicorn hooks that keep the multiprocess directory small.

Ordering matters: prometheus_client picks single- or multi-process storage when it is first imported, so
PROMETHEUS_MULTIPROC_DIR must be in the environment before that (config.py sets it). This module imports
prometheus_client only when a collector is first needed; `ensure_multiprocess_mode` catches a wrong order.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import falcon

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
DB_ACQUIRE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)
JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1200, 1800)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
LOCK_FILE = "metrics.lock"
ARCHIVE_ID = "archive"
QUEUE_LENGTH = ("wardrobe_queue_length", "Tasks waiting in a queue.")
QUEUE_OLDEST_AGE = ("wardrobe_queue_oldest_age_seconds", "Age of the oldest task waiting in a queue.")


@dataclass(frozen=True)
class Collectors:
    http_request_duration: Histogram
    http_requests_in_flight: Gauge
    db_pool_in_use: Gauge
    db_pool_waiting: Gauge
    db_pool_acquire: Histogram
    cache_requests: Counter
    dependency_errors: Counter
    queue_length: Gauge
    queue_oldest_age: Gauge
    job_duration: Histogram
    jobs: Counter
    openai_requests: Counter
    openai_rate_limited: Counter
    openai_tokens: Counter
    brand_api_requests: Counter
    brand_breaker_state: Gauge
    ratelimit_fail_open: Counter
    db_queries: Counter
    db_replica_lag: Gauge
    db_replica_fallbacks: Counter
    process_resident_memory: Gauge
    process_cpu_seconds: Counter


@functools.cache
def collectors() -> Collectors:
    """The process's collectors, registered in prometheus_client's default registry on first use."""
    from prometheus_client import Counter, Gauge, Histogram

    return Collectors(
        http_request_duration=Histogram(
            "wardrobe_http_request_duration_seconds",
            "Time from request start to response, by route template.",
            ["route", "method", "status_class"],
            buckets=HTTP_BUCKETS,
        ),
        http_requests_in_flight=Gauge(
            "wardrobe_http_requests_in_flight",
            "Requests being handled right now.",
            multiprocess_mode="livesum",
        ),
        db_pool_in_use=Gauge(
            "wardrobe_db_pool_in_use", "Postgres connections checked out.", multiprocess_mode="livesum"
        ),
        db_pool_waiting=Gauge(
            "wardrobe_db_pool_waiting",
            "Greenlets waiting for a Postgres connection.",
            multiprocess_mode="livesum",
        ),
        db_pool_acquire=Histogram(
            "wardrobe_db_pool_acquire_seconds",
            "Time spent waiting for a Postgres connection.",
            buckets=DB_ACQUIRE_BUCKETS,
        ),
        cache_requests=Counter(
            "wardrobe_cache_requests",
            "Cache lookups by kind and result (hit, miss, error).",
            ["kind", "result"],
        ),
        dependency_errors=Counter(
            "wardrobe_dependency_errors",
            "Failed calls to a dependency (postgres, redis, ...).",
            ["dependency"],
        ),
        # Gauges that a periodic probe sets (the reaper, beside a consumer): the latest probe is the truth,
        # whichever process ran it, so neither summed nor kept per pid. The API reads the same numbers at scrape
        # time instead (QueueBacklog), without these files.
        queue_length=Gauge(*QUEUE_LENGTH, ["queue"], multiprocess_mode="mostrecent"),
        queue_oldest_age=Gauge(*QUEUE_OLDEST_AGE, ["queue"], multiprocess_mode="mostrecent"),
        job_duration=Histogram(
            "wardrobe_job_duration_seconds",
            "Background job run time by kind and outcome.",
            ["kind", "outcome"],
            buckets=JOB_BUCKETS,
        ),
        jobs=Counter("wardrobe_jobs", "Background jobs finished, by kind and outcome.", ["kind", "outcome"]),
        openai_requests=Counter(
            "wardrobe_openai_requests",
            "OpenAI API calls by key alias and HTTP status.",
            ["key_alias", "status"],
        ),
        openai_rate_limited=Counter(
            "wardrobe_openai_rate_limited",
            "OpenAI 429s and local limiter refusals, by key alias and kind.",
            ["key_alias", "kind"],
        ),
        openai_tokens=Counter("wardrobe_openai_tokens", "OpenAI tokens consumed.", ["key_alias"]),
        brand_api_requests=Counter("wardrobe_brand_api_requests", "Brand API calls by outcome.", ["outcome"]),
        # Worst state seen by any live process: one process with an open breaker is worth an alert.
        brand_breaker_state=Gauge(
            "wardrobe_brand_breaker_state",
            "Brand API circuit breaker: 0 closed, 1 half-open, 2 open.",
            multiprocess_mode="livemax",
        ),
        ratelimit_fail_open=Counter(
            "wardrobe_ratelimit_fail_open",
            "Requests let through because the rate limiter's store was unavailable.",
            ["limit"],
        ),
        db_queries=Counter(
            "wardrobe_db_queries",
            "Units of work sent to Postgres, by target (primary, or a replica's host:port) and kind (read: one that "
            "may be a moment old; primary: one that must see the primary, writes and the reads inside or after them).",
            ["target", "kind"],
        ),
        # Every process measures the same replicas: the latest reading is the truth, whichever process took it.
        db_replica_lag=Gauge(
            "wardrobe_db_replica_lag_seconds",
            "Seconds of the primary's writes a replica may lack (+Inf: unreachable or not replaying).",
            ["replica"],
            multiprocess_mode="mostrecent",
        ),
        db_replica_fallbacks=Counter(
            "wardrobe_db_replica_fallbacks",
            "Reads that could go to a replica but went to the primary, by reason (unhealthy: no replica healthy; "
            "read_your_writes: none has replayed the user's latest write; error: the replica failed the read).",
            ["reason"],
        ),
        process_resident_memory=Gauge(
            "wardrobe_process_resident_memory_bytes",
            "Resident memory summed over live processes of a role.",
            ["role"],
            multiprocess_mode="livesum",
        ),
        process_cpu_seconds=Counter(
            "wardrobe_process_cpu_seconds", "CPU time (user + system) of all processes of a role.", ["role"]
        ),
    )


def ensure_multiprocess_mode(multiproc_dir: str | None) -> None:
    """Fail loudly when a multiproc dir is configured but prometheus_client was imported before it was set.

    Call it in each worker before recording anything; otherwise every worker would silently keep its own
    numbers and /metrics would show whichever worker answered the scrape.
    """
    if not multiproc_dir:
        return
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; "
            "import wardrobe.config before anything that imports prometheus_client"
        )
    if not os.path.isdir(multiproc_dir):
        raise RuntimeError(f"PROMETHEUS_MULTIPROC_DIR {multiproc_dir!r} is not a directory")


class LiveGauges:
    """Gauges of this process's moment-to-moment state (requests in flight, pool connections in use and waited
    for), set from their sources once a second and before each scrape this process answers.

    Setting a multiprocess gauge is a locked write to the process's mmap'd file: done on every request and every
    pool acquire it was about 2 % of an API worker's CPU on the session mix (py-spy). Prometheus scrapes every
    15 s, so a value at most a second old is what it would have seen anyway. A gauge fed by several sources (two
    pools, two apps in one test process) shows their sum.
    """

    def __init__(self) -> None:
        self._sources: dict[Any, list[Callable[[], float]]] = {}

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        reads = self._sources.setdefault(gauge, [])
        reads.append(read)
        gauge.set(sum(r() for r in reads))

    def refresh(self) -> None:
        for gauge, reads in list(self._sources.items()):
            gauge.set(sum(read() for read in reads))

    def start(self, interval: float = 1.0) -> threading.Thread:
        """Refresh every `interval` seconds in a daemon thread (a greenlet once gevent has patched)."""

        def loop() -> None:
            while True:
                time.sleep(interval)
                self.refresh()

        thread = threading.Thread(target=loop, name="wardrobe-live-gauges", daemon=True)
        thread.start()
        return thread


@functools.cache
def live_gauges() -> LiveGauges:
    """The process's live gauges (see LiveGauges)."""
    return LiveGauges()


# --- HTTP ----------------------------------------------------------------------------------------------


class MetricsMiddleware:
    """Records request duration by route template (never the raw path, to bound cardinality) and in-flight.

    In flight is counted here and published as a live gauge; each (route, method, status class) histogram child
    is looked up once (`labels()` takes a lock and builds a key on every call).
    """

    def __init__(self, metrics: Collectors | None = None, clock: Callable[[], float] = time.perf_counter):
        self._metrics = metrics or collectors()
        self._clock = clock
        self._methods = frozenset(falcon.COMBINED_METHODS)
        self._children: dict[tuple[str, str, int], Any] = {}
        # A greenlet runs each of these steps without yielding, so a plain int counts exactly.
        self._in_flight = 0
        live_gauges().watch(self._metrics.http_requests_in_flight, lambda: self._in_flight)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._in_flight += 1
        req.context.metrics_started_at = self._clock()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, succeeded: bool):
        started = req.context.get("metrics_started_at")
        if started is None:
            return
        req.context.metrics_started_at = None
        self._in_flight -= 1
        method = req.method if req.method in self._methods else "OTHER"  # also bounds the children
        key = (req.uri_template or "unmatched", method, resp.status_code // 100)
        child = self._children.get(key)
        if child is None:
            child = self._metrics.http_request_duration.labels(key[0], method, f"{key[2]}xx")
            self._children[key] = child
        child.observe(self._clock() - started)


class ProcessUsage:
    """Keeps wardrobe_process_* current for this process: the stock process collector is blind in
    multiprocess mode, so each process publishes its own RSS and CPU time and Prometheus sums them.
    """

    def __init__(
        self,
        role: str,
        metrics: Collectors | None = None,
        read_rss: Callable[[], int] | None = None,
        read_cpu: Callable[[], float] | None = None,
    ) -> None:
        self._role = role
        self._metrics = metrics or collectors()
        self._read_rss = read_rss or _resident_memory_bytes
        self._read_cpu = read_cpu or _cpu_seconds
        self._pid = os.getpid()
        self._cpu_reported = 0.0

    def refresh(self) -> None:
        if os.getpid() != self._pid:
            # A forked child starts with its own CPU clock at zero and its own counter file.
            self._pid, self._cpu_reported = os.getpid(), 0.0
        self._metrics.process_resident_memory.labels(self._role).set(self._read_rss())
        cpu = self._read_cpu()
        if cpu > self._cpu_reported:
            self._metrics.process_cpu_seconds.labels(self._role).inc(cpu - self._cpu_reported)
            self._cpu_reported = cpu

    def start(self, interval: float = 15.0) -> threading.Thread:
        """Refresh every `interval` seconds in a daemon thread (a greenlet once gevent has patched)."""

        def loop() -> None:
            while True:
                with contextlib.suppress(OSError):
                    self.refresh()
                time.sleep(interval)

        thread = threading.Thread(target=loop, name="wardrobe-process-usage", daemon=True)
        thread.start()
        return thread


class ReplicaMetrics:
    """The replica router's observer (store/replicas.py): queries by target, replica lag, fallbacks."""

    def __init__(self, metrics: Collectors | None = None) -> None:
        self._metrics = metrics or collectors()

    def query(self, target: str, kind: str) -> None:
        self._metrics.db_queries.labels(target=target, kind=kind).inc()

    def lag(self, replica: str, seconds: float) -> None:
        self._metrics.db_replica_lag.labels(replica=replica).set(seconds)

    def fallback(self, reason: str) -> None:
        self._metrics.db_replica_fallbacks.labels(reason=reason).inc()


def _resident_memory_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        # Peak rather than current, but better than nothing off Linux.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class ScrapeProbe(Protocol):
    """Metric families read at scrape time rather than recorded: `refresh()` before each scrape (bounded, and
    never raising), then `collect()` like any prometheus_client collector. They replace any copy of the same
    families in the multiprocess files, so a family is never exported twice."""

    families: frozenset[str]

    def refresh(self) -> None: ...

    def collect(self) -> Iterable[Any]: ...


class MetricsResource:
    """GET /metrics in the text exposition format, merged across workers when a multiproc dir is set."""

    def __init__(
        self,
        authorize: Callable[[falcon.Request], object],
        multiproc_dir: str | None = None,
        process_usage: ProcessUsage | None = None,
        probes: Iterable[ScrapeProbe] = (),
    ) -> None:
        self._authorize = authorize
        self._probes = list(probes)
        self._registry = _registry(multiproc_dir, self._probes)
        self._process_usage = process_usage

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self._authorize(req):
            raise falcon.HTTPForbidden(title="Forbidden", description="Metrics are restricted to operators.")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self._process_usage is not None:
            with contextlib.suppress(OSError):
                self._process_usage.refresh()
        live_gauges().refresh()
        # Before reading the files, so an error a probe counts shows in this very scrape.
        for probe in self._probes:
            probe.refresh()
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self._registry)


def _registry(multiproc_dir: str | None, probes: Iterable[ScrapeProbe] = ()):
    from prometheus_client import REGISTRY, CollectorRegistry

    probes = list(probes)
    if not multiproc_dir and not probes:
        return REGISTRY
    replaced = frozenset().union(*(probe.families for probe in probes))
    registry = CollectorRegistry()
    registry.register(
        _MultiProcessFiles(multiproc_dir, replaced) if multiproc_dir else _Without(REGISTRY, replaced)
    )
    for probe in probes:
        registry.register(probe)
    return registry


class _Without:
    """A registry's families except some (single-process mode with probes)."""

    def __init__(self, source: Any, left_out: frozenset[str]) -> None:
        self._source = source
        self._left_out = left_out

    def collect(self):
        return [family for family in self._source.collect() if family.name not in self._left_out]


class _MultiProcessFiles:
    """MultiProcessCollector that reads under a shared lock, so it never sees a half-compacted directory."""

    def __init__(self, path: str, left_out: frozenset[str] = frozenset()) -> None:
        self._path = path
        self._left_out = left_out

    def collect(self):
        from prometheus_client.multiprocess import MultiProcessCollector

        with _directory_lock(self._path, fcntl.LOCK_SH):
            files = glob.glob(os.path.join(self._path, "*.db"))
            merged = list(MultiProcessCollector.merge(files, accumulate=True))
        return [family for family in merged if family.name not in self._left_out]


def start_worker_metrics_server(
    bind: str, multiproc_dir: str | None = None, role: str = "worker", refresh_interval: float = 15.0
):
    """Serve /metrics for a Huey consumer on its own port (`host:port`); returns (server, thread)."""
    from prometheus_client import start_http_server

    host, _, port = bind.rpartition(":")
    ProcessUsage(role).start(refresh_interval)
    return start_http_server(int(port), addr=host or "127.0.0.1", registry=_registry(multiproc_dir))


# --- gunicorn hooks ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _directory_lock(path: str, mode: int) -> Iterator[None]:
    with open(os.path.join(path, LOCK_FILE), "a+b") as handle:
        fcntl.flock(handle.fileno(), mode)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def wipe_multiproc_dir(path: str) -> None:
    """Start from an empty directory (gunicorn `on_starting`): old files would replay a previous run's counts."""
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")) + glob.glob(os.path.join(path, "*.db.tmp")):
        os.remove(name)


def _keep_sum(old: tuple[float, float], new: tuple[float, float]) -> tuple[float, float]:
    return old[0] + new[0], 0.0


def _keep_min(old: tuple[float, float], new: tuple[float, float]) -> tuple[float, float]:
    return min(old, new)


def _keep_max(old: tuple[float, float], new: tuple[float, float]) -> tuple[float, float]:
    return max(old, new)


def _keep_latest(old: tuple[float, float], new: tuple[float, float]) -> tuple[float, float]:
    return new if new[1] >= old[1] else old


# How a dead process's values fold into the archive, per file prefix. Live gauges are simply dropped (by
# prometheus_client's mark_process_dead); "all"-mode gauges keep a series per pid by design and stay.
_COMPACTION = {
    "counter": _keep_sum,
    "histogram": _keep_sum,  # buckets are stored non-cumulative, so per-bucket sums are exact
    "summary": _keep_sum,
    "gauge_sum": _keep_sum,
    "gauge_min": _keep_min,
    "gauge_max": _keep_max,
    "gauge_mostrecent": _keep_latest,
}


def mark_worker_dead(pid: int, path: str) -> None:
    """gunicorn `child_exit`: drop the worker's live gauges and fold its other files into one archive per
    kind, so recycled workers do not leave files behind that every scrape must read (client_python#367).
    """
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict

    multiprocess.mark_process_dead(pid, path)
    with _directory_lock(path, fcntl.LOCK_EX):
        for prefix, combine in _COMPACTION.items():
            dead = os.path.join(path, f"{prefix}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = os.path.join(path, f"{prefix}_{ARCHIVE_ID}.db")
            values: dict[str, tuple[float, float]] = {}
            for source in (archive, dead):
                if not os.path.exists(source):
                    continue
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(source):
                    sample = (value, timestamp)
                    values[key] = combine(values[key], sample) if key in values else sample
            # Built aside and renamed: the name does not match *.db until it is complete.
            pending = archive + ".tmp"
            with contextlib.suppress(FileNotFoundError):
                os.remove(pending)
            merged = MmapedDict(pending)
            try:
                for key, (value, timestamp) in values.items():
                    merged.write_value(key, value, timestamp)
            finally:
                merged.close()
            os.replace(pending, archive)
            os.remove(dead)
