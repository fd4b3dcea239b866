"""The lab's network: a bridge with a private /24, a firewall table of its own, and the apt proxy on the bridge.

Hosts get no default route and no NAT; the only way out of the bridge is apt-cacher-ng, which talks to
Debian's mirror on their behalf.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from paths import APT_CACHE

BRIDGE = "wlab0"
PREFIX = "10.213.7"  # chosen to be unlikely to clash with a real private network
CONTROLLER = f"{PREFIX}.1"
APT_PORT = 3142
NFT_TABLE = "wardrobe_lab"

# Everything from the bridge to this machine is dropped except the apt proxy and replies to our own ssh.
# Anything bound to 0.0.0.0 here would otherwise be reachable by every host. The forward chain stops a host
# that adds a route of its own (ip_forward is off, but the table should not depend on that); bridged traffic
# between hosts (seen here when br_netfilter is loaded) stays allowed.
NFT_RULES = f"""\
table inet {NFT_TABLE} {{
    chain input {{
        type filter hook input priority -10; policy accept;
        iifname "{BRIDGE}" ct state established,related accept
        iifname "{BRIDGE}" ip daddr {CONTROLLER} tcp dport {APT_PORT} accept
        iifname "{BRIDGE}" drop
    }}
    chain forward {{
        type filter hook forward priority -10; policy accept;
        iifname "{BRIDGE}" oifname != "{BRIDGE}" drop
        oifname "{BRIDGE}" iifname != "{BRIDGE}" drop
    }}
}}
"""

# Its own configuration: the Debian one remaps through backends_* files that can be empty and answer 503.
# Without Remap lines it acts as a caching HTTP proxy for whatever mirror the hosts' sources.list names.
ACNG_CONF = f"""\
CacheDir: {APT_CACHE}/cache
LogDir: {APT_CACHE}/log
SupportDir: /usr/lib/apt-cacher-ng
Port: {APT_PORT}
BindAddress: {CONTROLLER} 127.0.0.1
Foreground: 1
ExThreshold: 4
"""


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def bridge_up() -> None:
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    # IPv4 only: no link-local IPv6 on the controller's side of the bridge.
    Path(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6").write_text("1\n")
    if CONTROLLER not in run("ip", "-4", "addr", "show", BRIDGE).stdout:
        run("ip", "addr", "add", f"{CONTROLLER}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")


def bridge_down() -> None:
    if run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        run("ip", "link", "del", BRIDGE)


def firewall_up() -> None:
    """Replace the lab's table as a whole (delete + add in one transaction), so reruns stay idempotent."""
    rules = f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n{NFT_RULES}"
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)


def firewall_down() -> None:
    run("nft", "delete", "table", "inet", NFT_TABLE, check=False)


def firewall_present() -> bool:
    return run("nft", "list", "table", "inet", NFT_TABLE, check=False).returncode == 0


ACNG_PID = APT_CACHE / "apt-cacher-ng.pid"


def apt_proxy_pid() -> int | None:
    try:
        pid = int(ACNG_PID.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def apt_proxy_up() -> None:
    """Start apt-cacher-ng directly (this machine's PID 1 is not systemd) and wait for its port."""
    if apt_proxy_pid():
        return
    conf = APT_CACHE / "conf"
    for d in (conf, APT_CACHE / "cache", APT_CACHE / "log"):
        d.mkdir(parents=True, exist_ok=True)
    (conf / "acng.conf").write_text(ACNG_CONF)
    with open(APT_CACHE / "log" / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            ["/usr/sbin/apt-cacher-ng", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ACNG_PID.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", APT_PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"apt-cacher-ng did not start; see {APT_CACHE}/log/")
        time.sleep(0.2)


def port_open(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def apt_proxy_down() -> None:
    pid = apt_proxy_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    ACNG_PID.unlink(missing_ok=True)
