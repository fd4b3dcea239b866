"""Postgres under stress and failure: a full pool answers 503, a restarted server is recovered from, and the
migrations build the schema from an empty database."""

import contextlib
import subprocess
import time
import uuid
from pathlib import Path

import falcon.testing
import psycopg2
import pytest
from conftest import TEST_DSN

from wardrobe.app import Services, create_app
from wardrobe.migrate import apply
from wardrobe.store.db import Pool


def test_exhausted_pool_answers_503_with_retry_after(config, user):
    pool = Pool(TEST_DSN, size=1, overflow=0, acquire_timeout=0.2)
    client = falcon.testing.TestClient(create_app(config, Services.build(config, pool=pool)))
    assert client.simulate_get("/api/v1/me", headers=user).status_code == 200
    with pool.connection():  # someone else holds the only connection
        resp = client.simulate_get("/api/v1/items", headers=user)
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json["title"] == "Service Unavailable"
    assert client.simulate_get("/api/v1/items", headers=user).status_code == 200


def test_statement_timeout_is_enforced_by_the_server():
    pool = Pool(TEST_DSN, size=1, statement_timeout_ms=100)
    with pytest.raises(psycopg2.errors.QueryCanceled):
        pool.run(lambda cur: cur.execute("SELECT pg_sleep(2)"))
    pool.ping()  # the connection is still usable afterwards


def test_killed_connections_are_replaced_transparently(client, services, user):
    assert client.simulate_get("/api/v1/items", headers=user).status_code == 200
    with psycopg2.connect(TEST_DSN) as admin, admin.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'wardrobe-api' AND pid <> pg_backend_pid()"
        )
        assert cur.fetchone()[0] >= 1
    assert client.simulate_get("/api/v1/items", headers=user).status_code == 200


def _cluster() -> tuple[str, str]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    return version, "main"


@pytest.mark.slow
def test_postgres_restart_under_the_service_recovers_without_restart(client, services, user):
    assert client.simulate_get("/api/v1/items", headers=user).status_code == 200
    version, name = _cluster()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "stop", "-m", "fast"], check=True
    )
    try:
        down = client.simulate_get("/api/v1/items", headers=user)
        assert down.status_code == 503 and "retry-after" in down.headers
        assert client.simulate_get("/readyz").status_code == 503
    finally:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"], check=True)
    subprocess.run(["pg_isready", "-h", "127.0.0.1", "-t", "20"], check=True)
    assert client.simulate_get("/api/v1/items", headers=user).status_code == 200
    assert client.simulate_get("/readyz").status_code == 200


def test_migrations_build_the_schema_from_empty():
    name = f"wardrobe_migrate_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect("postgresql:///postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        assert apply(f"postgresql:///{name}")[0] == "0001_initial"
        assert apply(f"postgresql:///{name}") == []  # idempotent
        with psycopg2.connect(f"postgresql:///{name}") as conn, conn.cursor() as cur:
            cur.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'items'")
            indexes = {r[0] for r in cur.fetchall()}
        assert {"items_user_created", "items_user_category_created", "items_user_season_created"} <= indexes
    finally:
        admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def test_a_user_row_wiped_behind_the_api_is_recreated_not_a_500(client, user):
    from conftest import image_bytes, upload

    assert client.simulate_get("/api/v1/me", headers=user).status_code == 200
    user_id = client.simulate_get("/api/v1/me", headers=user).json["id"]
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM users WHERE id = %s", (user_id,))
    first = upload(client, user, image_bytes())
    assert first.status_code == 503 and first.headers["retry-after"] == "1"
    assert upload(client, user, image_bytes()).status_code == 202


class QueryCounter:
    """A TCP relay to the local Postgres that counts the simple-query messages (one per round trip) clients send."""

    def __init__(self) -> None:
        import socket
        import threading

        self.queries: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def dsn(self) -> str:
        database = TEST_DSN.rsplit("/", 1)[1]
        return f"postgresql://127.0.0.1:{self.port}/{database}?sslmode=disable"

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            client, _ = self._listener.accept()
            server = socket.create_connection(("127.0.0.1", 5432))
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    def _client_to_server(self, client, server) -> None:
        buffer, started = b"", False
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                server.sendall(data)
                buffer += data
                while True:
                    if not started:  # the startup packet: a length, no type byte
                        if len(buffer) < 4 or len(buffer) < int.from_bytes(buffer[:4], "big"):
                            break
                        buffer, started = buffer[int.from_bytes(buffer[:4], "big") :], True
                        continue
                    if len(buffer) < 5 or len(buffer) < 1 + int.from_bytes(buffer[1:5], "big"):
                        break
                    size = 1 + int.from_bytes(buffer[1:5], "big")
                    if buffer[:1] == b"Q":
                        self.queries.append(buffer[5 : size - 1])
                    buffer = buffer[size:]


@pytest.mark.parametrize("pooler", ["none", "transaction"])
def test_a_transaction_costs_one_round_trip_more_than_its_statements_and_a_read_no_more_than_two(pooler):
    counter = QueryCounter()
    pool = Pool(counter.dsn(), size=1, overflow=0, statement_timeout_ms=300, pooler=pooler)

    def two_statements(cur):
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS counted (n int)")
        cur.execute("INSERT INTO counted VALUES (%s) RETURNING n", (7,))
        return cur.fetchone()["n"]

    def read(cur):
        cur.execute("SELECT %s AS n", (5,))
        return cur.fetchone()["n"]

    try:
        pool.ping()
        counter.queries.clear()
        assert pool.run(two_statements) == 7
        assert len(counter.queries) == 3, counter.queries  # BEGIN rides on the first statement, then COMMIT
        counter.queries.clear()
        assert pool.run(read, transaction=False) == 5
        assert len(counter.queries) == (1 if pooler == "none" else 2), counter.queries
        # The settings really apply to the statement they were sent with.
        with pytest.raises(psycopg2.errors.QueryCanceled):
            pool.run(lambda cur: cur.execute("SELECT pg_sleep(2)"), transaction=pooler == "none")
        # A failed transaction is rolled back and commits nothing; the connection goes on serving.
        with pytest.raises(psycopg2.errors.DivisionByZero):
            pool.run(lambda cur: cur.execute("INSERT INTO counted VALUES (1 / 0)"))
        assert pool.run(read) == 5
    finally:
        pool.close()


def test_connections_beyond_the_pool_size_are_kept_while_busy_and_closed_once_idle_a_while():
    pool = Pool(TEST_DSN, size=1, overflow=2, overflow_idle_seconds=0.3)

    def backend(cur):
        cur.execute("SELECT pg_backend_pid() AS pid")
        return cur.fetchone()["pid"]

    def three_at_once() -> set[int]:
        with pool.connection() as a, pool.connection() as b, pool.connection() as c:
            return {backend_of(conn) for conn in (a, b, c)}

    def backend_of(conn) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return cur.fetchone()[0]

    try:
        first = three_at_once()
        assert three_at_once() == first  # a burst right after another reuses its connections: no new backends
        time.sleep(0.4)
        pool.run(backend, transaction=False)  # the next release closes the overflow idle past its time
        assert len(three_at_once() & first) == 1  # only the pool's own connection survived
    finally:
        pool.close()
