"""The controller's packages and the cached Debian 12 rootfs that every lab host overlays."""

import os
import shutil
import subprocess
from pathlib import Path

from paths import BASE

PACKAGES = ["systemd-container", "debootstrap", "apt-cacher-ng", "nftables", "openssh-client", "iproute2"]
SUITE = "bookworm"
# The mirror apt uses on this machine (/etc/apt/sources.list.d/debian.sources); nothing else is fetched.
MIRROR = "http://deb.debian.org/debian"
INCLUDE = "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,iproute2,ca-certificates"
COMPLETE = BASE / ".wardrobe-base-complete"

SOURCES = f"""\
deb {MIRROR} {SUITE} main
deb {MIRROR} {SUITE}-updates main
deb http://deb.debian.org/debian-security {SUITE}-security main
"""

# Host keys must differ per host: the base ships none and each host makes its own at first boot.
HOSTKEYS_UNIT = """\
[Unit]
Description=Generate this host's ssh host keys at first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
"""


def install_packages() -> None:
    """apt-get install what the lab needs, only when something is missing (dpkg -s is the check)."""
    missing = [p for p in PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True, env=env)


def build_base() -> None:
    """debootstrap the base once; a half-built one (no marker) is thrown away and redone."""
    if COMPLETE.exists():
        return
    partial = BASE.with_name("base.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(partial), MIRROR], check=True
    )
    customize(partial)
    shutil.rmtree(BASE, ignore_errors=True)
    partial.rename(BASE)
    COMPLETE.touch()


def customize(root: Path) -> None:
    """What every host shares: apt sources, networkd, first-boot host keys, no identity of its own."""
    (root / "etc/apt/sources.list").write_text(SOURCES)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    unit = root / "etc/systemd/system/ssh-hostkeys.service"
    unit.write_text(HOSTKEYS_UNIT)
    wants = root / "etc/systemd/system/ssh.service.wants"
    wants.mkdir(exist_ok=True)
    (wants / unit.name).symlink_to("/etc/systemd/system/ssh-hostkeys.service")
    subprocess.run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service"], check=True)
    # An empty machine-id makes each host generate its own at first boot.
    (root / "etc/machine-id").write_text("")
    # No DNS in the lab: peers are in /etc/hosts; debootstrap copied this machine's resolver here.
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")
    subprocess.run(["chroot", str(root), "apt-get", "clean"], check=True)
