"""Checks of the operations config (nginx, systemd, Prometheus, Grafana, Ansible) with the real tools.

nginx is started for real in front of a tiny local backend; promtool, ansible-core and systemd-analyze run on the
files as they are in the repository.
"""

import configparser
import contextlib
import gzip
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from harness.processes import free_port, stop_process, wait_port

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
ANSIBLE = REPO / "ansible"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
ANSIBLE_INVENTORY = VENV_BIN / "ansible-inventory"

# Metric families the app exports (src/wardrobe/metrics.py) plus the exporters the fleet runs.
WARDROBE_METRICS = {
    "wardrobe_http_request_duration_seconds",
    "wardrobe_http_requests_in_flight",
    "wardrobe_db_pool_in_use",
    "wardrobe_db_pool_waiting",
    "wardrobe_db_pool_acquire_seconds",
    "wardrobe_cache_requests_total",
    "wardrobe_dependency_errors_total",
    "wardrobe_queue_length",
    "wardrobe_queue_oldest_age_seconds",
    "wardrobe_job_duration_seconds",
    "wardrobe_jobs_total",
    "wardrobe_openai_requests_total",
    "wardrobe_openai_rate_limited_total",
    "wardrobe_openai_tokens_total",
    "wardrobe_brand_api_requests_total",
    "wardrobe_brand_breaker_state",
    "wardrobe_ratelimit_fail_open_total",
    "wardrobe_process_resident_memory_bytes",
    "wardrobe_process_cpu_seconds_total",
}
HISTOGRAMS = {
    "wardrobe_http_request_duration_seconds",
    "wardrobe_db_pool_acquire_seconds",
    "wardrobe_job_duration_seconds",
}
EXPORTER_METRICS = {"up", "ALERTS", "memcached_up", "pg_up", "redis_instance_info"}


def needs(tool):
    path = Path(tool)
    return pytest.mark.skipif(
        not (path.exists() and os.access(path, os.X_OK)), reason=f"{tool} is not installed"
    )


def run(args, **kwargs):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)


# --- Prometheus ----------------------------------------------------------------------------------------------


@pytest.fixture
def prometheus_dir(tmp_path):
    # The config names a token file that only exists on the monitoring host; give it one.
    target = tmp_path / "prometheus"
    shutil.copytree(CONF / "prometheus", target)
    (target / "secrets").mkdir()
    (target / "secrets" / "wardrobe_metrics_token").write_text("test-token\n")
    return target


@needs(PROMTOOL)
def test_prometheus_config_is_accepted_by_promtool(prometheus_dir):
    result = run([PROMTOOL, "check", "config", prometheus_dir / "prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


@needs(PROMTOOL)
def test_alert_rules_are_accepted_by_promtool():
    result = run([PROMTOOL, "check", "rules", CONF / "prometheus" / "alerts.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


@needs(PROMTOOL)
def test_alert_unit_tests_pass():
    result = run([PROMTOOL, "test", "rules", CONF / "prometheus" / "tests" / "alerts_test.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet():
    rules = yaml.safe_load((CONF / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((CONF / "prometheus" / "tests" / "alerts_test.yml").read_text())
    fired, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fired == set(), "alerts never shown to fire"
    assert alerts - quiet == set(), "alerts never shown to stay quiet on a near miss"


def test_required_alerts_exist():
    rules = yaml.safe_load((CONF / "prometheus" / "alerts.yml").read_text())
    by_name = {r.get("alert") or r.get("record"): r for g in rules["groups"] for r in g["rules"]}
    for name in (
        "WardrobeApiLatencyHigh",
        "WardrobeApiErrorRateHigh",
        "WardrobeQueueBacklogGrowing",
        "WardrobeOpenAIRateLimited",
        "WardrobeCacheHitRateLow",
        "WardrobeApiBackendDown",
        "RedisFailover",
        "WardrobeWorkerDown",
        "WardrobeMemcachedErrors",
    ):
        assert name in by_name
    for q in ("p50", "p95", "p99"):
        assert f"route:wardrobe_http_request_duration_seconds:{q}_5m" in by_name


# --- nginx ---------------------------------------------------------------------------------------------------


class RecordingBackend(BaseHTTPRequestHandler):
    """Stands in for gunicorn: answers JSON, serves an immutable image, records what nginx forwarded."""

    protocol_version = "HTTP/1.1"
    seen: list  # set per server in the fixture

    def log_message(self, *args):
        pass

    def _answer(self, status, body, content_type, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _record(self, body=b""):
        self.server.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers),
                "body_length": len(body),
            }
        )

    def do_GET(self):
        self._record()
        if self.path.startswith("/busy"):  # what the API answers with Postgres away
            body = b'{"title": "Service Unavailable", "description": "The database is unavailable; retry shortly."}'
            self._answer(503, body, "application/json", [("Retry-After", "5")])
        elif self.path.startswith("/images/"):
            self._answer(
                200,
                b"\x89PNG fake image bytes",
                "image/png",
                [("Cache-Control", "public, max-age=31536000, immutable")],
            )
        else:
            items = [{"id": i, "name": f"shirt {i}", "color": "blue"} for i in range(200)]
            self._answer(200, json.dumps({"items": items}).encode(), "application/json")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        self._record(body)
        self._answer(201, b'{"ok": true}', "application/json")


@pytest.fixture
def backend():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), RecordingBackend)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def render_local_nginx(prefix, listen, backend_addr):
    for sub in ("logs", "tmp", "cache"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    text = (CONF / "nginx" / "wardrobe-local.conf").read_text()
    text = (
        text.replace("@PREFIX@", str(prefix)).replace("@LISTEN@", listen).replace("@BACKEND@", backend_addr)
    )
    assert not re.search(r"@[A-Z_]+@", re.sub(r"#.*", "", text)), "unsubstituted placeholder"
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


@pytest.fixture
def nginx_prefix():
    # Not pytest's tmp_path: when tests run as root, nginx's workers run as nobody and need to traverse it.
    prefix = Path(tempfile.mkdtemp(prefix="wardrobe-nginx-"))
    prefix.chmod(0o755)
    yield prefix
    shutil.rmtree(prefix, ignore_errors=True)


@contextlib.contextmanager
def running_nginx(prefix, backend_addr):
    """The local template's nginx in front of backend_addr; yields the port it listens on."""
    port = free_port()
    conf = render_local_nginx(prefix, f"127.0.0.1:{port}", backend_addr)
    proc = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, 10, proc)
    except (RuntimeError, TimeoutError):
        proc.kill()
        raise RuntimeError(f"nginx did not start: {proc.communicate()[1].decode()}") from None
    try:
        yield port
    finally:
        stop_process(proc, timeout=10)


@pytest.fixture
def local_nginx(nginx_prefix, backend):
    with running_nginx(nginx_prefix, f"127.0.0.1:{backend.server_address[1]}") as port:
        yield port


def request(port, method, path, host="localhost", headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@needs(NGINX)
def test_local_template_passes_nginx_t(nginx_prefix):
    conf = render_local_nginx(nginx_prefix, f"127.0.0.1:{free_port()}", "127.0.0.1:8000")
    result = run([NGINX, "-t", "-p", nginx_prefix, "-c", conf, "-e", "stderr"])
    assert result.returncode == 0, result.stderr


@needs(NGINX)
def test_nginx_proxies_with_forwarding_headers_and_request_id(local_nginx, backend):
    status, headers, _ = request(local_nginx, "GET", "/items")
    assert status == 200
    forwarded = backend.seen[-1]["headers"]
    assert forwarded["X-Forwarded-For"] == "127.0.0.1"
    assert forwarded["X-Forwarded-Proto"] == "http"
    assert forwarded["Host"] == "localhost"
    # nginx made up an id, gave it to the backend and to the client: the same one.
    assert re.fullmatch(r"[0-9a-f]{32}", forwarded["X-Request-ID"])
    assert headers["X-Request-ID"] == forwarded["X-Request-ID"]
    # Upstream keepalive needs HTTP/1.1 without "Connection: close".
    assert forwarded.get("Connection", "") == ""

    request(local_nginx, "GET", "/items", headers={"X-Request-ID": "client-chosen-id-42"})
    assert backend.seen[-1]["headers"]["X-Request-ID"] == "client-chosen-id-42"
    request(local_nginx, "GET", "/items", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", backend.seen[-1]["headers"]["X-Request-ID"])


@needs(NGINX)
def test_the_apps_503s_reach_clients_as_they_are(local_nginx, backend):
    # Every backend answering 503 (a database outage) must not get them all marked dead by nginx.
    for _ in range(6):
        status, headers, body = request(local_nginx, "GET", "/busy")
        assert status == 503 and headers["Retry-After"] == "5", (status, body)
        assert json.loads(body)["description"].startswith("The database is unavailable")
    status, _, _ = request(local_nginx, "GET", "/items")
    assert status == 200  # the backend is still in rotation


@needs(NGINX)
def test_a_backend_nobody_answers_on_is_a_json_503_with_retry_after(nginx_prefix):
    with running_nginx(nginx_prefix, f"127.0.0.1:{free_port()}") as port:  # nothing listens there
        status, headers, body = request(port, "GET", "/items")
    assert status == 503 and headers["Retry-After"] == "5" and headers["Content-Type"] == "application/json"
    assert json.loads(body)["title"] == "Service Unavailable"


@needs(NGINX)
def test_nginx_drops_unknown_hosts_without_an_answer(local_nginx, backend):
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
        request(local_nginx, "GET", "/items", host="scanner.example.net")
    assert backend.seen == []


@needs(NGINX)
def test_nginx_refuses_metrics_and_debug_from_outside(local_nginx, backend):
    assert request(local_nginx, "GET", "/metrics")[0] == 403
    assert request(local_nginx, "GET", "/debug/flamegraph")[0] == 403
    assert backend.seen == []


@needs(NGINX)
def test_nginx_accepts_a_10_mib_upload_and_refuses_a_larger_one(local_nginx, backend):
    ten_mib = b"x" * (10 * 1024 * 1024)
    status, _, _ = request(
        local_nginx, "POST", "/items", body=ten_mib, headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 201
    assert backend.seen[-1]["body_length"] == len(ten_mib)

    status, _, _ = request(
        local_nginx,
        "POST",
        "/items",
        body=b"x" * (12 * 1024 * 1024),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert status == 413
    assert len(backend.seen) == 1


@needs(NGINX)
def test_nginx_gzips_json(local_nginx):
    status, headers, body = request(local_nginx, "GET", "/items", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("Content-Encoding") == "gzip"
    assert json.loads(gzip.decompress(body))["items"][0]["name"] == "shirt 0"


@needs(NGINX)
def test_nginx_serves_repeated_image_requests_from_its_cache(local_nginx, backend):
    path = "/images/" + "ab" * 32 + ".png"
    first = request(local_nginx, "GET", path)
    second = request(local_nginx, "GET", path + "?v=2")
    assert first[0] == second[0] == 200
    assert first[1]["X-Cache-Status"] == "MISS"
    assert second[1]["X-Cache-Status"] == "HIT"
    assert second[2] == first[2]
    assert [s["path"] for s in backend.seen] == [path]


def nginx_test_of_http_include(prefix, site_conf):
    """Wraps an http{}-level site file in a main config with writable paths and runs nginx -t."""
    for sub in ("logs", "cache", "ssl", "tmp"):
        (prefix / sub).mkdir(exist_ok=True)
    cert = run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=wardrobe.example.com",
            "-keyout",
            prefix / "ssl" / "privkey.pem",
            "-out",
            prefix / "ssl" / "fullchain.pem",
        ]
    )
    assert cert.returncode == 0, cert.stderr
    text = (
        site_conf.replace("/etc/ssl/wardrobe/", f"{prefix}/ssl/")
        .replace("/var/cache/nginx/", f"{prefix}/cache/")
        .replace("/var/log/nginx/", f"{prefix}/logs/")
    )
    (prefix / "site.conf").write_text(text)
    (prefix / "nginx.conf").write_text(
        f"pid {prefix}/nginx.pid;\nevents {{}}\nhttp {{\n"
        f"  client_body_temp_path {prefix}/tmp/body;\n  proxy_temp_path {prefix}/tmp/proxy;\n"
        f"  include {prefix}/site.conf;\n}}\n"
    )
    return run([NGINX, "-t", "-p", prefix, "-c", prefix / "nginx.conf", "-e", "stderr"])


@needs(NGINX)
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed for a throwaway certificate")
def test_fleet_nginx_config_passes_nginx_t(nginx_prefix):
    result = nginx_test_of_http_include(nginx_prefix, (CONF / "nginx" / "wardrobe.conf").read_text())
    assert result.returncode == 0, result.stderr


@needs(NGINX)
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed for a throwaway certificate")
@pytest.mark.parametrize(
    "images_origin",
    [
        "",
        "http://10.0.9.61:5000/wardrobe-images/lab",
        "https://10.0.9.62/wardrobe-images",  # an address: nginx -t here must resolve no names
    ],
    ids=["images-from-the-api", "images-from-a-path-style-bucket", "images-from-an-https-bucket"],
)
def test_ansible_rendered_nginx_config_passes_nginx_t(nginx_prefix, images_origin):
    jinja2 = pytest.importorskip("jinja2")
    defaults = yaml.safe_load((ANSIBLE / "roles" / "nginx_lb" / "defaults" / "main.yml").read_text())
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ANSIBLE / "roles" / "nginx_lb" / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
    )
    # The few Ansible filters and tests the template uses, as Ansible defines them.
    env.filters["regex_replace"] = lambda value, pattern, replacement: re.sub(pattern, replacement, value)
    env.filters["urlsplit"] = lambda value, part: getattr(urllib.parse.urlsplit(value), part)
    env.tests["match"] = lambda value, pattern: re.match(pattern, value) is not None
    hosts = {f"api{i:02d}": {"ansible_host": f"10.0.1.{10 + i}"} for i in range(1, 16)}
    context = {
        **{k: v for k, v in defaults.items() if not isinstance(v, str) or "{{" not in v},
        "ansible_managed": "test",
        "groups": {"api": list(hosts)},
        "hostvars": hosts,
        "nginx_lb_backend_port": 8000,
        "nginx_lb_drained_backends": ["api02", "api03"],
        "nginx_lb_upstream_file": f"{nginx_prefix}/upstream.conf",
        "nginx_lb_targets": ["lb01"],
        "nginx_lb_images_origin": images_origin,
    }
    upstream = env.get_template("upstream-servers.conf.j2").render(context)
    assert upstream.count("server 10.0.1.") == 15
    assert upstream.count(" down;") == 2
    (nginx_prefix / "upstream.conf").write_text(upstream)
    site = env.get_template("wardrobe.conf.j2").render(context)
    images = site[site.index("location /images/") :]
    images = images[: images.index("\n    }\n")]
    if images_origin:  # image bytes never pass through gunicorn
        assert "proxy_pass http://wardrobe_api" not in images
        assert f"proxy_pass {images_origin}/;" in images
    else:
        assert "proxy_pass http://wardrobe_api;" in images
    result = nginx_test_of_http_include(nginx_prefix, site)
    assert result.returncode == 0, result.stderr


# --- Grafana -------------------------------------------------------------------------------------------------


def dashboard():
    return json.loads((CONF / "grafana" / "wardrobe.json").read_text())


def panel_exprs(board):
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_grafana_dashboard_uses_a_datasource_variable():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        if panel.get("targets"):
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def metric_names(expr):
    """The series names a PromQL expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    names = set()
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", text):
        if not match.group(2) and match.group(1) not in {
            "and",
            "or",
            "unless",
            "offset",
            "bool",
            "group_left",
            "group_right",
        }:
            names.add(match.group(1))
    return names


def test_grafana_panels_query_only_metrics_that_exist():
    rules = yaml.safe_load((CONF / "prometheus" / "alerts.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = set(WARDROBE_METRICS) | EXPORTER_METRICS | recorded
    for name in HISTOGRAMS:
        known |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    seen = set()
    for title, expr in panel_exprs(dashboard()):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= known, f"{title}: unknown {names - known}"
        seen |= names
    assert "wardrobe_http_request_duration_seconds_count" in seen


def test_grafana_dashboard_covers_what_on_call_needs():
    board = dashboard()
    exprs = " ".join(expr for _, expr in panel_exprs(board))
    for metric in WARDROBE_METRICS:
        assert metric in exprs, f"no panel shows {metric}"
    for q in ("p50", "p95", "p99"):
        assert f"route:wardrobe_http_request_duration_seconds:{q}_5m" in exprs
    text = " ".join(p["options"]["content"] for p in board["panels"] if p["type"] == "text")
    assert "/debug/flamegraph" in text
    assert "pyroscope" in text.lower()


# --- Ansible -------------------------------------------------------------------------------------------------


def ansible_env():
    return {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}


@needs(ANSIBLE_PLAYBOOK)
@pytest.mark.parametrize(
    "playbook",
    [
        "site.yml",
        "deploy.yml",
        "api.yml",
        "workers.yml",
        "lb.yml",
        "redis.yml",
        "postgres.yml",
        "monitoring.yml",
        "lab/objectstore.yml",
    ],
)
def test_ansible_playbook_syntax(playbook):
    result = run([ANSIBLE_PLAYBOOK, "--syntax-check", playbook], cwd=ANSIBLE, env=ansible_env())
    assert result.returncode == 0, result.stdout + result.stderr


@needs(ANSIBLE_INVENTORY)
def test_ansible_inventory_has_the_fleet_by_tier():
    result = run([ANSIBLE_INVENTORY, "--list"], cwd=ANSIBLE, env=ansible_env())
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    assert len(inventory["api"]["hosts"]) == 15
    assert len(inventory["redis"]["hosts"]) == 3
    assert len(inventory["lb"]["hosts"]) == 1
    assert len(inventory["postgres"]["hosts"]) == 1
    assert len(inventory["monitoring"]["hosts"]) == 1
    assert inventory["workers"]["hosts"]
    hostvars = inventory["_meta"]["hostvars"]
    # Roles that must be unique are chosen by a host variable, never by position in a group.
    assert [h for h in inventory["redis"]["hosts"] if hostvars[h].get("redis_sentinel_bootstrap_master")] == [
        "redis01"
    ]
    # Every worker host runs the reaper: none is singled out for it.
    assert not [h for h in inventory["workers"]["hosts"] if "wardrobe_worker_runs_periodic" in hostvars[h]]


def test_ansible_templates_start_with_ansible_managed():
    templates = list((ANSIBLE / "roles").glob("*/templates/*.j2"))
    assert templates
    for template in templates:
        assert "{{ ansible_managed }}" in template.read_text().splitlines()[0], template


def test_ansible_never_indexes_hosts_by_position():
    for path in ANSIBLE.rglob("*.yml"):
        assert not re.search(r"groups\[[^\]]+\]\[\d+\]", path.read_text()), path
    for path in (ANSIBLE / "roles").rglob("*.j2"):
        assert not re.search(r"groups\[[^\]]+\]\[\d+\]", path.read_text()), path


# --- systemd -------------------------------------------------------------------------------------------------


def unit(name):
    # Not strict: systemd takes some keys more than once (EnvironmentFile=, ReadWritePaths=), each adding to the last.
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str
    parser.read(CONF / "systemd" / name)
    return parser


def test_api_unit_is_a_notify_service_that_drains_gracefully():
    api = unit("wardrobe-api.service")["Service"]
    assert api["Type"] == "notify"
    assert api["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert api["KillMode"] == "mixed"
    assert "gunicorn -c" in api["ExecStart"] and "wardrobe.wsgi:app" in api["ExecStart"]
    assert api["EnvironmentFile"] == "/etc/wardrobe/wardrobe.env"
    # gunicorn's graceful_timeout is 30 s; systemd must not SIGKILL before it.
    assert int(api["TimeoutStopSec"]) > 30
    assert int(api["LimitNOFILE"]) >= 65536
    assert api["User"] == "wardrobe"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes"}.items():
        assert api[key] == value
    assert "/var/lib/wardrobe" in api["ReadWritePaths"]
    assert api["StateDirectory"] == "wardrobe"


def test_worker_units_stop_gracefully_and_yield_to_the_api():
    worker = unit("wardrobe-worker@.service")["Service"]
    assert worker["KillSignal"] == "SIGINT"
    assert int(worker["Nice"]) >= 10
    assert int(worker["CPUWeight"]) < 100
    assert (
        "--no-periodic" not in worker["Environment"] + worker["ExecStart"]
    )  # the reaper beside every consumer
    # The consumers write metrics, profiles and local images under the data dir; everything else is read-only.
    assert worker["ProtectSystem"] == "strict"
    assert "/var/lib/wardrobe" in worker["ReadWritePaths"] and worker["StateDirectory"] == "wardrobe"
    images = unit("wardrobe-worker@images.service.d/10-queue.conf")["Service"]
    assert images["CPUSchedulingPolicy"] == "idle"  # cutouts only on CPU the API leaves
    assert images["MemoryMax"]
    assert int(images["TimeoutStopSec"]) >= 120
    assert "9101" in images["Environment"]
    assert "9102" in unit("wardrobe-worker@ai.service.d/10-queue.conf")["Service"]["Environment"]


def test_migrate_unit_is_oneshot():
    migrate = unit("wardrobe-migrate.service")["Service"]
    assert migrate["Type"] == "oneshot"
    assert migrate["ExecStart"].endswith("wardrobe-migrate")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    shutil.copytree(CONF / "systemd", tmp_path / "units")
    units = tmp_path / "units"
    result = run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            units / "wardrobe-api.service",
            units / "wardrobe-migrate.service",
            units / "wardrobe-worker@images.service",
            units / "wardrobe-worker@ai.service",
        ],
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    # The binaries only exist on a deployed host; everything else systemd reports is a real problem.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable" not in line
    ]
    assert problems == []
