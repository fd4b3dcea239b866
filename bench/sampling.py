"""What the driver watches while the load runs: CPU and RSS of every process by role, the job queue, /metrics.

CPU is read from /proc (via psutil) each second; a role's CPU is the sum over its process tree, so gunicorn's
workers, Huey's forks and Locust's worker processes all count, including processes that came and went.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Self

import psutil

# Shared services this run did not start: counted by process name, over every process of that name.
EXTERNAL = {"postgres": ("postgres",), "redis": ("redis-server",)}


class _Sampler:
    """Samples from a daemon thread of its own, every `interval` s, from start() until stop()."""

    thread_name = "sampler"

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        raise NotImplementedError


class ProcessSampler(_Sampler):
    thread_name = "process-sampler"

    def __init__(self, roles: Callable[[], dict[str, int]], interval: float = 1.0) -> None:
        super().__init__(interval)
        self._roles = roles
        self._cpu: dict[str, dict[int, float]] = {}  # role -> pid -> latest cumulative CPU seconds
        self._lock = threading.Lock()
        self.samples: list[dict] = []  # {"t", "cpu": {role: cumulative s}, "rss": {role: bytes}, "busy": s}

    def _tree(self) -> dict[str, list[psutil.Process]]:
        trees: dict[str, list[psutil.Process]] = {}
        for role, pid in self._roles().items():
            try:
                root = psutil.Process(pid)
                trees[role] = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        # The driver itself (this process: samplers, result bookkeeping), without its children, which are roles.
        trees["bench driver"] = [psutil.Process(os.getpid())]
        names = {name: role for role, names in EXTERNAL.items() for name in names}
        for proc in psutil.process_iter(["name"]):
            role = names.get(proc.info["name"] or "")
            if role:
                trees.setdefault(f"{role} (shared)", []).append(proc)
        return trees

    def sample(self) -> dict:
        now = time.time()
        rss: dict[str, int] = {}
        biggest: dict[str, int] = {}
        counts: dict[str, int] = {}
        for role, procs in self._tree().items():
            seen = self._cpu.setdefault(role, {})
            total_rss = 0
            alive = 0
            for proc in procs:
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        seen[proc.pid] = times.user + times.system
                        one = proc.memory_info().rss
                        total_rss += one
                        biggest[role] = max(biggest.get(role, 0), one)
                        alive += 1
                except psutil.Error:
                    continue
            rss[role] = total_rss
            counts[role] = alive
        system = psutil.cpu_times()
        busy = (
            system.user
            + system.nice
            + system.system
            + system.irq
            + system.softirq
            + getattr(system, "steal", 0)
        )
        entry = {
            "t": now,
            # Interrupt handling is charged to no process: at hundreds of requests a second over loopback, it is
            # mostly the kernel moving the packets.
            "kernel_irq": system.irq + system.softirq,
            "cpu": {role: sum(pids.values()) for role, pids in self._cpu.items()},
            "rss": rss,
            "rss_process_max": biggest,
            "processes": counts,
            "busy": busy,
        }
        with self._lock:
            self.samples.append(entry)
        return entry

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def summary(self, start: float, end: float) -> dict:
        """Per role over [start, end]: average cores used, share of the machine, mean and peak RSS."""
        with self._lock:
            window = [s for s in self.samples if start <= s["t"] <= end]
        if len(window) < 2:
            return {"roles": {}, "machine_busy": None}
        first, last = window[0], window[-1]
        wall = last["t"] - first["t"]
        cores = psutil.cpu_count() or 1
        roles = {}
        for role in last["cpu"]:
            used = last["cpu"][role] - first["cpu"].get(role, 0.0)
            rss = [s["rss"].get(role, 0) for s in window if role in s["rss"]]
            roles[role] = {
                "cpu_cores": round(used / wall, 3),
                "cpu_share": round(used / wall / cores, 4),
                "rss_mb_mean": round(sum(rss) / max(len(rss), 1) / 2**20, 1),
                "rss_mb_peak": round(max(rss, default=0) / 2**20, 1),
                "rss_mb_peak_one_process": round(
                    max((s["rss_process_max"].get(role, 0) for s in window), default=0) / 2**20, 1
                ),
                "processes": max((s["processes"].get(role, 0) for s in window), default=0),
            }
        busy = (last["busy"] - first["busy"]) / wall / cores
        kernel_irq = (last.get("kernel_irq", 0.0) - first.get("kernel_irq", 0.0)) / wall / cores
        # CPU this run cannot account for: other sessions' builds and tests sharing the machine.
        accounted = sum(r["cpu_share"] for r in roles.values()) + kernel_irq
        return {
            "roles": roles,
            "machine_busy": round(busy, 4),
            "kernel_irq_share": round(kernel_irq, 4),
            "unaccounted_share": round(max(0.0, busy - accounted), 4),
            "cores": cores,
            "seconds": round(wall, 1),
        }


class QueueSampler(_Sampler):
    """Jobs waiting in Postgres (the source of truth): how many, and how long the oldest has waited."""

    thread_name = "queue-sampler"

    def __init__(self, dsn: str, interval: float = 2.0) -> None:
        super().__init__(interval)
        self._dsn = dsn
        self.samples: list[dict] = []

    def _run(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self._dsn)
        conn.autocommit = True
        try:
            while not self._stop.is_set():
                with conn.cursor() as cur:
                    cur.execute(
                        """
                        SELECT count(*) FILTER (WHERE state = 'queued' AND run_after <= now()),
                               count(*) FILTER (WHERE state = 'running'),
                               coalesce(extract(epoch FROM now() - min(run_after)
                                        FILTER (WHERE state = 'queued' AND run_after <= now())), 0)
                        FROM jobs WHERE state IN ('queued', 'running')
                        """
                    )
                    queued, running, oldest = cur.fetchone()
                self.samples.append(
                    {"t": time.time(), "queued": queued, "running": running, "oldest_age": float(oldest)}
                )
                self._stop.wait(self._interval)
        finally:
            conn.close()

    def summary(self, start: float, end: float) -> dict:
        window = [s for s in self.samples if start <= s["t"] <= end]
        if not window:
            return {}
        return {
            "queued_max": max(s["queued"] for s in window),
            "queued_mean": round(sum(s["queued"] for s in window) / len(window), 1),
            "oldest_age_max_s": round(max(s["oldest_age"] for s in window), 1),
            "oldest_age_mean_s": round(sum(s["oldest_age"] for s in window) / len(window), 1),
        }


def scrape_cache_counts(base_url: str) -> dict[str, float] | None:
    """Cache lookups by result from the API's /metrics (loopback needs no token); None when not exported."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    counts: dict[str, float] = {}
    found = False
    for family in text_string_to_metric_families(text):
        if family.name != "wardrobe_cache_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                found = True
                result = sample.labels.get("result", "")
                counts[result] = counts.get(result, 0.0) + sample.value
    return counts if found else None
