"""Prometheus plumbing: route-templated HTTP metrics, multiprocess merging across workers, dead-worker
cleanup, and the Huey-side exporter, read back through prometheus_client's own parser.
"""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import falcon
import falcon.testing
import gevent
import gevent.event
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from wardrobe.ops import metrics, observability
from wardrobe.store.db import DatabaseUnavailable


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parsed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


def value(parsed, name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(resource: metrics.MetricsResource) -> dict:
    app = falcon.App()
    app.add_route("/metrics", resource)
    result = falcon.testing.TestClient(app).simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    return samples(result.text)


# --- single process ----------------------------------------------------------------------------------


def test_requests_are_timed_by_route_template_and_in_flight_returns_to_zero() -> None:
    resource = metrics.MetricsResource(authorize=lambda req: True)
    seen_in_flight = []

    class Item:
        def on_get(self, req, resp, item_id):
            seen_in_flight.append(value(scrape(resource), "wardrobe_http_requests_in_flight"))
            resp.media = {"id": item_id}

    class Broken:
        def on_get(self, req, resp):
            raise RuntimeError("boom")

    app = falcon.App(middleware=[metrics.MetricsMiddleware()])
    app.add_route("/items/{item_id}", Item())
    app.add_route("/broken", Broken())
    client = falcon.testing.TestClient(app)
    before = scrape(resource)

    for item_id in ("1", "2", "3"):
        assert client.simulate_get(f"/items/{item_id}").status_code == 200
    assert client.simulate_get("/no/such/path/42").status_code == 404
    assert client.simulate_get("/broken").status_code == 500
    after = scrape(resource)

    def delta(**labels: str) -> float:
        name = "wardrobe_http_request_duration_seconds_count"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(route="/items/{item_id}", method="GET", status_class="2xx") == 3
    assert delta(route="unmatched", method="GET", status_class="4xx") == 1
    assert delta(route="/broken", method="GET", status_class="5xx") == 1
    routes = {dict(labels).get("route") for name, labels in after if name.startswith("wardrobe_http")}
    assert not any(route and route.startswith(("/items/1", "/no/")) for route in routes), routes
    assert seen_in_flight and seen_in_flight[-1] >= 1
    assert value(after, "wardrobe_http_requests_in_flight") == 0
    # The buckets resolve the 2 s latency objective and stop at 30 s.
    bucket_edges = {dict(labels)["le"] for name, labels in after if name.endswith("_duration_seconds_bucket")}
    assert {"2.0", "30.0", "+Inf"} <= bucket_edges


def test_a_scrape_shows_the_pools_connections_in_use_and_every_acquire_timed(config) -> None:
    from wardrobe.store.db import Pool

    resource = metrics.MetricsResource(authorize=lambda req: True)
    pool = Pool(config.database_url, size=2, overflow=0, observer=observability.PoolMetrics())
    before = scrape(resource)
    try:
        with pool.connection(), pool.connection():
            during = scrape(resource)
        after = scrape(resource)
    finally:
        pool.close()
    count = "wardrobe_db_pool_acquire_seconds_count"
    assert value(during, "wardrobe_db_pool_in_use") - value(before, "wardrobe_db_pool_in_use") == 2
    assert value(after, "wardrobe_db_pool_in_use") == value(before, "wardrobe_db_pool_in_use")
    assert value(after, count) - value(before, count) == 2


def test_metrics_need_authorization() -> None:
    app = falcon.App()
    app.add_route("/metrics", metrics.MetricsResource(authorize=lambda req: False))
    assert falcon.testing.TestClient(app).simulate_get("/metrics").status_code == 403


def test_process_usage_is_published_per_role() -> None:
    usage = metrics.ProcessUsage("api-test", read_rss=lambda: 123_000_000, read_cpu=iter([1.5, 2.0]).__next__)
    resource = metrics.MetricsResource(authorize=lambda req: True, process_usage=usage)
    usage.refresh()
    parsed = scrape(resource)  # refreshes once more on scrape
    assert value(parsed, "wardrobe_process_resident_memory_bytes", role="api-test") == 123_000_000
    assert value(parsed, "wardrobe_process_cpu_seconds_total", role="api-test") == 2.0


def test_wrong_import_order_is_reported(tmp_path: Path) -> None:
    # This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR.
    with pytest.raises(RuntimeError, match="imported before PROMETHEUS_MULTIPROC_DIR"):
        metrics.ensure_multiprocess_mode(str(tmp_path))
    metrics.ensure_multiprocess_mode(None)


# --- the queue backlog, read when scraped ------------------------------------------------------------


class Ledger:
    """Stands in for JobLedger.backlog: rows per stage, or an error."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.error: Exception | None = None
        self.timeouts: list[int | None] = []
        self.release: gevent.event.Event | None = None

    def backlog(self, statement_timeout_ms: int | None = None) -> list[dict]:
        self.timeouts.append(statement_timeout_ms)
        if self.release is not None:
            self.release.wait()
        if self.error is not None:
            raise self.error
        return self.rows


BACKLOG = [
    {"stage": "cutout", "waiting": 4, "oldest_age": Decimal("12.5")},
    {"stage": "analyze", "waiting": 1, "oldest_age": Decimal("3")},
    {"stage": "capsule", "waiting": 2, "oldest_age": Decimal("7.25")},
]


def queue_series(parsed) -> dict:
    return {key: v for key, v in parsed.items() if key[0].startswith("wardrobe_queue_")}


def test_the_backlog_is_read_when_scraped_and_at_most_once_per_cache_period() -> None:
    now = [100.0]
    ledger = Ledger(BACKLOG)
    probe = observability.QueueBacklog(ledger.backlog, clock=lambda: now[0])
    resource = metrics.MetricsResource(authorize=lambda req: True, probes=[probe])
    parsed = scrape(resource)
    assert value(parsed, "wardrobe_queue_length", queue="images") == 4
    assert value(parsed, "wardrobe_queue_length", queue="ai") == 3  # analyze and capsule
    assert value(parsed, "wardrobe_queue_oldest_age_seconds", queue="images") == 12.5
    assert value(parsed, "wardrobe_queue_oldest_age_seconds", queue="ai") == 7.25
    for _ in range(5):
        scrape(resource)
    assert len(ledger.timeouts) == 1, "scrapes within the cache period share one read"
    assert all(0 < timeout <= 1000 for timeout in ledger.timeouts)  # bounded server-side too

    now[0] += 3
    ledger.rows = []
    parsed = scrape(resource)
    assert len(ledger.timeouts) == 2
    # Empty queues are zeros, not gaps: an alert can tell "nothing waits" from "nobody knows".
    assert value(parsed, "wardrobe_queue_length", queue="images") == 0
    assert ("wardrobe_queue_length", (("queue", "images"),)) in parsed


def test_a_failing_backlog_read_leaves_out_only_its_own_families_and_is_counted() -> None:
    now = [100.0]
    ledger = Ledger(BACKLOG)
    probe = observability.QueueBacklog(ledger.backlog, clock=lambda: now[0])
    resource = metrics.MetricsResource(authorize=lambda req: True, probes=[probe])
    metrics.collectors()
    assert value(scrape(resource), "wardrobe_queue_length", queue="images") == 4
    errors = value(scrape(resource), "wardrobe_dependency_errors_total", dependency="postgres")

    now[0] += 3
    ledger.error = DatabaseUnavailable("connection refused")
    parsed = scrape(resource)
    assert queue_series(parsed) == {}, "the last good numbers must not pass for current ones"
    assert value(parsed, "wardrobe_dependency_errors_total", dependency="postgres") == errors + 1
    assert ("wardrobe_http_requests_in_flight", ()) in parsed

    now[0] += 3
    ledger.error = None
    assert value(scrape(resource), "wardrobe_queue_length", queue="images") == 4


def test_a_scrape_waits_for_a_slow_backlog_read_only_so_long(monkeypatch) -> None:
    # As in a gevent worker: the read runs in its own greenlet and the scrape waits at most `timeout` for it.
    monkeypatch.setattr(observability, "gevent_active", lambda: True)
    now = [100.0]
    ledger = Ledger(BACKLOG)
    ledger.release = gevent.event.Event()  # Postgres does not answer until the test says so
    probe = observability.QueueBacklog(ledger.backlog, clock=lambda: now[0], timeout=0.05)
    resource = metrics.MetricsResource(authorize=lambda req: True, probes=[probe])
    assert queue_series(scrape(resource)) == {}
    now[0] += 3
    assert queue_series(scrape(resource)) == {}
    assert len(ledger.timeouts) == 1, "one read at a time, however many scrapes wait"
    ledger.release.set()
    gevent.sleep(0)
    assert value(scrape(resource), "wardrobe_queue_length", queue="images") == 4


# --- several processes, as under gunicorn ------------------------------------------------------------

WORKER_SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    import falcon
    import falcon.testing

    from wardrobe.ops import metrics

    requests_to_make, queue_length = int(sys.argv[1]), float(sys.argv[2])
    metrics.ensure_multiprocess_mode(os.environ["PROMETHEUS_MULTIPROC_DIR"])

    class Item:
        def on_get(self, req, resp, item_id):
            resp.media = {"id": item_id}

    app = falcon.App(middleware=[metrics.MetricsMiddleware()])
    app.add_route("/items/{item_id}", Item())
    client = falcon.testing.TestClient(app)
    for i in range(requests_to_make):
        client.simulate_get(f"/items/{i}")
    collectors = metrics.collectors()
    collectors.cache_requests.labels("capsule", "hit").inc(requests_to_make)
    collectors.queue_length.labels("images").set(queue_length)
    collectors.jobs.labels("remove_background", "ok").inc()
    collectors.job_duration.labels("remove_background", "ok").observe(45.0)
    metrics.ProcessUsage("api").refresh()
    print(os.getpid(), flush=True)
    sys.stdin.readline()  # stay alive until the test lets go
    """
)


class Worker:
    def __init__(self, script: Path, multiproc_dir: Path, requests_to_make: int, queue_length: float) -> None:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(requests_to_make), str(queue_length)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.pid = int(self.process.stdout.readline())

    def exit(self) -> None:
        self.process.communicate("\n", timeout=10)


@pytest.fixture
def multiproc(tmp_path: Path):
    directory = tmp_path / "prometheus"
    metrics.wipe_multiproc_dir(str(directory))
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    workers: list[Worker] = []

    def start(requests_to_make: int, queue_length: float = 0.0) -> Worker:
        worker = Worker(script, directory, requests_to_make, queue_length)
        workers.append(worker)
        return worker

    yield directory, start
    for worker in workers:
        if worker.process.poll() is None:
            worker.exit()


def test_two_workers_are_counted_together_and_dead_ones_are_folded_away(multiproc) -> None:
    directory, start = multiproc
    resource = metrics.MetricsResource(authorize=lambda req: True, multiproc_dir=str(directory))
    first = start(3, queue_length=7)
    second = start(5, queue_length=2)  # reports later, so its queue length is the current one

    live = scrape(resource)
    count = "wardrobe_http_request_duration_seconds_count"
    assert value(live, count, route="/items/{item_id}", method="GET", status_class="2xx") == 8
    assert value(live, "wardrobe_cache_requests_total", kind="capsule", result="hit") == 8
    assert value(live, "wardrobe_queue_length", queue="images") == 2
    assert value(live, "wardrobe_http_requests_in_flight") == 0
    rss_both = value(live, "wardrobe_process_resident_memory_bytes", role="api")
    assert rss_both > 0

    first.exit()
    metrics.mark_worker_dead(first.pid, str(directory))
    after_first = scrape(resource)
    assert value(after_first, count, route="/items/{item_id}", method="GET", status_class="2xx") == 8
    assert value(after_first, "wardrobe_queue_length", queue="images") == 2
    assert 0 < value(after_first, "wardrobe_process_resident_memory_bytes", role="api") < rss_both
    assert not glob.glob(str(directory / f"*_{first.pid}.db")), "the dead worker's files must be gone"

    # Recycled workers keep coming and going: the totals stay right and the file count stays flat.
    second.exit()
    metrics.mark_worker_dead(second.pid, str(directory))
    files_after_two = sorted(os.listdir(directory))
    for _ in range(2):
        worker = start(1)
        worker.exit()
        metrics.mark_worker_dead(worker.pid, str(directory))
    assert sorted(os.listdir(directory)) == files_after_two
    assert all("archive" in name or name == metrics.LOCK_FILE for name in files_after_two)

    final = scrape(resource)
    assert value(final, count, route="/items/{item_id}", method="GET", status_class="2xx") == 10
    assert value(final, "wardrobe_jobs_total", kind="remove_background", outcome="ok") == 4
    job = dict(kind="remove_background", outcome="ok")
    assert value(final, "wardrobe_job_duration_seconds_bucket", le="30.0", **job) == 0
    assert value(final, "wardrobe_job_duration_seconds_bucket", le="60.0", **job) == 4
    assert value(final, "wardrobe_job_duration_seconds_count", **job) == 4
    assert value(final, "wardrobe_job_duration_seconds_sum", **job) == 180
    assert value(final, "wardrobe_process_resident_memory_bytes", role="api") == 0
    assert value(final, "wardrobe_process_cpu_seconds_total", role="api") > 0
    # The latest report came from the last recycled worker, which saw an empty queue.
    assert value(final, "wardrobe_queue_length", queue="images") == 0


def test_the_api_backlog_replaces_a_reapers_copy_in_the_same_directory(multiproc) -> None:
    # A directory shared with a process that sets the gauges itself (a reaper under one systemd unit).
    directory, start = multiproc
    start(0, queue_length=7)
    plain = metrics.MetricsResource(authorize=lambda req: True, multiproc_dir=str(directory))
    assert value(scrape(plain), "wardrobe_queue_length", queue="images") == 7
    probe = observability.QueueBacklog(Ledger(BACKLOG).backlog)
    with_probe = metrics.MetricsResource(
        authorize=lambda req: True, multiproc_dir=str(directory), probes=[probe]
    )
    parsed = scrape(with_probe)
    assert {key: v for key, v in queue_series(parsed).items() if key[0] == "wardrobe_queue_length"} == {
        ("wardrobe_queue_length", (("queue", "ai"),)): 3,
        ("wardrobe_queue_length", (("queue", "images"),)): 4,
    }
    assert value(parsed, "wardrobe_jobs_total", kind="remove_background", outcome="ok") == 1  # the rest stays


def test_wipe_clears_a_previous_run(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"stale")
    (directory / "histogram_archive.db").write_bytes(b"stale")
    metrics.wipe_multiproc_dir(str(directory))
    assert not list(directory.glob("*.db"))


# --- Huey consumer exporter --------------------------------------------------------------------------

CONSUMER_SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    from wardrobe.ops import metrics

    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    metrics.ensure_multiprocess_mode(directory)
    metrics.start_worker_metrics_server(sys.argv[1], multiproc_dir=directory, role="worker")
    collectors = metrics.collectors()
    collectors.jobs.labels("suggest_capsule", "failed").inc()
    collectors.job_duration.labels("suggest_capsule", "failed").observe(1200)
    print("ready", flush=True)
    sys.stdin.readline()
    """
)


def test_consumer_serves_its_own_metrics_port(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    metrics.wipe_multiproc_dir(str(directory))
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER_SCRIPT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(script), f"127.0.0.1:{port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        parsed = samples(response.text)
    finally:
        process.communicate("\n", timeout=10)
    job = dict(kind="suggest_capsule", outcome="failed")
    assert value(parsed, "wardrobe_jobs_total", **job) == 1
    assert value(parsed, "wardrobe_job_duration_seconds_bucket", le="1800.0", **job) == 1
    assert value(parsed, "wardrobe_job_duration_seconds_bucket", le="900.0", **job) == 0
    assert value(parsed, "wardrobe_process_resident_memory_bytes", role="worker") > 0
