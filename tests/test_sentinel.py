"""Redis through Sentinel, as production runs it: a primary, two replicas and three Sentinels on loopback.

The pool waits for a free connection instead of failing, passwords with URL-special characters survive the
Ansible env template and the client, and a failover (the primary SIGKILLed mid-stream) loses no upload.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
import redis
from conftest import (
    TEST_DSN,
    auth_header,
    image_bytes,
    multipart,
    settle_unfinished_jobs,
    stack_env,
)
from processes import ROOT, Process, free_port, gunicorn, worker

from tests.fakes.openai_server import FakeOpenAI
from wardrobe.clients.redis_client import connect

MASTER = "wardrobe"
# Every character that means something in a URL's userinfo, path or percent-encoding.
PASSWORD = "p@ss:w/rd%+"
ANSIBLE = ROOT / "ansible"
KEYS = ["sk-test-key-one"]


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _until(ready, what: str, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = ready()
            if value:
                return value
        except (OSError, redis.RedisError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(interval)


class SentinelFleet:
    """Three redis-servers (one primary, two `--replicaof` it) and three Sentinels with quorum 2, all on
    127.0.0.1, configured like ansible/roles/redis_sentinel: the servers require the password (and replicas
    authenticate to their master with it), the Sentinels require the same one (requirepass) and `auth-pass` to
    the servers. Quick to declare a primary dead, so a test can watch a failover."""

    def __init__(self, tmp: Path, password: str = "") -> None:
        self.tmp = tmp
        self.password = password
        ports = _free_ports(6)
        self.redis_ports, self.sentinel_ports = ports[:3], ports[3:]
        self.servers: dict[int, Process] = {}
        self.sentinels: list[Process] = []

    @property
    def url(self) -> str:
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        query = f"?sentinel_password={urllib.parse.quote(self.password, safe='')}" if self.password else ""
        return f"redis+sentinel://{auth}{nodes}/{MASTER}/0{query}"

    def server(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password or None, socket_timeout=2)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password or None, socket_timeout=2, decode_responses=True)

    def start(self) -> SentinelFleet:
        primary = self.redis_ports[0]
        for port in self.redis_ports:
            data = self.tmp / f"redis-{port}"
            data.mkdir(parents=True, exist_ok=True)
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
            argv += ["--save", "", "--appendonly", "no"]
            if self.password:
                argv += ["--requirepass", self.password, "--masterauth", self.password]
            if port != primary:
                argv += ["--replicaof", "127.0.0.1", str(primary)]
            self.servers[port] = Process(argv, {}, self.tmp / f"redis-{port}.log")
        for port in self.redis_ports:
            _until(self.server(port).ping, f"redis-server :{port}", 10)
        for port in self.sentinel_ports:
            conf = self.tmp / f"sentinel-{port}.conf"  # Sentinel rewrites it with what it learns
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {self.tmp}",
                f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2",
                f"sentinel down-after-milliseconds {MASTER} 1000",
                f"sentinel failover-timeout {MASTER} 3000",
            ]
            if self.password:
                lines.append(f"requirepass {self.password}")
                lines.append(f"sentinel auth-pass {MASTER} {self.password}")
            conf.write_text("\n".join(lines) + "\n")
            self.sentinels.append(
                Process(["redis-server", str(conf), "--sentinel"], {}, self.tmp / f"sentinel-{port}.log")
            )

        def everyone_sees_everyone() -> bool:
            for port in self.sentinel_ports:
                state = self.sentinel(port).sentinel_master(MASTER)
                if state["num-slaves"] < 2 or state["num-other-sentinels"] < 2:
                    return False
            return True

        _until(everyone_sees_everyone, "Sentinels that know the replicas and each other", 30, 0.2)
        return self

    def master_port(self) -> int:
        for port in self.sentinel_ports:
            try:
                return int(self.sentinel(port).sentinel_get_master_addr_by_name(MASTER)[1])
            except redis.RedisError:
                continue
        raise RuntimeError("no Sentinel answers")

    def kill(self, port: int) -> None:
        self.servers[port].stop(signal.SIGKILL)

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.servers.values()]:
            proc.stop(signal.SIGKILL)

    def logs(self) -> str:
        procs = [*self.servers.values(), *self.sentinels]
        return "\n".join(f"--- {p.log.name}\n{p.tail(1500)}" for p in procs)


@pytest.fixture
def fleet(tmp_path):
    started = SentinelFleet(tmp_path / "fleet").start()
    yield started
    started.stop()


@pytest.fixture
def fleet_with_password(tmp_path):
    started = SentinelFleet(tmp_path / "fleet", password=PASSWORD).start()
    yield started
    started.stop()


# --- the pool ------------------------------------------------------------------------------------------------


def test_more_concurrent_calls_than_the_pool_holds_wait_for_a_connection(fleet):
    client = connect(fleet.url, pool_size=2, timeout=5.0)
    callers = 10
    start = threading.Barrier(callers)
    results: list[object] = []

    def call(n: int) -> None:
        start.wait()
        try:
            results.append(client.blpop([f"nothing-here:{n}"], timeout=0.2))
        except redis.RedisError as exc:
            results.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [None] * callers  # each waited its turn and timed out on the empty list, none raised
    client.connection_pool.disconnect()


# --- passwords -----------------------------------------------------------------------------------------------


def render_env_file(tmp: Path, sentinel_port: int, redis_password: str, db_password: str) -> dict[str, str]:
    """wardrobe.env as ansible-core writes it on an API box (the role's own defaults and template), with the
    Redis group on this machine's Sentinel port; returns its settings."""
    inventory = {
        "all": {
            "vars": {
                "ansible_managed": "test",
                "ansible_python_interpreter": sys.executable,
                "wardrobe_redis_sentinel_port": sentinel_port,
                "wardrobe_redis_master_name": MASTER,
                "wardrobe_redis_password": redis_password,
                "wardrobe_db_password": db_password,
                "wardrobe_telegram_bot_token": "token",
                "wardrobe_openai_api_keys": ["sk-one"],
                "wardrobe_metrics_token": "metrics",
                "wardrobe_sentry_dsn": "",
                "wardrobe_api_gunicorn_workers": 2,
                "wardrobe_api_worker_connections": 100,
                "wardrobe_api_port": 8000,
            },
            "children": {
                "api": {"hosts": {"api01": {"ansible_connection": "local"}}},
                "postgres": {"hosts": {"pg01": {"ansible_host": "127.0.0.1"}}},
                "redis": {"hosts": {"redis01": {"ansible_host": "127.0.0.1"}}},
                "memcached": {"hosts": {"mc01": {"ansible_host": "127.0.0.1"}}},
                "monitoring": {"hosts": {"mon01": {"ansible_host": "127.0.0.1"}}},
            },
        }
    }
    out = tmp / "wardrobe.env"
    role = ANSIBLE / "roles" / "wardrobe_app"
    playbook = [
        {
            "hosts": "api",
            "gather_facts": False,
            "vars_files": [str(role / "defaults" / "main.yml")],
            "tasks": [
                {
                    "ansible.builtin.template": {
                        "src": str(role / "templates" / "wardrobe.env.j2"),
                        "dest": str(out),
                    }
                }
            ],
        }
    ]
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    (tmp / "render.json").write_text(json.dumps(playbook))  # JSON is YAML
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(tmp / "none.cfg"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(tmp / "inventory.json"),
            str(tmp / "render.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    settings = {}
    for line in out.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_the_env_template_writes_urls_that_carry_the_exact_password(tmp_path):
    settings = render_env_file(tmp_path, 26379, redis_password=PASSWORD, db_password=PASSWORD)

    database = settings["WARDROBE_DATABASE_URL"]
    parsed = urllib.parse.urlsplit(database)
    assert urllib.parse.unquote(parsed.password or "") == PASSWORD
    assert (parsed.hostname, parsed.port, parsed.path) == ("127.0.0.1", 5432, "/wardrobe")
    dsn = psycopg2.extensions.parse_dsn(database)  # libpq's own reading of the URL
    assert (dsn["password"], dsn["host"], dsn["dbname"], dsn["user"]) == (
        PASSWORD,
        "127.0.0.1",
        "wardrobe",
        "wardrobe",
    )

    redis_url = urllib.parse.urlsplit(settings["WARDROBE_REDIS_URL"])
    assert urllib.parse.unquote(redis_url.password or "") == PASSWORD
    assert redis_url.netloc.rpartition("@")[2] == "127.0.0.1:26379"
    assert redis_url.path == f"/{MASTER}/0"


def test_the_rendered_redis_url_authenticates_through_sentinel(fleet_with_password, tmp_path):
    settings = render_env_file(
        tmp_path, fleet_with_password.sentinel_ports[0], redis_password=PASSWORD, db_password="unused"
    )
    client = connect(settings["WARDROBE_REDIS_URL"], timeout=2.0)
    client.set("wardrobe:test:auth", "ok")
    assert client.get("wardrobe:test:auth") == b"ok"
    primary = fleet_with_password.server(fleet_with_password.master_port())
    assert primary.get("wardrobe:test:auth") == b"ok"  # written on the primary, not somewhere else
    client.connection_pool.disconnect()


# --- failover ------------------------------------------------------------------------------------------------


class Uploader:
    """Sends uploads to gunicorn one after another, each user staying under the upload limit, and records
    every answer: (status, user id, job id or None, headers, body)."""

    def __init__(self, base: str, per_user: int) -> None:
        self.port = int(base.rsplit(":", 1)[1])
        self.per_user = per_user
        self.answers: list[tuple[int, int, str | None, dict[str, str], bytes]] = []
        self.users: set[int] = set()
        self._next_user = random.randint(3 * 10**12, 4 * 10**12)  # apart from conftest's users
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def new_user(self) -> int:
        self._next_user += 1
        self.users.add(self._next_user)
        return self._next_user

    def send(self, user: int, n: int) -> tuple[int, str | None]:
        body, ctype = multipart(
            {"image": ("shirt.jpg", image_bytes(size=(64, 64), color=(n % 250, 80, 160)), "image/jpeg")}
        )
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            headers = {**auth_header(user), "Content-Type": ctype}
            conn.request("POST", "/api/v1/items", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, answer_headers = resp.status, dict(resp.getheaders())
        except (OSError, http.client.HTTPException) as exc:
            status, answer_headers, data = 0, {}, repr(exc).encode()
        finally:
            conn.close()
        job = json.loads(data)["job"]["id"] if status == 202 else None
        self.answers.append((status, user, job, answer_headers, data))
        return status, job

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            if n % self.per_user == 0:
                user = self.new_user()
            self.send(user, n)
            n += 1
            self._stop.wait(0.2)

    def start(self) -> Uploader:
        self._thread.start()
        return self

    def sent(self) -> int:
        return len(self.answers)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def jobs_of(users: set[int]) -> dict[str, str]:
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute("SELECT id::text, state FROM jobs WHERE user_id = ANY(%s)", (list(users),))
        return dict(cur.fetchall())


@pytest.mark.slow
def test_a_primary_killed_mid_stream_loses_no_upload(fleet_with_password, tmp_path):
    fleet = fleet_with_password
    settle_unfinished_jobs()
    fake = FakeOpenAI(keys=KEYS, latency=0.05).start()
    upload_limit = 4
    env = stack_env(
        tmp_path,
        fleet.url,
        fake.url,
        KEYS,
        WARDROBE_RATE_LIMIT_UPLOAD=f"{upload_limit}/60",
        WARDROBE_JOB_LEASE_SECONDS=6,
        WARDROBE_REAPER_INTERVAL=1,
        WARDROBE_REAPER_GRACE=1,
    )
    procs: list[Process] = []
    uploader = None
    try:
        procs.append(worker("images", env, tmp_path / "images.log"))
        procs.append(worker("ai", env, tmp_path / "ai.log", "--no-periodic"))
        api, base = gunicorn(env, tmp_path / "api.log")
        procs.append(api)

        def logs() -> str:
            return "\n".join(f"--- {p.log.name}\n{p.tail(3000)}" for p in procs) + "\n" + fleet.logs()

        uploader = Uploader(base, per_user=upload_limit - 1).start()
        _until(lambda: uploader.sent() >= 6, "uploads before the failover", 30)
        old = fleet.master_port()
        fleet.kill(old)
        _until(lambda: fleet.master_port() != old, "a new primary", 30, 0.2)
        at_failover = uploader.sent()
        _until(lambda: uploader.sent() >= at_failover + 6, "uploads after the failover", 30)
        uploader.stop()

        # The limiter counts on the new primary: one user past the limit is told to slow down.
        probe = uploader.new_user()
        statuses: list[int] = []
        while 429 not in statuses and len(statuses) < 3 * upload_limit:
            statuses.append(uploader.send(probe, len(statuses))[0])
        assert statuses[-1] == 429, (statuses, logs())
        new_primary = fleet.server(fleet.master_port())
        assert new_primary.zcard(f"w:rl:upload:{probe}") == upload_limit

        by_status: dict[int, int] = {}
        for status, _, _, headers, body in uploader.answers:
            by_status[status] = by_status.get(status, 0) + 1
            if status == 503:  # acceptable during the failover, if the client is told when to come back
                assert int(headers.get("Retry-After") or 0) >= 1 and json.loads(body)["title"], (
                    headers,
                    body,
                )
        assert set(by_status) <= {202, 429, 503}, (
            by_status,
            [a for a in uploader.answers if a[0] not in (202, 429, 503)],
            logs(),
        )
        after = [status for status, *_ in uploader.answers[at_failover:]]
        assert after.count(202) == len(after) - 1, (after, by_status)  # all but the probe's 429
        assert by_status.get(429, 0) == 1  # the probe's last upload, nothing else

        accepted = {job for status, _, job, _, _ in uploader.answers if status == 202}

        def all_finished() -> bool:
            return all(state in ("succeeded", "failed") for state in jobs_of(uploader.users).values())

        try:
            _until(all_finished, "every accepted upload processed", 75, 0.5)
        except TimeoutError:
            pytest.fail(f"unfinished: {jobs_of(uploader.users)}\n{logs()}")
        jobs = jobs_of(uploader.users)
        assert set(jobs) == accepted  # one job per accepted upload, none from a refused one
        assert set(jobs.values()) == {"succeeded"}, (jobs, logs())
        with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT status, count(*) FROM items WHERE user_id = ANY(%s) GROUP BY status",
                (list(uploader.users),),
            )
            assert dict(cur.fetchall()) == {"ready": len(accepted)}
        # The outage is an expected dependency failure: warnings, not a traceback from every polling worker.
        for consumer in procs[:2]:
            text = consumer.log.read_text(errors="replace")
            assert "Traceback" not in text, text[-3000:]
        assert "(Redis unreachable: " in (tmp_path / "ai.log").read_text(errors="replace")
    finally:
        if uploader is not None:
            uploader.stop()
        for proc in procs:
            proc.stop(signal.SIGINT)
        fake.stop()
