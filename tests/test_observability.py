"""What an operator sees: metrics summed across gunicorn workers, profiles of the live API, Sentry events for
5xx only, and an API process that never loads the background-removal model."""

import http.client
import subprocess
import sys
import threading
import time
from pathlib import Path

import falcon
import falcon.testing
import pytest
import sentry_sdk
from conftest import auth_header, make_config, server_env
from processes import gunicorn
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
    # Each worker has its own profiler; whichever answered saw its share of requests.
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
