"""What an operator sees: metrics summed across gunicorn workers, profiles of the live API, Sentry events for
5xx only, and an API process that never loads the background-removal model."""

import http.client
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import falcon
import falcon.testing
import pytest
import sentry_sdk
from conftest import auth_header, image_bytes, make_config, multipart, server_env
from processes import RedisServer, free_port, gunicorn
from prometheus_client.parser import text_string_to_metric_families
from test_profiling import decode_profile

from wardrobe.app import create_app
from wardrobe.ops import observability


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("observability")
    env = server_env(tmp, WARDROBE_METRICS_TOKEN="operator-secret", WARDROBE_PROFILE_HZ=100)
    proc, base = gunicorn(env, tmp / "gunicorn.log", workers=2)
    yield proc, int(base.rsplit(":", 1)[1])
    proc.stop()


def get(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}


pytestmark = pytest.mark.slow


def test_metrics_count_requests_across_both_workers(live):
    proc, port = live
    for n in range(40):  # new connections: gunicorn spreads them over its two workers
        assert get(port, "/api/v1/me", auth_header(970_000_000 + n))[0] == 200
    status, body, headers = get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    counts = [
        s
        for s in families["wardrobe_http_request_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["route"] == "/api/v1/me"
    ]
    assert sum(s.value for s in counts) == 40
    assert {s.labels["status_class"] for s in counts} == {"2xx"}
    pids = {
        line.split("pid: ")[1].rstrip(")") for line in proc.output().splitlines() if "Booting worker" in line
    }
    assert len(pids) == 2
    assert "wardrobe_db_pool_acquire_seconds" in families
    rss = [
        s for s in families["wardrobe_process_resident_memory_bytes"].samples if s.labels.get("role") == "api"
    ]
    assert rss and rss[0].value > 10_000_000


def test_operator_endpoints_need_loopback_or_the_token(live):
    _, port = live
    assert get(port, "/metrics", {"X-Forwarded-For": "203.0.113.9"})[0] == 403
    assert get(port, "/metrics", {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer nope"})[0] == 403
    ok = get(port, "/metrics", {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer operator-secret"})
    assert ok[0] == 200
    assert get(port, "/debug/flamegraph", {"X-Forwarded-For": "203.0.113.9"})[0] == 403


def test_wall_profile_of_the_live_api_names_routes(live):
    _, port = live
    # Enough traffic for a 100 Hz sampler to see: requests take a few ms, so keep both workers busy for ~1.5 s.
    deadline = time.monotonic() + 1.5

    def browse(n: int) -> None:
        while time.monotonic() < deadline:
            get(port, "/api/v1/items", auth_header(971_000_000 + n))

    clients = [threading.Thread(target=browse, args=(n,)) for n in range(4)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    status, body, _ = get(port, "/debug/pprof/profile?type=wall&seconds=30")
    assert status == 200
    profile = decode_profile(body)
    assert profile["sample_types"][1] == ("wall", "nanoseconds")
    routes = {label.get("route") for sample in profile["samples"] for label in [sample["labels"]]}
    # The other worker's samples join once its window closes (test_profiles_show_every_worker_...), so right
    # after the traffic the answering worker's own may be all there is.
    assert "/api/v1/items" in routes or "/debug/pprof/profile" in routes
    status, page, _ = get(port, "/debug/flamegraph?type=wall&seconds=30")
    assert status == 200 and b"<html" in page.lower()


def test_the_api_never_loads_rembg_or_an_inference_engine(live):
    proc, _ = live
    workers = subprocess.run(
        ["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True
    ).stdout.split()
    assert workers
    for pid in [proc.proc.pid, *workers]:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "onnxruntime" not in maps and "rembg" not in maps and "openvino" not in maps
    probe = (
        "import sys, wardrobe.wsgi; print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('rembg', 'onnxruntime', 'openvino')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={
            "WARDROBE_DATA_DIR": str(Path(proc.log).parent / "data"),
            "PATH": "/usr/bin:/bin",
        },
    )
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


# --- the whole box, whichever worker answers ------------------------------------------------------------


def workers_of(proc) -> list[int]:
    """The gunicorn master's worker pids, once all of them (two here) are up."""
    deadline = time.monotonic() + 30
    while True:
        found = subprocess.run(["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True).stdout
        pids = sorted(int(pid) for pid in found.split())
        if len(pids) == 2 or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def serving_worker(conn: http.client.HTTPConnection, workers: list[int]) -> int:
    """The worker holding the server end of this kept-alive connection, found as an operator would: the
    connection's socket inode in /proc/net/tcp, then the worker that has that socket open."""
    server = f"0100007F:{conn.port:04X}"
    client = f"0100007F:{conn.sock.getsockname()[1]:04X}"
    inodes = [
        fields[9]
        for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
        if fields[1] == server and fields[2] == client
    ]
    assert inodes, "the connection is not in /proc/net/tcp"
    for pid in workers:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inodes[0]}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds socket {inodes[0]}")


def fetch(
    port: int, path: str, headers=None
) -> tuple[http.client.HTTPResponse, bytes, http.client.HTTPConnection]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    return resp, resp.read(), conn


@pytest.fixture
def box(tmp_path):
    """An API of two workers that nothing else talks to."""
    env = server_env(tmp_path, WARDROBE_PROFILE_HZ=100)
    proc, base = gunicorn(env, tmp_path / "gunicorn.log", workers=2)
    yield proc, int(base.rsplit(":", 1)[1])
    proc.stop()


def test_profiles_show_every_worker_whichever_one_answers(box):
    proc, port = box
    workers = workers_of(proc)
    assert len(workers) == 2
    # One client on one kept-alive connection keeps one worker busy on a route nobody else calls.
    pinned = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    user = auth_header(974_000_000)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        pinned.request("GET", "/api/v1/items", headers=user)
        resp = pinned.getresponse()
        resp.read()
        assert resp.status == 200
    busy = serving_worker(pinned, workers)
    idle = next(pid for pid in workers if pid != busy)
    # Windows close on 10 s boundaries of the clock: wait until the one that saw the load has closed.
    time.sleep(10 - time.time() % 10 + 1)

    answers: dict[int, list[tuple[set, str | None]]] = {pid: [] for pid in workers}
    for _ in range(60):  # fresh connections, so both workers get some of them
        resp, body, conn = fetch(port, "/debug/pprof/profile?type=wall&seconds=120")
        assert resp.status == 200
        answered_by = serving_worker(conn, workers)
        conn.close()
        routes = {sample["labels"].get("route") for sample in decode_profile(body)["samples"]}
        answers[answered_by].append((routes, resp.getheader("X-Profile-Workers")))
        if len(answers[idle]) >= 3:
            break
    assert answers[idle], "no profile request reached the worker that was not loaded"
    for pid, replies in answers.items():
        for routes, _ in replies:
            assert "/api/v1/items" in routes, (
                f"worker {pid} ({'busy' if pid == busy else 'idle'}) answered {routes}"
            )
    # The answer says whose samples it holds: the answering worker's live ones and the other's closed windows.
    sources = dict(part.strip().split("=") for part in answers[idle][-1][1].split(","))
    assert sources[str(idle)] == "live"
    assert float(sources[str(busy)]) > time.time() - 60

    for _ in range(60):
        resp, page, conn = fetch(port, "/debug/flamegraph?type=wall&seconds=120")
        answered_by = serving_worker(conn, workers)
        conn.close()
        if answered_by == idle:
            assert resp.status == 200 and b'"/api/v1/items"' in page
            assert b"2 processes" in page
            break
    else:
        raise AssertionError("no flame graph request reached the worker that was not loaded")
    pinned.close()


def metric_values(body: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_the_api_exports_the_queue_backlog_while_no_consumer_runs(tmp_path, user):
    # A Redis of our own: the jobs are enqueued, and nothing consumes them.
    redis = RedisServer(tmp_path / "redis.log").start()
    try:
        env = server_env(tmp_path, WARDROBE_REDIS_URL=redis.url)
        proc, base = gunicorn(env, tmp_path / "gunicorn.log", workers=2)
        port = int(base.rsplit(":", 1)[1])
        try:
            body, ctype = multipart({"image": ("shirt.jpg", image_bytes(), "image/jpeg")})
            for _ in range(3):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", "/api/v1/items", body=body, headers={**user, "Content-Type": ctype})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                assert resp.status == 202
            for _ in range(4):  # fresh connections: whichever worker takes the scrape
                status, text, _ = get(port, "/metrics")
                assert status == 200
                parsed = metric_values(text)
                assert parsed.get(("wardrobe_queue_length", (("queue", "images"),)), 0) >= 3
                assert parsed.get(("wardrobe_queue_oldest_age_seconds", (("queue", "images"),)), 0) > 0
                assert ("wardrobe_queue_length", (("queue", "ai"),)) in parsed
                # One series per queue, however many workers share the metrics directory.
                assert len([key for key in parsed if key[0] == "wardrobe_queue_length"]) == 2
        finally:
            proc.stop()
    finally:
        redis.stop()


def test_metrics_still_answer_when_the_backlog_cannot_be_read(tmp_path):
    env = server_env(
        tmp_path,
        WARDROBE_DATABASE_URL=f"postgresql://127.0.0.1:{free_port()}/nowhere",
        WARDROBE_DB_CONNECT_TIMEOUT=0.5,
    )
    proc, base = gunicorn(env, tmp_path / "gunicorn.log", workers=1)
    try:
        status, text, _ = get(int(base.rsplit(":", 1)[1]), "/metrics")
    finally:
        proc.stop()
    assert status == 200
    parsed = metric_values(text)
    assert parsed[("wardrobe_dependency_errors_total", (("dependency", "postgres"),))] >= 1
    assert not [key for key in parsed if key[0].startswith("wardrobe_queue_")], "no made-up queue numbers"
    assert any(key[0] == "wardrobe_process_resident_memory_bytes" for key in parsed)


class Captured(sentry_sdk.transport.Transport):
    events: list = []

    def capture_envelope(self, envelope):
        for item in envelope.items:
            if item.type == "event":
                Captured.events.append(item.payload.json)


def test_sentry_receives_5xx_with_tags_but_never_4xx(tmp_path, user):
    Captured.events.clear()
    dsn = "http://public@127.0.0.1:9/1"
    observability.init_sentry(dsn, "test", "api", transport=Captured)
    try:
        app = create_app(make_config(tmp_path, WARDROBE_SENTRY_DSN=dsn))

        class Broken:
            def on_get(self, req, resp):
                raise RuntimeError("deliberate failure for the Sentry test")

        app.add_route("/api/v1/broken", Broken())
        client = falcon.testing.TestClient(app)
        assert client.simulate_get("/api/v1/items/not-there", headers=user).status_code == 404
        assert client.simulate_get("/api/v1/me", headers={"Authorization": "tma nope"}).status_code == 401
        resp = client.simulate_get("/api/v1/broken", headers=user)
        assert resp.status_code == 500 and "Traceback" not in resp.text and resp.json["title"]
        sentry_sdk.flush()
        errors = [e for e in Captured.events if e.get("exception")]
        assert len(errors) == 1
        event = errors[0]
        assert event["exception"]["values"][-1]["value"] == "deliberate failure for the Sentry test"
        assert event["tags"]["route"] == "/api/v1/broken" and event["tags"]["role"] == "api"
        assert event["user"]["id"].isdigit() and "first_name" not in str(event)
    finally:
        sentry_sdk.init()  # back to a disabled client
