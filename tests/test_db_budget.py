"""The fleet's Postgres connection budget, from the production inventory as Ansible renders it.

Every pool the app can open at once (API boxes x gunicorn workers x (pool size + overflow), worker boxes x their
consumers' pools and reapers), sized as the app sizes them from the env file Ansible writes, must fit where the env
file points the app: PgBouncer's max_client_conn (the fleet's setting, wardrobe_db_pooler: transaction), or
Postgres's max_connections itself (wardrobe_db_pooler: none). With PgBouncer, its pools (default + reserve, per
database) plus the clients that go to Postgres directly (migrations, psql, the exporter) must fit max_connections.
Both ways are rendered, from one ansible-playbook run. So is a streaming replica (db02): the API's replica pools,
sized like its primary pools, must fit the replica's pooler or Postgres, and the replica must allow what a hot
standby needs of its primary.
"""

from __future__ import annotations

import configparser
import os
import re
import sys
import urllib.parse
from pathlib import Path

import pytest
import yaml

from tasks.work import db_pool_size
from wardrobe.config import Config

REPO = Path(__file__).resolve().parent.parent
ANSIBLE = REPO / "ansible"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
REAPERS_PER_WORKER_BOX = 2  # every consumer (images, ai) forks one (tasks/main.py), with a pool of 1


POOLERS = ("transaction", "none")


def render_play(
    hosts: str,
    roles: list[str],
    files: list[tuple[str, str, str]],
    out: Path,
    pooler: str,
    extra_vars: dict | None = None,
) -> dict:
    """A play that renders each role template (name, template under ansible/roles, file under `out`)."""
    return {
        "name": f"Render what {hosts} gets with pooler {pooler}",
        "hosts": hosts,
        "connection": "local",
        "gather_facts": False,
        # Play vars outrank the inventory's group_vars: the same inventory, either way of reaching Postgres.
        "vars": {"wardrobe_db_pooler": pooler, **(extra_vars or {})},
        "roles": roles,
        "tasks": [
            {
                "name": name,
                "ansible.builtin.template": {
                    "src": str(ANSIBLE / "roles" / src),
                    "dest": f"{out}/{dest}",
                    "mode": "0600",
                },
                "tags": ["render"],
            }
            for name, src, dest in files
        ],
    }


def render_playbook(out: Path) -> str:
    plays = []
    for pooler in POOLERS:
        (out / pooler).mkdir()
        plays += [
            render_play(
                "api01:worker01",
                ["wardrobe_app"],
                [
                    (
                        "Render the env file",
                        "wardrobe_app/templates/wardrobe.env.j2",
                        "{{ inventory_hostname }}.env",
                    ),
                    (
                        "Render the migrations' env file",
                        "wardrobe_app/templates/migrate.env.j2",
                        "{{ inventory_hostname }}-migrate.env",
                    ),
                ],
                out / pooler,
                pooler,
            ),
            render_play(
                "db01",
                ["postgres", "pgbouncer"],
                [
                    (
                        "Render the Postgres tuning file",
                        "postgres/templates/wardrobe.conf.j2",
                        "postgres.conf",
                    ),
                    (
                        "Render the PgBouncer configuration",
                        "pgbouncer/templates/pgbouncer.ini.j2",
                        "pgbouncer.ini",
                    ),
                    (
                        "Render the PgBouncer unit's limits",
                        "pgbouncer/templates/limits.conf.j2",
                        "pgbouncer-limits.conf",
                    ),
                    ("Render pg_hba", "postgres/templates/pg_hba.conf.j2", "pg_hba.conf"),
                ],
                out / pooler,
                pooler,
            ),
            # As postgres.yml configures the replicas' group.
            render_play(
                "db02",
                ["postgres", "pgbouncer"],
                [
                    ("Render the replica's tuning", "postgres/templates/wardrobe.conf.j2", "replica.conf"),
                    ("Render the replica's PgBouncer", "pgbouncer/templates/pgbouncer.ini.j2", "replica.ini"),
                ],
                out / pooler,
                pooler,
                {"postgres_standby": True},
            ),
        ]
    plays.append(
        render_play(
            "db01:db02",
            ["firewall"],
            [("Render the firewall", "firewall/templates/nftables.conf.j2", "{{ inventory_hostname }}.nft")],
            out,
            "transaction",
        )
    )
    return yaml.safe_dump(plays, sort_keys=False)


SECRETS = [
    "vault_wardrobe_telegram_bot_token=1234567890:budget",
    "vault_wardrobe_openai_api_keys=sk-budget",
    "vault_wardrobe_metrics_token=budget",
    "vault_wardrobe_db_password=budget",
    "vault_wardrobe_db_replication_password=budget",
    "vault_wardrobe_redis_password=budget",
    "vault_wardrobe_s3_access_key_id=budget",
    "vault_wardrobe_s3_secret_access_key=budget",
]


@pytest.fixture(scope="module")
def render(tmp_path_factory) -> tuple[Path, dict]:
    """Runs ansible-playbook once for both poolers; returns the output directory and the inventory's groups."""
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed")
    import json
    import subprocess

    out = tmp_path_factory.mktemp("budget")
    playbook = out / "render.yml"
    playbook.write_text(render_playbook(out))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        "ANSIBLE_NOCOLOR": "1",
    }
    extra = [a for s in SECRETS for a in ("-e", s)]
    argv = [
        ANSIBLE_PLAYBOOK,
        playbook,
        "--tags",
        "render",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
    ]
    result = subprocess.run(
        [str(a) for a in argv + extra], cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    inventory = subprocess.run(
        [str(ANSIBLE_PLAYBOOK.parent / "ansible-inventory"), "--list"],
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out, json.loads(inventory.stdout)


@pytest.fixture(scope="module", params=POOLERS)
def rendered(request, render) -> dict:
    root, groups = render
    out = root / request.param
    return {
        "pooler": request.param,
        "api": app_config(out / "api01.env"),
        "worker": app_config(out / "worker01.env"),
        "migrate": app_config(out / "api01.env", out / "api01-migrate.env"),
        "api_boxes": len(groups["api"]["hosts"]),
        "worker_boxes": len(groups["workers"]["hosts"]),
        "replica_hosts": {
            name: groups["_meta"]["hostvars"][name] for name in groups["postgres_replicas"]["hosts"]
        },
        "pgbouncer": pgbouncer_ini(out / "pgbouncer.ini"),
        "postgres": postgres_conf(out / "postgres.conf"),
        "pg_hba": (out / "pg_hba.conf").read_text(),
        "replica_pgbouncer": pgbouncer_ini(out / "replica.ini"),
        "replica_postgres": postgres_conf(out / "replica.conf"),
        "limits": pgbouncer_limits(out / "pgbouncer-limits.conf"),
    }


def pgbouncer_ini(path: Path) -> configparser.ConfigParser:
    bouncer = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=(";",))
    bouncer.read(path)
    return bouncer


def postgres_conf(path: Path) -> dict[str, str]:
    return dict(
        re.match(r"\s*(\w[\w.]*)\s*=\s*(.*?)\s*$", line).groups()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )


def pgbouncer_limits(path: Path):
    limits = configparser.ConfigParser(interpolation=None)
    limits.optionxform = str
    limits.read(path)
    return limits["Service"]


def app_config(*env_files: Path) -> Config:
    """The settings a box runs with: the rendered env files in systemd's order (a later file wins), read as
    config.py reads the environment."""
    environ = {}
    for env_file in env_files:
        for line in env_file.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, value = line.partition("=")
                environ[name] = value
    return Config.from_env(environ)


def client_connections(rendered: dict) -> dict[str, int]:
    api, worker = rendered["api"], rendered["worker"]
    images_size, images_overflow = db_pool_size(worker, "images")
    ai_size, ai_overflow = db_pool_size(worker, "ai")
    per_worker_box = (
        worker.image_workers * (images_size + images_overflow)
        + ai_size
        + ai_overflow
        + REAPERS_PER_WORKER_BOX
    )
    return {
        "api": rendered["api_boxes"] * api.gunicorn_workers * (api.db_pool_size + api.db_pool_overflow),
        "workers": rendered["worker_boxes"] * per_worker_box,
    }


def headroom() -> int:
    """Postgres connections the postgres role keeps for clients that connect directly (migrations, psql, ...)."""
    defaults = yaml.safe_load((ANSIBLE / "roles/postgres/defaults/main.yml").read_text())
    return defaults["postgres_connection_headroom"]


def test_the_env_passes_the_pool_sizes_the_budget_counts(rendered):
    # Code defaults (20 + 10 per API worker) would blow every limit below: the inventory's sizes must reach the app.
    inventory = yaml.safe_load((ANSIBLE / "inventories/production/group_vars/all/main.yml").read_text())
    api, worker = rendered["api"], rendered["worker"]
    assert api.db_pool_size == inventory["wardrobe_api_db_pool_size"]
    assert api.db_pool_overflow == inventory["wardrobe_api_db_pool_overflow"]
    assert api.gunicorn_workers == inventory["wardrobe_api_gunicorn_workers"]
    assert worker.image_workers == inventory["wardrobe_worker_images_processes"]
    assert worker.ai_workers == inventory["wardrobe_worker_ai_greenlets"]


def test_every_pool_the_fleet_can_open_fits_where_the_env_points_it(rendered):
    api, bouncer = rendered["api"], rendered["pgbouncer"]["pgbouncer"]
    demand = sum(client_connections(rendered).values())
    port = urllib.parse.urlsplit(api.database_url).port
    if rendered["pooler"] == "transaction":
        assert (port, api.db_pooler) == (int(bouncer["listen_port"]), "transaction")
        assert bouncer["pool_mode"] == "transaction"
        assert demand <= int(bouncer["max_client_conn"]), demand
    else:
        # Straight to Postgres: every pooled connection is a backend, next to the direct clients.
        assert (port, api.db_pooler) == (5432, "none")
        assert demand + headroom() <= int(rendered["postgres"]["max_connections"]), demand


def test_every_box_writes_only_under_its_data_dir_and_finds_the_model(rendered):
    # Relative defaults would resolve under the read-only release directory (/opt/wardrobe) the units run in.
    for config in (rendered["api"], rendered["worker"]):
        assert config.data_dir == Path("/var/lib/wardrobe")
        assert config.u2net_home.is_absolute() and config.u2net_home.parts[:3] == ("/", "opt", "wardrobe")
        assert config.memcached_servers and all(s.endswith(":11211") for s in config.memcached_servers)
        assert config.redis_url.startswith("redis+sentinel://") and "sentinel_password=" in config.redis_url


def test_migrations_go_to_postgres_itself_never_through_the_pooler(rendered):
    migrate = rendered["migrate"]
    assert urllib.parse.urlsplit(migrate.database_url).port == 5432
    assert migrate.db_pooler == "none"


def test_the_poolers_server_connections_fit_postgres_max_connections(rendered):
    bouncer = rendered["pgbouncer"]
    settings = bouncer["pgbouncer"]
    databases = len(bouncer["databases"])
    pooled = databases * (int(settings["default_pool_size"]) + int(settings["reserve_pool_size"]))
    assert pooled + headroom() <= int(rendered["postgres"]["max_connections"]), pooled


def test_pgbouncer_may_hold_a_descriptor_for_every_client_and_server_connection(rendered):
    settings = rendered["pgbouncer"]["pgbouncer"]
    needed = (
        int(settings["max_client_conn"])
        + int(settings["default_pool_size"])
        + int(settings["reserve_pool_size"])
    )
    assert int(rendered["limits"]["LimitNOFILE"]) > needed


def test_postgres_keeps_per_statement_totals_and_logs_slow_statements(rendered):
    postgres = rendered["postgres"]
    assert "pg_stat_statements" in postgres["shared_preload_libraries"]
    assert postgres["log_min_duration_statement"] not in ("-1", "'-1'")


def test_the_api_reads_every_replica_through_the_same_kind_of_hop_and_the_workers_none(rendered):
    api, worker = rendered["api"], rendered["worker"]
    replicas = rendered["replica_hosts"]
    urls = [urllib.parse.urlsplit(url) for url in api.database_replica_urls]
    port = 6432 if rendered["pooler"] == "transaction" else 5432
    assert sorted((u.hostname, u.port) for u in urls) == sorted(
        (host["ansible_host"], port) for host in replicas.values()
    )
    assert all(u.password == "budget" and u.path == "/wardrobe" for u in urls)
    assert worker.database_replica_urls == ()


def test_the_apis_replica_pools_fit_each_replica(rendered):
    # Each API worker keeps a pool per replica, sized like its primary pool (store/replicas.py).
    demand = client_connections(rendered)["api"]
    replica = rendered["replica_postgres"]
    if rendered["pooler"] == "transaction":
        assert demand <= int(rendered["replica_pgbouncer"]["pgbouncer"]["max_client_conn"]), demand
    else:
        assert demand + headroom() <= int(replica["max_connections"]), demand


def test_a_replica_allows_what_a_hot_standby_needs_of_its_primary(rendered):
    primary, replica = rendered["postgres"], rendered["replica_postgres"]
    # A hot standby refuses to start with less of these than its primary has.
    for setting in ("max_connections", "max_wal_senders"):
        assert int(replica[setting]) >= int(primary[setting]), setting
    assert replica["hot_standby"] == "on" and "hot_standby" not in primary
    assert int(primary["max_replication_slots"]) >= len(rendered["replica_hosts"])
    for host in rendered["replica_hosts"].values():
        assert re.search(
            rf"^host\s+replication\s+replicator\s+{re.escape(host['ansible_host'])}/32\s+scram-sha-256$",
            rendered["pg_hba"],
            re.M,
        ), rendered["pg_hba"]


def firewall(out: Path, host: str) -> dict[int, set[str]]:
    """What the rendered nftables rules of a host let in: port -> source addresses."""
    opened: dict[int, set[str]] = {}
    for line in (out / f"{host}.nft").read_text().splitlines():
        match = re.search(r"saddr \{ (.*?) \} tcp dport \{ (.*?) \} accept", line)
        if match:
            for port in match.group(2).split(", "):
                opened.setdefault(int(port), set()).update(match.group(1).split(", "))
    return opened


def test_only_the_api_reaches_a_replica_and_only_replicas_stream_from_the_primary(render):
    out, groups = render
    address = {name: hv["ansible_host"] for name, hv in groups["_meta"]["hostvars"].items()}

    def hosts(*names: str) -> set[str]:
        return {address[h] for name in names for h in groups[name]["hosts"]}

    primary, replica = firewall(out, "db01"), firewall(out, "db02")
    assert primary[5432] == hosts("api", "workers", "postgres_replicas")
    assert primary[6432] == hosts("api", "workers")
    assert replica[5432] == replica[6432] == hosts("api")
    assert replica[9187] == hosts("monitoring")
