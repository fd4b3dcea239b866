"""The lab's hosts and test secrets, read from ansible/inventories/lab/ (the one place they are written)."""

import json
import subprocess

import yaml
from machine import Host
from paths import INVENTORY, LAB_JSON, VENV_BIN

# The groups a host is filed under in lab.json: the tiers, not the groups made of other groups.
TIERS = ["lb", "api", "redis", "workers", "postgres", "postgres_replicas", "monitoring", "objectstore"]
VAULT_PASSWORD = INVENTORY / "vault-password.txt"


def hosts() -> list[Host]:
    children = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["children"]
    return [
        Host(name, tier, hostvars["ansible_host"])
        for tier in TIERS
        for name, hostvars in (children[tier].get("hosts") or {}).items()
    ]


def setting(name: str):
    """A lab-wide setting from group_vars/all/main.yml (what the roles write into every host's env)."""
    return yaml.safe_load((INVENTORY / "group_vars" / "all" / "main.yml").read_text())[name]


def select(name: str) -> Host:
    for host in hosts():
        if host.name == name:
            return host
    raise SystemExit(f"no lab host {name!r}; hosts: {' '.join(h.name for h in hosts())}")


def vault() -> dict:
    out = subprocess.run(
        [
            str(VENV_BIN / "ansible-vault"),
            "view",
            "--vault-password-file",
            str(VAULT_PASSWORD),
            str(INVENTORY / "group_vars" / "all" / "vault.yml"),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return yaml.safe_load(out)


def write_lab_json() -> None:
    """The contract for the drills and load tools: where the LB is, the test secrets, every host."""
    secrets = vault()
    lab = hosts()
    lb = next(h for h in lab if h.group == "lb")
    doc = {
        "lb_url": f"http://{lb.address}",
        "bot_token": secrets["vault_wardrobe_telegram_bot_token"],
        "redis_password": secrets["vault_wardrobe_redis_password"],
        "hosts": [{"name": h.name, "group": h.group, "address": h.address} for h in lab],
    }
    LAB_JSON.write_text(json.dumps(doc, indent=2) + "\n")
