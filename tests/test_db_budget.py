"""The fleet's Postgres connection budget, from the production inventory as Ansible renders it.

Client side: every pool the app can open at once (API boxes x gunicorn workers x (pool size + overflow), worker
boxes x their consumers' pools and reapers), sized as the app sizes them from the env file Ansible writes, must fit
PgBouncer's max_client_conn. Server side: PgBouncer's pools (default + reserve, per database) plus the clients
that go to Postgres directly (migrations, psql, the exporter) must fit the max_connections the postgres role sets.
"""

from __future__ import annotations

import configparser
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from tasks.work import db_pool_size
from wardrobe.config import Config

REPO = Path(__file__).resolve().parent.parent
ANSIBLE = REPO / "ansible"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
REAPERS_PER_WORKER_BOX = 2  # every consumer (images, ai) forks one (tasks/main.py), with a pool of 1


def render_play(hosts: str, roles: list[str], files: list[tuple[str, str, str]], out: Path) -> dict:
    """A play that renders each role template (name, template under ansible/roles, file under `out`)."""
    return {
        "name": f"Render what {hosts} gets",
        "hosts": hosts,
        "connection": "local",
        "gather_facts": False,
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
    return yaml.safe_dump(
        [
            render_play(
                "api01:worker01",
                ["wardrobe_app"],
                [
                    (
                        "Render the env file",
                        "wardrobe_app/templates/wardrobe.env.j2",
                        "{{ inventory_hostname }}.env",
                    )
                ],
                out,
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
                ],
                out,
            ),
        ],
        sort_keys=False,
    )


SECRETS = [
    "vault_wardrobe_telegram_bot_token=1234567890:budget",
    "vault_wardrobe_openai_api_keys=sk-budget",
    "vault_wardrobe_metrics_token=budget",
    "vault_wardrobe_db_password=budget",
    "vault_wardrobe_redis_password=budget",
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
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
    groups = json.loads(inventory.stdout)
    bouncer = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=(";",))
    bouncer.read(out / "pgbouncer.ini")
    postgres = dict(
        re.match(r"\s*(\w[\w.]*)\s*=\s*(.*?)\s*$", line).groups()
        for line in (out / "postgres.conf").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    limits = configparser.ConfigParser(interpolation=None)
    limits.optionxform = str
    limits.read(out / "pgbouncer-limits.conf")
    return {
        "api": app_config(out / "api01.env"),
        "worker": app_config(out / "worker01.env"),
        "api_boxes": len(groups["api"]["hosts"]),
        "worker_boxes": len(groups["workers"]["hosts"]),
        "pgbouncer": bouncer,
        "postgres": postgres,
        "limits": limits["Service"],
    }


def app_config(env_file: Path) -> Config:
    """The settings a box runs with: the rendered env file, read as config.py reads the environment."""
    environ = {}
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


def test_every_pool_the_fleet_can_open_fits_the_poolers_client_limit(rendered):
    bouncer = rendered["pgbouncer"]["pgbouncer"]
    demand = client_connections(rendered)
    assert bouncer["pool_mode"] == "transaction"
    assert sum(demand.values()) <= int(bouncer["max_client_conn"]), demand


def test_the_poolers_server_connections_fit_postgres_max_connections(rendered):
    bouncer = rendered["pgbouncer"]
    settings = bouncer["pgbouncer"]
    databases = len(bouncer["databases"])
    headroom = yaml.safe_load((ANSIBLE / "roles/postgres/defaults/main.yml").read_text())[
        "postgres_connection_headroom"
    ]
    pooled = databases * (int(settings["default_pool_size"]) + int(settings["reserve_pool_size"]))
    assert pooled + headroom <= int(rendered["postgres"]["max_connections"]), (pooled, headroom)


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
