"""The fleet lab: real Debian 12 hosts booted as systemd-nspawn containers on this machine (make fleet-*).

Run as root with the project's virtualenv Python. `lab.py up` builds what is missing and boots every host;
`down` removes everything but the cached base; `kill`/`boot HOST` cut and restore one host; `status` lists them.
"""

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import base
import inventory
import machine
import network
from paths import HOSTS, LAB_JSON, SSH_KEY, STATE

# Each booted guest takes about 8 inotify instances; at the default 128 the 17th comes up degraded.
INOTIFY_INSTANCES = 1024


def ensure_ssh_key() -> None:
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "wardrobe-lab", "-f", str(SSH_KEY)],
            check=True,
        )


def raise_inotify() -> None:
    knob = Path("/proc/sys/fs/inotify/max_user_instances")
    if int(knob.read_text()) < INOTIFY_INSTANCES:
        knob.write_text(f"{INOTIFY_INSTANCES}\n")


def network_up() -> None:
    """Firewall first: no host may ever see the bridge without the lab's table in place."""
    network.firewall_up()
    network.bridge_up()
    network.apt_proxy_up()


def boot_and_wait(hosts: list[machine.Host]) -> None:
    peers = inventory.hosts()
    start = time.monotonic()
    for host in hosts:
        machine.boot(host, peers)
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        waited = list(pool.map(machine.wait_ssh, hosts))
    for host, seconds in zip(hosts, waited, strict=True):
        print(f"  {host.name:<8} {host.address:<14} sshd answered after {seconds:5.1f} s")
    print(f"{len(hosts)} host(s) up in {time.monotonic() - start:.1f} s")


def cmd_up(_args) -> None:
    base.install_packages()
    base.build_base()
    ensure_ssh_key()
    raise_inotify()
    network_up()
    boot_and_wait(inventory.hosts())
    inventory.write_lab_json()
    print(f"wrote {LAB_JSON}")


def cmd_boot(args) -> None:
    network_up()
    boot_and_wait([inventory.select(args.host)])


def cmd_kill(args) -> None:
    host = inventory.select(args.host)
    machine.kill(host)
    print(f"{host.name}: killed (its overlay is kept; make fleet-boot HOST={host.name} brings it back)")


def cmd_down(_args) -> None:
    hosts = inventory.hosts()
    for host in hosts:
        machine.shutdown(host)
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(lambda h: machine.wait_gone(h, 20), hosts))
    for host in hosts:
        machine.reap(host)
    subprocess.run(["rm", "-rf", str(HOSTS)], check=True)
    network.apt_proxy_down()
    network.bridge_down()
    network.firewall_down()
    LAB_JSON.unlink(missing_ok=True)
    print("lab removed (the cached base and apt cache under var/fleet/ are kept)")


def cmd_status(_args) -> None:
    print(
        f"bridge {network.BRIDGE}: {'present' if network.run('ip', 'link', 'show', network.BRIDGE, check=False).returncode == 0 else 'absent'}"
        f", nft table: {'present' if network.firewall_present() else 'absent'}"
        f", apt proxy: {'up' if network.apt_proxy_pid() else 'down'}"
    )
    hosts = inventory.hosts()
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        reachable = list(pool.map(lambda h: bool(machine.pid1(h)) and machine.ssh_ok(h), hosts))
    print(f"{'host':<8} {'group':<12} {'address':<14} {'state':<6} {'pid1':>8}  ssh")
    for host, ssh in zip(hosts, reachable, strict=True):
        pid = machine.pid1(host)
        state = "up" if pid else "down"
        print(
            f"{host.name:<8} {host.group:<12} {host.address:<14} {state:<6} {pid or '-':>8}  {'yes' if ssh else 'no'}"
        )


def cmd_supervise(args) -> None:
    machine.supervise(inventory.select(args.host))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="build what is missing, boot every host, write lab.json").set_defaults(
        func=cmd_up
    )
    sub.add_parser("down", help="stop and remove everything but the cached base").set_defaults(func=cmd_down)
    sub.add_parser("status", help="hosts, addresses, state, ssh").set_defaults(func=cmd_status)
    for name, func, text in [
        ("boot", cmd_boot, "boot one host on its kept overlay"),
        ("kill", cmd_kill, "kill one host hard (SIGKILL to its PID 1)"),
        ("supervise", cmd_supervise, "internal: run one host's nspawn, rebooting on exit 133"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("host")
        p.set_defaults(func=func)
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
