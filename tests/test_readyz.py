"""/readyz: the public (anyone through the balancer) get the status alone, from a probe shared for about a second;
operators (direct loopback, or the metrics token) get a fresh probe with the state of each dependency."""

import time
import uuid

import falcon
import falcon.testing
import psycopg2
import pytest
from conftest import TEST_DSN, make_config

from wardrobe.app import create_app
from wardrobe.migrate import SchemaBehind, SchemaCheck, apply, shipped
from wardrobe.ops.observability import OperatorGuard
from wardrobe.web.resources.health import Ready

TOKEN = "operator-token-for-readyz"


@pytest.fixture
def app_client(tmp_path):
    return falcon.testing.TestClient(create_app(make_config(tmp_path, WARDROBE_METRICS_TOKEN=TOKEN)))


@pytest.mark.parametrize(
    "how",
    [
        {"headers": {"X-Forwarded-For": "203.0.113.7"}},  # through the balancer
        {"remote_addr": "203.0.113.7"},  # straight from another host
        {"remote_addr": "203.0.113.7", "headers": {"Authorization": "Bearer wrong"}},
    ],
)
def test_the_public_get_the_status_and_nothing_else(app_client, how):
    resp = app_client.simulate_get("/readyz", **how)
    assert resp.status_code == 200
    assert resp.json == {"status": "ready"}
    assert resp.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "how",
    [
        {},  # loopback, not proxied: the deploy scripts' and make run's case
        {"remote_addr": "203.0.113.7", "headers": {"Authorization": f"Bearer {TOKEN}"}},
    ],
)
def test_operators_get_each_dependency(app_client, how):
    resp = app_client.simulate_get("/readyz", **how)
    assert resp.status_code == 200
    assert resp.json["status"] == "ready"
    checks = resp.json["checks"]
    assert {"postgres", "schema", "redis", "memcached"} <= set(checks)
    assert set(checks.values()) == {"ok"}, checks


class Dependency:
    def __init__(self):
        self.calls = 0
        self.down = False

    def __call__(self):
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("nope")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def probed(required, optional, clock):
    app = falcon.App()
    ready = Ready({"db": (required, True), "cache": (optional, False)}, OperatorGuard(TOKEN), clock=clock)
    app.add_route("/readyz", ready)
    return falcon.testing.TestClient(app)


PUBLIC = {"remote_addr": "203.0.113.7"}


def test_public_probes_are_shared_for_about_a_second_and_operators_probe_afresh():
    db, cache, clock = Dependency(), Dependency(), Clock()
    client = probed(db, cache, clock)
    for _ in range(50):
        assert client.simulate_get("/readyz", **PUBLIC).json == {"status": "ready"}
    assert (db.calls, cache.calls) == (1, 1)
    clock.now += 1.5
    client.simulate_get("/readyz", **PUBLIC)
    assert (db.calls, cache.calls) == (2, 2)
    # An operator's probe is never an old answer (a deploy waits on it), and it refreshes the shared one.
    db.down = True
    operator = client.simulate_get("/readyz")
    assert operator.status_code == 503 and operator.json["checks"]["db"] == "down: ConnectionRefusedError"
    assert db.calls == 3
    assert client.simulate_get("/readyz", **PUBLIC).json == {"status": "unready"}
    assert db.calls == 3


def test_a_required_dependency_down_is_503_unready_an_optional_one_degraded():
    db, cache, clock = Dependency(), Dependency(), Clock()
    client = probed(db, cache, clock)

    def answers(status_code, status):
        """The public's answer, then the operator's (whose is returned), both after the cache ran out."""
        for how in (PUBLIC, {}):
            clock.now += 2
            resp = client.simulate_get("/readyz", **how)
            assert (resp.status_code, resp.json["status"]) == (status_code, status)
            assert resp.headers.get("retry-after") == ("5" if status_code == 503 else None)
        return resp

    cache.down = True
    resp = answers(200, "degraded")
    assert resp.json["checks"] == {"db": "ok", "cache": "degraded: ConnectionRefusedError"}
    db.down = True
    resp = answers(503, "unready")
    assert resp.json["checks"] == {
        "db": "down: ConnectionRefusedError",
        "cache": "degraded: ConnectionRefusedError",
    }
    clock.now += 2
    assert client.simulate_get("/readyz", **PUBLIC).json == {"status": "unready"}


@pytest.fixture
def empty_database():
    """A database of its own that no migration has run on, as on a new Postgres host before site.yml migrates."""
    name = f"wardrobe_readyz_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(TEST_DSN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield TEST_DSN.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_not_ready_until_every_migration_of_this_release_is_applied(tmp_path, empty_database):
    app = create_app(make_config(tmp_path, WARDROBE_DATABASE_URL=empty_database))
    client = falcon.testing.TestClient(app)
    try:
        behind = client.simulate_get("/readyz")
        assert behind.status_code == 503
        assert behind.json["checks"]["postgres"] == "ok"
        assert behind.json["checks"]["schema"] == "down: SchemaBehind"
        assert client.simulate_get("/readyz", **PUBLIC).json == {"status": "unready"}

        assert sorted(apply(empty_database)) == sorted(shipped().values())
        # While behind, the check asks Postgres again only every couple of seconds.
        deadline = time.monotonic() + 10
        while (ready := client.simulate_get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.json["checks"]["schema"] == "ok"
        assert client.simulate_get("/readyz", **PUBLIC).json == {"status": "ready"}
    finally:
        app.services.close()


class CountingPool:
    """Stands in for the app's pool: answers yoyo's table with the hashes given, counting the queries."""

    def __init__(self, applied):
        self.applied = applied
        self.queries = 0

    def run(self, work, transaction=True):
        self.queries += 1
        return [{"migration_hash": h} for h in self.applied]


def test_the_schema_check_is_cached_so_readyz_stays_cheap():
    clock = Clock()
    expected = {"h1": "0001_initial", "h2": "0002_more"}
    pool = CountingPool(["h1"])
    check = SchemaCheck(pool, expected, clock=clock, recheck=2.0)
    for _ in range(20):
        with pytest.raises(SchemaBehind, match="0002_more"):
            check()
    assert pool.queries == 1  # behind: asked again only after the recheck interval
    pool.applied.append("h2")
    clock.now += 2.5
    for _ in range(20):
        check()
    assert pool.queries == 2  # current: never asked again by this process
