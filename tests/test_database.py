"""Postgres under stress and failure: a full pool answers 503, a restarted server is recovered from, and the
migrations build the schema from an empty database."""

import subprocess
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
