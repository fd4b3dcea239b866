"""Read replicas against a real streaming replica on loopback: a `pg_basebackup -R` of the test cluster, started on
a port of its own for this module and removed after it. Reads reach the replica; a user's write is visible to
their very next read though the replica has not replayed it; a replica stopped or lagging is skipped without an
error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import falcon.testing
import psycopg2
import pytest
from conftest import TEST_DB, TEST_DSN, auth_header, image_bytes, make_config, multipart, server_env, upload
from processes import free_port, gunicorn
from prometheus_client import REGISTRY

from tasks.work import marked_writes
from wardrobe.app import Services, create_app
from wardrobe.clients.cache import Cache
from wardrobe.ops.metrics import ReplicaMetrics
from wardrobe.store.db import Pool
from wardrobe.store.items import Items
from wardrobe.store.jobs import JobLedger
from wardrobe.store.replicas import ReplicaRouter, WriteMarks, replica_name

pytestmark = pytest.mark.slow

# The primary's settings a hot standby must match or exceed, or it refuses to start.
MATCHED_SETTINGS = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)
IN_RECOVERY = "SELECT pg_is_in_recovery() AS standby"


def _as_postgres(argv: list[str]) -> list[str]:
    # Postgres refuses to run as root; the base backup is taken as the postgres user, whom pg_hba lets replicate.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _primary(sql: str, *args: object) -> list[tuple]:
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else []


class StreamingReplica:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="wardrobe-replica-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.dsn = f"postgresql://127.0.0.1:{self.port}/{TEST_DB}"
        self.name = replica_name(self.dsn, 0)
        major = int(_primary("SHOW server_version_num")[0][0]) // 10000
        self._bin = Path(f"/usr/lib/postgresql/{major}/bin")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")

    def create(self) -> StreamingReplica:
        subprocess.run(
            _as_postgres(
                [
                    str(self._bin / "pg_basebackup"),
                    "-D",
                    str(self.data),
                    "-R",
                    "-c",
                    "fast",
                    "-h",
                    "/var/run/postgresql",
                ]
            ),
            check=True,
            capture_output=True,
        )
        primary = {name: _primary(f"SHOW {name}")[0][0] for name in MATCHED_SETTINGS}
        settings = {
            "port": self.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "hot_standby": "on",
            "shared_buffers": "'32MB'",
            "fsync": "off",  # a throwaway copy
            **primary,
        }
        (self.data / "postgresql.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        if os.geteuid() == 0:
            for path in (self.data / "postgresql.conf", self.data / "pg_hba.conf"):
                shutil.chown(path, "postgres", "postgres")
        return self.start()

    def start(self) -> StreamingReplica:
        subprocess.run(
            _as_postgres(
                [
                    str(self._bin / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "log"),
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.wait_replayed()
        return self

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(self._bin / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data)]),
            check=False,
            capture_output=True,
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def sql(self, sql: str) -> list[tuple]:
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """Until the replica has replayed a commit made on the primary now (so it has a replay timestamp too)."""
        _primary("SELECT pg_current_xact_id()")  # a transaction with an id: its commit is a WAL record
        target = int(_primary("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")[0][0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                replayed = self.sql("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")[0][0]
            except psycopg2.OperationalError:
                replayed = None
            if replayed is not None and replayed >= target:
                return
            time.sleep(0.05)
        raise TimeoutError(f"replica did not replay to {target}: {(self.root / 'log').read_text()[-2000:]}")

    def paused(self) -> _Paused:
        return _Paused(self)


class _Paused:
    """Replay paused on the replica while inside: it keeps receiving WAL but applies none of it."""

    def __init__(self, replica: StreamingReplica) -> None:
        self._replica = replica

    def __enter__(self) -> StreamingReplica:
        self._replica.sql("SELECT pg_wal_replay_pause()")
        return self._replica

    def __exit__(self, *exc: object) -> None:
        self._replica.sql("SELECT pg_wal_replay_resume()")
        self._replica.wait_replayed()


@pytest.fixture(scope="module")
def replica() -> Iterator[StreamingReplica]:
    made = StreamingReplica()
    try:
        yield made.create()
    finally:
        made.remove()


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _replica_reads(replica: StreamingReplica) -> float:
    return _count("wardrobe_db_queries_total", target=replica.name, kind="read")


@pytest.fixture
def router(replica: StreamingReplica) -> Iterator[ReplicaRouter]:
    """A router over the test database and the replica whose health is read only when the test says so."""
    cache = Cache(["127.0.0.1:11211"])
    built = ReplicaRouter(
        Pool(TEST_DSN, size=2),
        [(replica.name, Pool(replica.dsn, size=2))],
        WriteMarks(cache, ttl=60),
        max_lag=0.5,
        check_interval=3600,
        observer=ReplicaMetrics(),
    )
    built.refresh()
    yield built
    built.close()
    cache.close()


@pytest.fixture
def api(tmp_path: Path, replica: StreamingReplica) -> Iterator[tuple[falcon.testing.TestClient, Services]]:
    """The API in this process with the replica configured and a lag bound no test reaches, so the replica is
    read even while its replay is paused: only read-your-writes can then show a user their write."""
    config = make_config(
        tmp_path, WARDROBE_DATABASE_REPLICA_URLS=replica.dsn, WARDROBE_REPLICA_MAX_LAG="3600"
    )
    services = Services.build(config)
    services.pool.refresh()
    yield falcon.testing.TestClient(create_app(config, services)), services
    services.close()


def test_reads_reach_the_replica_and_writes_the_primary(router, replica, new_user):
    (state,) = router.replicas()
    assert state.usable and state.lag == 0.0, state
    before = _replica_reads(replica)
    assert router.read(1, lambda cur: _one(cur, IN_RECOVERY))["standby"] is True
    assert _replica_reads(replica) == before + 1
    assert router.run(lambda cur: _one(cur, IN_RECOVERY))["standby"] is False


def test_the_api_lists_from_the_replica(api, replica, user):
    client, _ = api
    before = _replica_reads(replica)
    assert client.simulate_get("/api/v1/items", headers=user).status_code == 200
    assert client.simulate_get("/api/v1/me", headers=user).status_code == 200
    assert _replica_reads(replica) > before


def test_a_write_is_read_at_once_though_the_replica_has_not_replayed_it(api, replica, user, new_user):
    client, services = api
    with replica.paused():
        created = upload(client, user, image_bytes(), category="top", brand="Uniqlo")
        assert created.status_code == 202, created.text
        item_id = created.json["item"]["id"]
        assert replica.sql(f"SELECT count(*) FROM items WHERE id = '{item_id}'") == [(0,)]

        detail = client.simulate_get(f"/api/v1/items/{item_id}", headers=user)
        assert detail.status_code == 200 and detail.json["brand"] == "Uniqlo"
        listed = client.simulate_get("/api/v1/items", headers=user)
        assert [i["id"] for i in listed.json["items"]] == [item_id]

        patched = client.simulate_patch(f"/api/v1/items/{item_id}", json={"brand": "COS"}, headers=user)
        assert patched.status_code == 200
        assert client.simulate_get(f"/api/v1/items/{item_id}", headers=user).json["brand"] == "COS"
        assert client.simulate_get("/api/v1/items", headers=user).json["items"][0]["brand"] == "COS"
        assert client.simulate_patch("/api/v1/me", json={"style": ["boho"]}, headers=user).status_code == 200
        assert client.simulate_get("/api/v1/me", headers=user).json["preferences"]["style"] == ["boho"]

        # Someone who wrote nothing still reads from the (paused, but within the lag allowed) replica; their
        # profile, inserted a moment ago at sign-in, is found on the primary.
        other = new_user()
        before = _replica_reads(replica)
        assert client.simulate_get("/api/v1/items", headers=other).json["items"] == []
        assert client.simulate_get("/api/v1/me", headers=other).status_code == 200
        assert _replica_reads(replica) > before

    # Replayed: the writer's reads go back to the replica.
    services.pool.refresh()
    before = _replica_reads(replica)
    assert client.simulate_get(f"/api/v1/items/{item_id}", headers=user).json["brand"] == "COS"
    assert _replica_reads(replica) == before + 1


def test_what_a_worker_records_is_read_at_once_too(api, replica, user):
    client, services = api
    created = upload(client, user, image_bytes())
    item_id, job_id = created.json["item"]["id"], created.json["job"]["id"]
    replica.wait_replayed()
    services.pool.refresh()
    before = _replica_reads(replica)
    assert client.simulate_get(f"/api/v1/items/{item_id}", headers=user).json["cutout_url"] is None
    assert _replica_reads(replica) == before + 1  # the upload is replayed: the user reads the replica again

    pool = marked_writes(services.config, Pool(TEST_DSN, size=2), "images")
    try:
        with replica.paused():
            job = JobLedger(pool).claim(job_id, "cutout", 60)
            items = Items(pool)
            assert items.cutout_done(items.for_job(item_id), job, "f" * 64 + ".png")
            detail = client.simulate_get(f"/api/v1/items/{item_id}", headers=user)
            assert detail.json["cutout_url"] == f"/images/{'f' * 64}.png"
    finally:
        pool.close()


def test_a_stopped_replica_is_skipped_without_an_error(api, router, replica, user):
    client, _ = api
    assert client.simulate_get("/api/v1/items", headers=user).status_code == 200
    errors = _count("wardrobe_db_replica_fallbacks_total", reason="error")
    replica.stop()
    try:
        # Read at once, before any health check noticed: the failed read is retried on the primary.
        assert client.simulate_get("/api/v1/items", headers=user).status_code == 200
        assert client.simulate_get("/api/v1/me", headers=user).status_code == 200
        assert _count("wardrobe_db_replica_fallbacks_total", reason="error") > errors
        router.refresh()
        (state,) = router.replicas()
        assert not state.usable and state.lag == float("inf")
        unhealthy = _count("wardrobe_db_replica_fallbacks_total", reason="unhealthy")
        assert router.read(1, lambda cur: _one(cur, IN_RECOVERY))["standby"] is False
        assert _count("wardrobe_db_replica_fallbacks_total", reason="unhealthy") == unhealthy + 1
    finally:
        replica.start()
    router.refresh()
    assert router.read(1, lambda cur: _one(cur, IN_RECOVERY))["standby"] is True


def test_a_replica_lagging_beyond_the_bound_is_skipped(router, replica):
    assert router.read(1, lambda cur: _one(cur, IN_RECOVERY))["standby"] is True
    with replica.paused():
        _primary("SELECT pg_current_xact_id()")  # a write the paused replica receives but does not apply
        time.sleep(0.7)  # past the router's 0.5 s bound
        router.refresh()
        (state,) = router.replicas()
        assert not state.usable and 0.5 < state.lag < 60, state
        assert _count("wardrobe_db_replica_lag_seconds", replica=replica.name) == state.lag
        assert router.read(1, lambda cur: _one(cur, IN_RECOVERY))["standby"] is False
    router.refresh()
    (state,) = router.replicas()
    assert state.usable and state.lag == 0.0, state


def test_through_gunicorn_an_upload_and_a_patch_are_read_back_at_once(tmp_path, replica):
    """Two gevent workers, so the write and the reads after it are answered by either: the mark that keeps the
    writer on the primary is in memcached."""
    env = server_env(
        tmp_path,
        WARDROBE_DATABASE_REPLICA_URLS=replica.dsn,
        WARDROBE_REPLICA_MAX_LAG="3600",
        WARDROBE_RATE_LIMIT_UPLOAD="1000/60",
    )
    proc, base = gunicorn(env, tmp_path / "gunicorn.log", workers=2)
    try:
        bystander = auth_header(int(time.time() * 1000) % 10**9 + 7 * 10**9)
        # The workers read the replica's health in the background, once a read asks: wait until they use it.
        deadline = time.monotonic() + 20
        while _scraped(base, "wardrobe_db_queries_total", target=replica.name, kind="read") == 0:
            assert time.monotonic() < deadline, proc.output()[-3000:]
            _request(base, "GET", "/api/v1/items", bystander)
            time.sleep(0.1)
        writer = auth_header(int(time.time() * 1000) % 10**9 + 8 * 10**9)
        with replica.paused():
            for n in range(6):
                status, created = _upload(base, writer, brand=f"Brand {n}")
                assert status == 202, created
                item = created["item"]["id"]
                assert _request(base, "GET", f"/api/v1/items/{item}", writer)[1]["brand"] == f"Brand {n}"
                assert _request(base, "GET", "/api/v1/items", writer)[1]["items"][0]["id"] == item
                status, _ = _request(
                    base, "PATCH", f"/api/v1/items/{item}", writer, {"notes": f"patched {n}"}
                )
                assert status == 200
                assert _request(base, "GET", f"/api/v1/items/{item}", writer)[1]["notes"] == f"patched {n}"
            assert replica.sql(f"SELECT count(*) FROM items WHERE id = '{item}'") == [(0,)]
        assert _scraped(base, "wardrobe_db_replica_fallbacks_total", reason="read_your_writes") > 0
        assert "Traceback" not in proc.output(), proc.output()[-3000:]
    finally:
        proc.stop()


def _one(cur, sql: str) -> dict:
    cur.execute(sql)
    return cur.fetchone()


def _request(base: str, method: str, path: str, headers: dict, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers=dict(headers))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _upload(base: str, headers: dict, **fields: str) -> tuple[int, dict]:
    body, ctype = multipart({"image": ("shirt.jpg", image_bytes(), "application/octet-stream"), **fields})
    req = urllib.request.Request(
        base + "/api/v1/items", data=body, method="POST", headers={**headers, "Content-Type": ctype}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _scraped(base: str, name: str, **labels: str) -> float:
    """A sample's value summed over the API's workers, from its /metrics (0 when absent)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total
