"""One lab host: an overlay of the base, booted by systemd-nspawn under a supervisor that we track ourselves.

This machine's PID 1 is not systemd: there is no machined, so nspawn runs with --register=no --keep-unit,
machinectl does not work, and PIDs live in the host's directory under var/fleet/hosts/.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import network
from paths import BASE, HOSTS, SSH_KEY

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_LAB = "wardrobe-lab"
REBOOT_EXIT = 133  # nspawn's exit code when the guest ran `reboot`


@dataclass(frozen=True)
class Host:
    name: str
    group: str
    address: str

    @property
    def dir(self) -> Path:
        return HOSTS / self.name

    @property
    def root(self) -> Path:
        return self.dir / "merged"


# --- files -----------------------------------------------------------------------------------------------


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def pid1(host: Host) -> int | None:
    """The guest's systemd as seen from this machine: `nsenter -t <it> -a` enters the host."""
    return read_pid(host.dir / "pid1")


def supervisor_pid(host: Host) -> int | None:
    return read_pid(host.dir / "supervisor.pid")


# --- overlay ---------------------------------------------------------------------------------------------


def mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def mount_overlay(host: Host) -> None:
    """The base is the read-only lower layer; each host writes only to its own upper dir, kept across boots."""
    for d in ("upper", "work", "merged"):
        (host.dir / d).mkdir(parents=True, exist_ok=True)
    if mounted(host.root):
        return
    options = f"lowerdir={BASE},upperdir={host.dir / 'upper'},workdir={host.dir / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(host.root)], check=True)


def unmount_overlay(host: Host) -> None:
    if mounted(host.root):
        subprocess.run(["umount", str(host.root)], check=True)


# --- identity --------------------------------------------------------------------------------------------


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def personalize(host: Host, peers: list[Host]) -> None:
    """Name, address, peers, the controller's key and the apt proxy: all a host needs to be reached."""
    root = host.root
    write(root / "etc/hostname", f"{host.name}\n")
    hosts = ["127.0.0.1 localhost", f"127.0.1.1 {host.name}", f"{network.CONTROLLER} controller"]
    hosts += [f"{peer.address} {peer.name}" for peer in peers]
    write(root / "etc/hosts", "\n".join(hosts) + "\n")
    # No Gateway=: the bridge is the whole world.
    write(
        root / "etc/systemd/network/10-host0.network",
        f"[Match]\nName=host0\n\n[Network]\nAddress={host.address}/24\nDHCP=no\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n",
    )
    write(
        root / "etc/apt/apt.conf.d/01lab-proxy",
        f'Acquire::http::Proxy "http://{network.CONTROLLER}:{network.APT_PORT}";\n',
    )
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    write(root / "root/.ssh/authorized_keys", SSH_KEY.with_suffix(".pub").read_text(), 0o600)


# --- cgroups ---------------------------------------------------------------------------------------------


def cgroups(host: Host) -> list[Path]:
    """This host's cgroup in every hierarchy mounted here (hybrid: v1 controllers, name=systemd, unified)."""
    return [h / CGROUP_LAB / host.name for h in sorted(CGROUP_ROOT.iterdir()) if os.path.ismount(h)]


def make_cgroups(host: Host) -> None:
    """Without a cgroup of its own per host, parallel boots fail with status=219/CGROUP."""
    for cg in cgroups(host):
        for d in (cg.parent, cg):
            d.mkdir(exist_ok=True)
            # v1 cpuset refuses tasks until cpus and mems are set: inherit the parent's.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                f = d / knob
                if f.exists() and not f.read_text().strip():
                    f.write_text((d.parent / knob).read_text())


def join_cgroups(host: Host, pid: int) -> None:
    for cg in cgroups(host):
        (cg / "cgroup.procs").write_text(f"{pid}\n")


def remove_cgroups(host: Host) -> None:
    """rmdir bottom-up: the guest's systemd made its own sub-cgroups below ours."""
    for cg in cgroups(host):
        if not cg.exists():
            continue
        for dirpath, _, _ in sorted(os.walk(cg), key=lambda w: -len(w[0])):
            os.rmdir(dirpath)
        try:
            cg.parent.rmdir()
        except OSError:
            pass  # other hosts still there


# --- boot ------------------------------------------------------------------------------------------------


def nspawn_command(host: Host) -> list[str]:
    return [
        "systemd-nspawn",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={network.BRIDGE}",
        "--resolv-conf=off",
        "--link-journal=no",
        "--console=read-only",
        "-D",
        str(host.root),
        "-M",
        host.name,
    ]


def boot(host: Host, peers: list[Host]) -> None:
    """Start the supervisor in the background; returns at once (wait_ssh tells when the host is up)."""
    if supervisor_pid(host):
        return
    mount_overlay(host)
    personalize(host, peers)
    make_cgroups(host)
    (host.dir / "stop").unlink(missing_ok=True)
    with open(host.dir / "console.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("lab.py")), "supervise", host.name],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (host.dir / "supervisor.pid").write_text(f"{proc.pid}\n")


def supervise(host: Host) -> None:
    """Run nspawn until the guest powers off; boot it again after an in-guest reboot (exit 133)."""
    join_cgroups(host, os.getpid())
    while True:
        proc = subprocess.Popen(nspawn_command(host), stdin=subprocess.DEVNULL)
        (host.dir / "nspawn.pid").write_text(f"{proc.pid}\n")
        guest = find_pid1(proc.pid)
        if guest:
            (host.dir / "pid1").write_text(f"{guest}\n")
        code = proc.wait()
        print(f"[supervisor] {host.name}: nspawn exited {code}", flush=True)
        if code != REBOOT_EXIT or (host.dir / "stop").exists():
            break
    for name in ("pid1", "nspawn.pid", "supervisor.pid"):
        (host.dir / name).unlink(missing_ok=True)


def find_pid1(nspawn: int, timeout: float = 15) -> int | None:
    """nspawn's child that is PID 1 of its own PID namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children(nspawn):
            try:
                status = Path(f"/proc/{child}/status").read_text()
            except FileNotFoundError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if len(nspid) > 1 and nspid[-1] == "1":
                return child
        time.sleep(0.05)
    return None


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return found


# --- stop ------------------------------------------------------------------------------------------------


def kill(host: Host) -> None:
    """A power cut: SIGKILL to the guest's PID 1 takes its whole PID namespace down; no reboot follows."""
    (host.dir / "stop").touch()
    guest = pid1(host)
    if guest:
        os.kill(guest, signal.SIGKILL)
    wait_gone(host, 10)


def shutdown(host: Host) -> None:
    """Ask nspawn for a clean poweroff (it forwards SIGTERM as SIGRTMIN+3 to systemd) and wait for it."""
    (host.dir / "stop").touch()
    nspawn = read_pid(host.dir / "nspawn.pid")
    if nspawn:
        os.kill(nspawn, signal.SIGTERM)


def wait_gone(host: Host, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while supervisor_pid(host) and time.monotonic() < deadline:
        time.sleep(0.1)
    return supervisor_pid(host) is None


def reap(host: Host) -> None:
    """After shutdown: force what is left, then drop cgroups and the overlay mount."""
    if not wait_gone(host, 0):
        guest = pid1(host)
        if guest:
            os.kill(guest, signal.SIGKILL)
        sup = supervisor_pid(host)
        if not wait_gone(host, 5) and sup:
            os.kill(sup, signal.SIGKILL)
            wait_gone(host, 2)
    remove_cgroups(host)
    unmount_overlay(host)


# --- reachability ----------------------------------------------------------------------------------------


def ssh_command(host: Host, *remote: str) -> list[str]:
    return [
        "ssh",
        "-i",
        str(SSH_KEY),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=2",
        f"root@{host.address}",
        *remote,
    ]


def ssh_ok(host: Host) -> bool:
    return subprocess.run(ssh_command(host, "true"), capture_output=True, timeout=10).returncode == 0


def wait_ssh(host: Host, timeout: float = 120) -> float:
    """Seconds until sshd answered; raises if it never did."""
    start = time.monotonic()
    while not network.port_open(host.address, 22, 0.5) or not ssh_ok(host):
        if time.monotonic() - start > timeout:
            raise TimeoutError(
                f"{host.name}: sshd did not answer in {timeout:.0f} s (see {host.dir}/console.log)"
            )
        time.sleep(0.3)
    return time.monotonic() - start
