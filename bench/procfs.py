"""What /proc says about a process: its children, and the CPU it has used (no I/O a driver would wait on)."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> list[int]:
    """The pids of `pid`'s direct children ([] once it has gone)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def proc_cpu(pid: int, *, children: bool) -> float:
    """CPU seconds (user + system) `pid` has used so far; with `children`, also its reaped children's
    (cutime + cstime). 0.0 once it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # After the ")" field 0 is state (stat field 3): utime, stime, cutime, cstime are stat fields 14-17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU used so far by `root` and its direct children, reaped ones included (e.g. a gunicorn master and its
    workers)."""
    return proc_cpu(root, children=True) + sum(proc_cpu(pid, children=False) for pid in children(root))


def postgres_backends_cpu(database: str) -> dict[int, float]:
    """CPU so far of every Postgres backend connected to `database`, by pid.

    Backends are titled "postgres: 15/main: user DATABASE [local] STATE".
    """
    needle = f" {database} ".encode()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            title = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"postgres: ") and needle in title:
            found[int(entry.name)] = proc_cpu(int(entry.name), children=False)
    return found
