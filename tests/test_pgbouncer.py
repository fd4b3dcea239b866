"""Wardrobe behind a real PgBouncer in transaction mode: the API (gunicorn) and both consumers reach Postgres only
through it, uploads and capsules complete, and the statement timeout still cancels a slow statement.

The pooler runs the repository's conf/pgbouncer/pgbouncer.ini with what only this machine can say changed (a free
port, the test database, trust instead of SCRAM for the local superuser).
"""

from __future__ import annotations

import configparser
import getpass
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
from conftest import BOT_TOKEN, TEST_DB, image_bytes, multipart, settle_unfinished_jobs
from processes import ROOT, Process, RedisServer, free_port, gunicorn, worker

from harness.processes import wait_port
from wardrobe.store.db import DatabaseUnavailable, Pool

pytestmark = pytest.mark.slow
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
# All clients of this alias share one server connection: whatever one leaves in the session, the next one sees.
SHARED = f"{TEST_DB}_shared"

if not os.access(PGBOUNCER, os.X_OK):
    pytest.skip("pgbouncer is not installed (scripts/setup.sh installs it)", allow_module_level=True)


class PgBouncer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.user = getpass.getuser()
        self.workdir = workdir
        shipped = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=(";",))
        shipped.optionxform = str
        shipped.read(ROOT / "conf" / "pgbouncer" / "pgbouncer.ini")
        assert shipped["pgbouncer"]["pool_mode"] == "transaction"
        shipped["databases"] = {
            TEST_DB: f"host=127.0.0.1 port=5432 dbname={TEST_DB}",
            SHARED: f"host=127.0.0.1 port=5432 dbname={TEST_DB} pool_size=1",
        }
        shipped["pgbouncer"].update(
            {
                "listen_addr": "127.0.0.1",
                "listen_port": str(self.port),
                "unix_socket_dir": "",
                "auth_type": "trust",  # this machine's Postgres trusts local TCP too
                "auth_file": str(workdir / "userlist.txt"),
                "admin_users": self.user,
                "stats_users": self.user,
                "default_pool_size": "4",
            }
        )
        with (workdir / "pgbouncer.ini").open("w") as out:
            shipped.write(out)
        (workdir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        self.process: Process | None = None

    def start(self) -> PgBouncer:
        argv = [PGBOUNCER, str(self.workdir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", "postgres"]  # PgBouncer refuses to run as root
        self.process = Process(argv, {}, self.workdir / "pgbouncer.log")
        try:
            wait_port(self.port, 10, proc=self.process)
        except Exception:
            raise RuntimeError(self.process.tail()) from None
        return self

    def dsn(self, database: str = TEST_DB) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def transactions(self) -> int:
        """How many transactions the pooler ran for the test database (its admin console's SHOW STATS)."""
        conn = psycopg2.connect(self.dsn("pgbouncer"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW STATS")
                names = [c[0] for c in cur.description]
                rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()
        return sum(int(r["total_xact_count"]) for r in rows if r["database"] == TEST_DB)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGINT)
            self.process = None


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    # Its own directory, readable by the postgres user PgBouncer switches to (pytest's tmp dirs are root's only).
    workdir = Path(tempfile.mkdtemp(prefix="wardrobe-pgbouncer-"))
    workdir.chmod(0o755)
    bouncer = PgBouncer(workdir).start()
    yield bouncer
    bouncer.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def request(base: str, method: str, path: str, headers: dict, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_job(base: str, headers: dict, job_id: str, logs, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = request(base, "GET", f"/api/v1/jobs/{job_id}", headers)
        assert status == 200, (status, job, logs())
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s\n{logs()}")


def test_uploads_and_capsules_complete_with_everything_behind_the_pooler(bouncer, tmp_path, new_user):
    settle_unfinished_jobs()
    redis = RedisServer(tmp_path / "redis.log").start()
    env = {
        "WARDROBE_DATABASE_URL": bouncer.dsn(),
        "WARDROBE_DB_POOLER": "transaction",
        "WARDROBE_DATA_DIR": str(tmp_path / "data"),
        "WARDROBE_TELEGRAM_BOT_TOKEN": BOT_TOKEN,
        "WARDROBE_REDIS_URL": redis.url,
        "WARDROBE_MEMCACHED_SERVERS": "",
        "WARDROBE_OPENAI_API_KEYS": "",
        "WARDROBE_U2NET_HOME": str(ROOT / "var" / "models"),
        "WARDROBE_REAPER_INTERVAL": "1",
        "WARDROBE_REAPER_GRACE": "1",
        "WARDROBE_PROFILE_HZ": "0",
    }
    procs = {
        "images": worker("images", env, tmp_path / "images.log"),
        "ai": worker("ai", env, tmp_path / "ai.log", "--no-periodic"),
    }
    api = None
    try:
        api, base = gunicorn(env, tmp_path / "api.log")
        procs["api"] = api

        def logs() -> str:
            parts = [f"--- {name}\n{proc.tail()}" for name, proc in procs.items()]
            return "\n".join([*parts, f"--- pgbouncer\n{bouncer.process.tail()}"])

        before = bouncer.transactions()
        user = new_user()
        uploads = []
        for category, color in [("top", (250, 250, 250)), ("bottom", (20, 20, 60)), ("shoes", (0, 0, 0))]:
            body, ctype = multipart(
                {
                    "image": ("item.jpg", image_bytes(size=(120, 120), color=color), "image/jpeg"),
                    "category": category,
                }
            )
            status, created = request(base, "POST", "/api/v1/items", {**user, "Content-Type": ctype}, body)
            assert status == 202, (created, logs())
            uploads.append(created)
        for created in uploads:
            assert wait_job(base, user, created["job"]["id"], logs)["state"] == "succeeded", logs()
            status, item = request(base, "GET", f"/api/v1/items/{created['item']['id']}", user)
            assert status == 200 and item["status"] == "ready" and item["cutout_url"]

        status, capsule = request(
            base,
            "POST",
            "/api/v1/capsules",
            {**user, "Content-Type": "application/json"},
            json.dumps({"occasion": "work", "size": 1}).encode(),
        )
        assert status == 202, (capsule, logs())
        assert wait_job(base, user, capsule["job"]["id"], logs)["state"] == "succeeded", logs()
        status, built = request(base, "GET", f"/api/v1/capsules/{capsule['capsule']['id']}", user)
        assert status == 200 and built["state"] == "ready" and built["outfits"], built
        # The work went through the pooler, not around it.
        assert bouncer.transactions() > before
    finally:
        for proc in procs.values():
            proc.stop(signal.SIGINT)
        redis.stop()


@pytest.mark.parametrize("transaction", [True, False], ids=["transaction", "autocommit read"])
def test_the_statement_timeout_still_cancels_a_slow_statement_behind_the_pooler(bouncer, transaction):
    pool = Pool(bouncer.dsn(), size=1, overflow=0, statement_timeout_ms=300, pooler="transaction")
    try:
        with pytest.raises(psycopg2.errors.QueryCanceled, match="statement timeout"):
            pool.run(lambda cur: cur.execute("SELECT pg_sleep(5)"), transaction=transaction)
        pool.ping()  # the connection is fine afterwards, and back in the pool
    finally:
        pool.close()


def test_one_clients_timeouts_never_reach_another_sharing_its_server_connection(bouncer):
    server_default = _show_statement_timeout(psycopg2.connect(f"postgresql:///{TEST_DB}"))
    assert server_default != "300ms"
    tight = Pool(bouncer.dsn(SHARED), size=1, overflow=0, statement_timeout_ms=300, pooler="transaction")
    loose = Pool(bouncer.dsn(SHARED), size=1, overflow=0, statement_timeout_ms=7000, pooler="transaction")

    def shown(cur):
        cur.execute("SHOW statement_timeout")
        return cur.fetchone()["statement_timeout"]

    try:
        assert tight.run(shown, transaction=False) == "300ms"
        assert loose.run(shown) == "7s"
        assert tight.run(shown) == "300ms"
        # A client of the pooler that sets nothing gets the server's default, whatever ran before it.
        assert _show_statement_timeout(psycopg2.connect(bouncer.dsn(SHARED))) == server_default
    finally:
        tight.close()
        loose.close()


def test_a_pool_left_in_direct_mode_is_refused_by_the_pooler_instead_of_running_without_timeouts(bouncer):
    pool = Pool(bouncer.dsn(), size=1, overflow=0, pooler="none")
    with pytest.raises(DatabaseUnavailable, match="options"):
        pool.ping()


def _show_statement_timeout(conn) -> str:
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            return cur.fetchone()[0]
    finally:
        conn.close()
