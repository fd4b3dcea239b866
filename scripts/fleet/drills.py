"""Fault and deploy drills on the fleet lab under steady load through its load balancer (make fleet-test).

Each drill starts scripts/fleet/loadgen.py against the LB, injects its fault while traffic runs, recovers the
lab, and waits for the load generator's verdict (requests by method and status, jobs accepted, completed, lost).
The lab must be whole again before the next drill starts. Results: bench/results/fleet-<UTC stamp>.{json,md}.

    python scripts/fleet/drills.py [--drills 1,3] [--users 150] [--seconds 150]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import inventory
import machine
from paths import LAB_JSON, REPO, VENV_BIN, WHEELHOUSE

RESULTS = REPO / "bench" / "results"
ANSIBLE = REPO / "ansible"
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
SENTINEL_PORT = 26379
MASTER_NAME = "wardrobe"
# Jobs stranded on a killed worker come back after their lease (the inventory's wardrobe_job_lease_seconds)
# plus a reaper pass (15 s): the worker drill keeps the victim down past both, so the other worker's reaper, not
# the victim's own restart, has to bring them back, and waits longer than that for the rest.
JOB_LEASE_SECONDS = int(inventory.setting("wardrobe_job_lease_seconds"))
REAPER_INTERVAL_SECONDS = 15
WORKER_DOWN_SECONDS = JOB_LEASE_SECONDS + 3 * REAPER_INTERVAL_SECONDS
WORKER_DRILL_GRACE = 240


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


# --- the lab ---------------------------------------------------------------------------------------------


class Lab:
    def __init__(self) -> None:
        self.spec = json.loads(LAB_JSON.read_text())
        self.lb_url = self.spec["lb_url"].rstrip("/")
        self.hosts = {h.name: h for h in inventory.hosts()}

    def group(self, name: str) -> list[machine.Host]:
        return [h for h in self.hosts.values() if h.group == name]

    def by_address(self, address: str) -> machine.Host | None:
        return next((h for h in self.hosts.values() if h.address == address), None)

    def run_in(self, host: machine.Host, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
        pid = machine.pid1(host)
        if not pid:
            return subprocess.CompletedProcess(cmd, 255, "", f"{host.name} is down")
        try:
            return subprocess.run(
                ["nsenter", "-t", str(pid), "-a", *cmd], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, 124, "", "timeout")

    def make(self, target: str, host: str) -> float:
        start = time.monotonic()
        subprocess.run(["make", "-s", "-C", str(REPO), target, f"HOST={host}"], check=True, timeout=180)
        return time.monotonic() - start

    def kill(self, name: str) -> None:
        log(f"make fleet-kill HOST={name}")
        self.make("fleet-kill", name)

    def boot(self, name: str) -> float:
        log(f"make fleet-boot HOST={name}")
        return self.make("fleet-boot", name)

    def lb_ready(self) -> int:
        try:
            # lb_url is the lab's own http:// address (lab.json), checked at start.
            with urllib.request.urlopen(f"{self.lb_url}/readyz", timeout=5) as resp:  # noqa: S310
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def wait(self, check, timeout: float, every: float = 1.0) -> float | None:
        """Seconds until check() is true, or None after timeout (bounded)."""
        start = time.monotonic()
        for _ in range(int(timeout / every) + 1):
            if check():
                return round(time.monotonic() - start, 1)
            if time.monotonic() - start > timeout:
                break
            time.sleep(every)
        return None

    def api_ready(self, host: machine.Host) -> bool:
        probe = (
            "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/readyz', timeout=3).status)"
        )
        return self.run_in(host, "python3", "-c", probe, timeout=10).stdout.strip() == "200"

    def whole(self) -> tuple[bool, str]:
        down = [h.name for h in self.hosts.values() if not machine.pid1(h)]
        if down:
            return False, f"hosts down: {', '.join(down)}"
        status = self.lb_ready()
        if status != 200:
            return False, f"LB /readyz answered {status}"
        return True, "all hosts up, LB ready"

    def redis_cli(self, host: machine.Host, *args: str, port: int = 6379) -> str:
        password = self.spec.get("redis_password", "")
        cmd = ["redis-cli", "-h", host.address, "-p", str(port), "--no-auth-warning"]
        cmd += ["-a", password] if password else []
        return self.run_in(host, *cmd, *args, timeout=10).stdout.strip()

    def redis_master(self) -> str | None:
        for host in self.group("redis"):
            out = self.redis_cli(host, "SENTINEL", "get-master-addr-by-name", MASTER_NAME, port=SENTINEL_PORT)
            lines = out.split()
            if len(lines) >= 1 and lines[0].count(".") == 3:
                return lines[0]
        return None

    def lb_log_count(self, pattern: str) -> int:
        """Lines of the LB's access logs that contain pattern (fixed string)."""
        lb = self.group("lb")[0]
        out = self.run_in(
            lb, "sh", "-c", f"cat /var/log/nginx/*access*.log 2>/dev/null | grep -cF '{pattern}'"
        )
        return int(out.stdout.strip() or 0)

    def lb_error_tail(self, lines: int = 12) -> list[str]:
        lb = self.group("lb")[0]
        out = self.run_in(lb, "tail", "-n", str(lines), "/var/log/nginx/wardrobe.error.log")
        return [line[:300] for line in out.stdout.splitlines()]

    def journal(self, host: machine.Host, unit: str, since: str, lines: int = 40) -> list[str]:
        out = self.run_in(
            host,
            "journalctl",
            "-u",
            unit,
            "--since",
            since,
            "--no-pager",
            "-n",
            str(lines),
            "-o",
            "short-iso",
        )
        return out.stdout.splitlines()[-lines:]

    def version(self, host: machine.Host) -> str:
        out = self.run_in(
            host,
            "/opt/wardrobe/venv/bin/python",
            "-c",
            "import importlib.metadata as m; print(m.version('wardrobe'))",
        )
        return out.stdout.strip() or f"? {out.stderr.strip()[-80:]}"

    def running_since(self, host: machine.Host, unit: str) -> str:
        out = self.run_in(host, "systemctl", "show", unit, "-p", "ActiveEnterTimestamp", "--value")
        return out.stdout.strip()


# --- load ------------------------------------------------------------------------------------------------


class Load:
    """One loadgen process for the duration of a drill."""

    def __init__(self, lab: Lab, args, drill: int, seconds: float, grace: float, first_uploads: int = 1):
        self.out = Path(tempfile.mkstemp(prefix=f"fleet-drill{drill}-", suffix=".json")[1])
        stamp = int(time.time())
        cmd = [
            str(VENV_BIN / "python"),
            str(LOADGEN),
            "--lb",
            lab.lb_url,
            "--bot-token",
            lab.spec["bot_token"],
            "--users",
            str(args.users),
            "--seconds",
            str(seconds),
            "--grace",
            str(grace),
            "--first-uploads",
            str(first_uploads),
            # Fresh users for every drill and run: the counts of one never mix with another's.
            "--user-base",
            str(7_100_000_000 + (stamp % 100_000) * 1000 + drill * 100_000_000),
            "--run-id",
            f"{stamp}{drill}",
            "--out",
            str(self.out),
        ]
        self.timeout = seconds + grace + 120
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started = time.monotonic()

    def result(self) -> dict:
        try:
            output, _ = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            output, _ = self.proc.communicate(timeout=120)
        log(output.strip().splitlines()[-1] if output.strip() else "loadgen: no output")
        if self.proc.returncode != 0 or not self.out.exists() or not self.out.stat().st_size:
            return {"error": f"loadgen exited {self.proc.returncode}: {output[-2000:]}"}
        data = json.loads(self.out.read_text())
        self.out.unlink(missing_ok=True)
        return data

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def pause_until(load: Load, second: float) -> None:
    time.sleep(max(0.0, second - load.elapsed()))


# --- the drills ------------------------------------------------------------------------------------------


def drill_api_kill(lab: Lab, args) -> dict:
    """1. An API host killed hard: 0 failed GETs, clean POSTs, and the host takes traffic again after boot."""
    victim = lab.hosts[args.api_victim]
    load = Load(lab, args, 1, args.seconds, 120)
    pause_until(load, 30)
    killed_at = datetime.now(UTC)
    lab.kill(victim.name)
    pause_until(load, 75)
    boot_s = lab.boot(victim.name)
    ready_s = lab.wait(lambda: lab.api_ready(victim), 120, 2)
    # Answered by the victim alone, first try: proof that it serves again, not that nginx tried it and moved on.
    served = f'"upstream_addr":"{victim.address}:8000","upstream_status":"200"'
    before = lab.lb_log_count(served)
    time.sleep(15)
    after = lab.lb_log_count(served)
    load_result = load.result()
    checks = {
        "killed_at": killed_at.isoformat(timespec="seconds"),
        "boot_seconds": round(boot_s, 1),
        "api_ready_after_boot_seconds": ready_s,
        "lb_log_lines_to_victim_at_ready_and_15s_later": [before, after],
        "victim_took_traffic_after_boot": after > before and ready_s is not None,
    }
    passed = (
        "error" not in load_result
        and load_result["failed_gets"] == 0
        and not load_result["half_created_items"]
        and checks["victim_took_traffic_after_boot"]
    )
    return {"load": load_result, "checks": checks, "passed": passed}


def build_new_release(version: str, target: Path = WHEELHOUSE) -> Path:
    """The current wardrobe wheel with its version bumped to a local one: same code, a new build to roll."""
    current = sorted(WHEELHOUSE.glob("wardrobe-0.1.0-*.whl"))
    if not current:
        raise SystemExit(f"no wardrobe-0.1.0 wheel in {WHEELHOUSE}: run make fleet-wheelhouse")
    work = Path(tempfile.mkdtemp(prefix="fleet-release-"))
    try:
        subprocess.run([str(VENV_BIN / "wheel"), "unpack", "-d", str(work), str(current[0])], check=True)
        tree = next(work.iterdir())
        info = next(tree.glob("wardrobe-*.dist-info"))
        meta = info / "METADATA"
        meta.write_text(meta.read_text().replace("Version: 0.1.0\n", f"Version: {version}\n", 1))
        info.rename(tree / f"wardrobe-{version}.dist-info")
        subprocess.run([str(VENV_BIN / "wheel"), "pack", "-d", str(target), str(tree)], check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    built = sorted(target.glob(f"wardrobe-{version}-*.whl"))
    if not built:
        raise SystemExit(f"wheel pack wrote no wardrobe-{version} wheel")
    return built[0]


def drill_deploy(lab: Lab, args) -> dict:
    """2. deploy.yml rolls a new build under load: 0 failed requests, the new version everywhere."""
    version = f"0.1.0+drill{datetime.now(UTC):%Y%m%d%H%M}"
    wheel = build_new_release(version)
    log(f"built {wheel.name}")
    app_hosts = lab.group("api") + lab.group("workers")
    before = {h.name: lab.version(h) for h in app_hosts}
    load = Load(lab, args, 2, 900, 180)  # stopped when the playbook ends
    pause_until(load, 30)
    started = time.monotonic()
    env = {**os.environ, "ANSIBLE_VAULT_PASSWORD_FILE": "inventories/lab/vault-password.txt"}
    play = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            *("-i", "inventories/lab", "deploy.yml", "-e", f"wardrobe_app_version={version}"),
        ],
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    deploy_s = round(time.monotonic() - started, 1)
    time.sleep(20)
    load.proc.send_signal(signal.SIGTERM)
    load_result = load.result()
    after = {h.name: lab.version(h) for h in app_hosts}
    units = {}
    for host in app_hosts:
        unit = "wardrobe-api.service" if host.group == "api" else "wardrobe-worker@images.service"
        units[host.name] = lab.running_since(host, unit)
    recap = [line for line in play.stdout.splitlines() if "ok=" in line and "failed=" in line]
    checks = {
        "version": version,
        "playbook_rc": play.returncode,
        "playbook_seconds": deploy_s,
        "play_recap": recap,
        "play_tail": play.stdout.splitlines()[-30:] if play.returncode else [],
        "versions_before": before,
        "versions_after": after,
        "unit_active_since": units,
        "new_version_everywhere": all(v == version for v in after.values()),
    }
    passed = (
        "error" not in load_result
        and play.returncode == 0
        and load_result["failed"] == 0
        and checks["new_version_everywhere"]
        and load_result["jobs_lost"] == 0
    )
    return {"load": load_result, "checks": checks, "passed": passed}


def app_unit(host: machine.Host) -> str:
    return "wardrobe-api.service" if host.group == "api" else "wardrobe-worker@images.service"


def drill_redis(lab: Lab, args) -> dict:
    """3. The Redis primary's host killed: Sentinel promotes, API and workers follow, 0 lost jobs."""
    master = lab.redis_master()
    victim = lab.by_address(master or "")
    if victim is None:
        return {"passed": False, "checks": {"error": f"no Redis master found through Sentinel ({master})"}}
    app_hosts = lab.group("api") + lab.group("workers")
    before = {h.name: lab.running_since(h, app_unit(h)) for h in app_hosts}
    load = Load(lab, args, 3, args.seconds, 240, first_uploads=2)
    pause_until(load, 30)
    lab.kill(victim.name)
    promoted_s = lab.wait(lambda: (lab.redis_master() or master) != master, 90, 1)
    new_master = lab.redis_master()
    pause_until(load, 100)
    lab.boot(victim.name)
    rejoined_s = lab.wait(lambda: "role:slave" in lab.redis_cli(victim, "INFO", "replication"), 90, 2)
    load_result = load.result()
    after = {h.name: lab.running_since(h, app_unit(h)) for h in app_hosts}
    restarted = [name for name in after if after[name] != before[name]]
    checks = {
        "old_master": f"{victim.name} {master}",
        "new_master": new_master,
        "promotion_seconds": promoted_s,
        "old_master_rejoined_as_replica_seconds": rejoined_s,
        "app_units_active_since": after,
        "app_units_restarted": restarted,
    }
    passed = (
        "error" not in load_result
        and promoted_s is not None
        and load_result["jobs_lost"] == 0
        and not restarted
    )
    return {"load": load_result, "checks": checks, "passed": passed}


def drill_worker(lab: Lab, args) -> dict:
    """4. A worker host killed during cutouts and kept down past the lease: the other worker's reaper resends its
    jobs and they complete there."""
    victim = lab.hosts[args.worker_victim]
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    kill_at = 20
    seconds = max(args.seconds, kill_at + WORKER_DOWN_SECONDS + 15)
    load = Load(lab, args, 4, seconds, WORKER_DRILL_GRACE, first_uploads=2)
    # Users upload on arrival (over the first 10 s): the images queue is busy when the host dies.
    pause_until(load, kill_at)
    lab.kill(victim.name)
    killed = time.monotonic()
    pause_until(load, kill_at + WORKER_DOWN_SECONDS)
    down_s = round(time.monotonic() - killed, 1)
    # What the survivors' reapers did while the victim was down (every consumer runs one; a lock lets one act).
    others = [h for h in lab.group("workers") if h.name != victim.name]
    resent = {
        h.name: [ln for ln in lab.journal(h, "wardrobe-worker@*", since, 2000) if "reaper: resent" in ln][
            -10:
        ]
        for h in others
    }
    lab.boot(victim.name)
    load_result = load.result()
    checks = {
        "victim": victim.name,
        "victim_down_seconds": down_s,
        "job_lease_seconds": JOB_LEASE_SECONDS,
        "reaper_resent_on_others": resent,
        "stranded_jobs_resent_by_another_host": any(resent.values()),
    }
    passed = (
        "error" not in load_result
        and load_result["jobs_lost"] == 0
        and load_result["failed"] == 0
        and checks["stranded_jobs_resent_by_another_host"]
    )
    return {"load": load_result, "checks": checks, "passed": passed}


def drill_postgres(lab: Lab, args) -> dict:
    """5. The Postgres host restarted: clean 503 + Retry-After meanwhile, recovery by itself, no 202 lost."""
    victim = lab.group("postgres")[0]
    load = Load(lab, args, 5, args.seconds, 180)
    pause_until(load, 30)
    lab.kill(victim.name)
    outage_start = time.monotonic()
    pause_until(load, 50)
    lab.boot(victim.name)
    recovered_s = lab.wait(lambda: lab.lb_ready() == 200, 180, 1)
    total_outage = round(time.monotonic() - outage_start, 1)
    load_result = load.result()
    unclean = []
    if "error" not in load_result:
        unclean = [
            f
            for f in load_result["failures"]
            if f["status"] not in (503,) and not f["route"].endswith("[grace]")
        ]
    checks = {
        "ready_after_boot_seconds": recovered_s,
        "kill_to_ready_seconds": total_outage,
        "failures_other_than_503": unclean,
    }
    passed = (
        "error" not in load_result
        and recovered_s is not None
        and not unclean
        and load_result["responses_503"]["without"] == 0
        and load_result["jobs_lost"] == 0
    )
    return {"load": load_result, "checks": checks, "passed": passed}


def drill_memcached(lab: Lab, args) -> dict:
    """6. memcached stopped on one API host: reads continue, no errors."""
    victim = lab.group("api")[0]
    load = Load(lab, args, 6, min(args.seconds, 120), 120)
    pause_until(load, 30)
    stop = lab.run_in(victim, "systemctl", "stop", "memcached")
    log(f"memcached stopped on {victim.name} (rc {stop.returncode})")
    pause_until(load, 80)
    start = lab.run_in(victim, "systemctl", "start", "memcached")
    active = lab.run_in(victim, "systemctl", "is-active", "memcached").stdout.strip()
    load_result = load.result()
    checks = {
        "victim": victim.name,
        "stop_rc": stop.returncode,
        "start_rc": start.returncode,
        "active": active,
    }
    passed = "error" not in load_result and load_result["failed"] == 0 and active == "active"
    return {"load": load_result, "checks": checks, "passed": passed}


def psql(lab: Lab, host: machine.Host, sql: str) -> str | None:
    """One query as the postgres OS user on a lab host; its output, or None if it failed."""
    out = lab.run_in(host, "runuser", "-u", "postgres", "--", "psql", "-tAc", sql)
    return out.stdout.strip() if out.returncode == 0 else None


def replica_commits(lab: Lab, host: machine.Host) -> int | None:
    """Transactions the replica has run in the wardrobe database: rising under load means the API reads it."""
    out = psql(
        lab, host, "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'wardrobe'"
    )
    return int(out) if out and out.isdigit() else None


def replica_streaming(lab: Lab, primary: machine.Host, replica: machine.Host) -> bool:
    sql = (
        f"SELECT count(*) FROM pg_stat_replication WHERE client_addr = '{replica.address}' "
        "AND state = 'streaming'"
    )
    return psql(lab, primary, sql) == "1"


def drill_replica(lab: Lab, args) -> dict:
    """7. The Postgres replica's host killed: reads fall back to the primary with no error, and the replica
    streams and serves again after boot."""
    replicas = lab.group("postgres_replicas")
    if not replicas:
        return {"passed": False, "checks": {"error": "the lab has no postgres_replicas host"}}
    victim, primary = replicas[0], lab.group("postgres")[0]
    load = Load(lab, args, 7, args.seconds, 120)
    pause_until(load, 10)
    first = replica_commits(lab, victim)
    pause_until(load, 30)
    before = replica_commits(lab, victim)
    lab.kill(victim.name)
    pause_until(load, 80)
    lab.boot(victim.name)
    streaming_s = lab.wait(lambda: replica_streaming(lab, primary, victim), 120, 2)
    again = replica_commits(lab, victim)
    time.sleep(15)
    later = replica_commits(lab, victim)
    load_result = load.result()
    read_before = None not in (first, before) and before > first
    read_after = None not in (again, later) and later > again
    checks = {
        "victim": victim.name,
        "replica_transactions_10s_30s": [first, before],
        "replica_served_reads_before_the_kill": read_before,
        "streaming_again_after_boot_seconds": streaming_s,
        "replica_transactions_at_streaming_and_15s_later": [again, later],
        "replica_served_reads_after_boot": read_after,
    }
    passed = (
        "error" not in load_result
        and load_result["failed"] == 0
        and load_result["jobs_lost"] == 0
        and read_before
        and read_after
        and streaming_s is not None
    )
    return {"load": load_result, "checks": checks, "passed": passed}


DRILLS = {
    1: ("API host killed hard", drill_api_kill),
    2: ("Rolling deploy of a new build", drill_deploy),
    3: ("Redis primary's host killed", drill_redis),
    4: ("Worker host killed during cutouts", drill_worker),
    5: ("Postgres host restarted", drill_postgres),
    6: ("memcached stopped on one API host", drill_memcached),
    7: ("Postgres replica's host killed", drill_replica),
}


# --- report ----------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    lines = [
        f"# Fleet drills, {report['started']}",
        "",
        f"Machine: {report['machine']}. Lab: {report['lab']}. Load: {report['users']} users through "
        f"{report['lb_url']} ({report['seconds']} s per drill unless stated), from the controller.",
        "",
        "| drill | result | requests | failed | failed GETs | jobs accepted | completed | lost |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in report["drills"]:
        load = d.get("load") or {}
        lines.append(
            f"| {d['id']}. {d['name']} | {'pass' if d['passed'] else 'FAIL'} | {load.get('requests', '-')} | "
            f"{load.get('failed', '-')} | {load.get('failed_gets', '-')} | {load.get('jobs_accepted', '-')} | "
            f"{load.get('jobs_completed', '-')} | {load.get('jobs_lost', '-')} |"
        )
    for d in report["drills"]:
        load = d.get("load") or {}
        lines += ["", f"## {d['id']}. {d['name']}: {'pass' if d['passed'] else 'FAIL'}", ""]
        if "error" in load:
            lines += ["```", load["error"][-1500:], "```"]
        if load.get("by_status"):
            lines += ["| method | route | status | count |", "|---|---|---:|---:|"]
            lines += [
                f"| {r['method']} | `{r['route']}` | {r['status']} | {r['count']} |"
                for r in load["by_status"]
            ]
            lines += [
                "",
                f"Jobs: {load['jobs_accepted']} accepted, {load['jobs_completed']} completed, "
                f"{load['jobs_failed']} failed, {load['jobs_lost']} lost (waited {load['grace_seconds']} s after the traffic for the rest); "
                f"uploads refused: {load['uploads_refused']} {load['uploads_refused_by_status']}; "
                f"half-created items: {len(load['half_created_items'])}; 503s with Retry-After: "
                f"{load['responses_503']['with_retry_after']}, without: {load['responses_503']['without']}.",
            ]
            if load.get("errors"):
                lines += ["", "Errors seen:", ""] + [f"- `{k}` x{v}" for k, v in load["errors"].items()]
        lines += ["", "Checks and recovery:", "", "```json", json.dumps(d.get("checks", {}), indent=2), "```"]
        if d.get("before_next"):
            lines += ["", f"Lab before the next drill: {d['before_next']}"]
    return "\n".join(lines) + "\n"


def machine_line() -> str:
    """The controller, which runs every lab host: CPU model, cores, memory, kernel."""
    sys.path.insert(0, str(REPO))
    from bench import report

    facts = report.machine()
    return f"{facts['cpu']}, {facts['cores']} cores, {facts['memory_gb']} GB, Linux {facts['kernel']}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drills", default=os.environ.get("DRILLS") or "1,2,3,4,5,6,7")
    parser.add_argument("--users", type=int, default=int(os.environ.get("DRILL_USERS") or 150))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("DRILL_SECONDS") or 150))
    parser.add_argument("--api-victim", default="api2")
    parser.add_argument("--worker-victim", default="work1")
    args = parser.parse_args()
    chosen = [int(x) for x in args.drills.replace(" ", "").split(",") if x]
    unknown = [d for d in chosen if d not in DRILLS]
    if unknown:
        sys.exit(f"unknown drill(s) {unknown}: choose from {sorted(DRILLS)}")

    lab = Lab()
    host = urlsplit(lab.lb_url).hostname or ""
    if urlsplit(lab.lb_url).scheme != "http" or not host.startswith(("10.213.7.", "127.")):
        sys.exit(f"refusing {lab.lb_url}: drills send traffic to loopback and 10.213.7.0/24 only")
    stamp = datetime.now(UTC)
    report = {
        "started": stamp.isoformat(timespec="seconds"),
        "machine": machine_line(),
        "lab": ", ".join(f"{h.name} ({h.group})" for h in lab.hosts.values()),
        "lb_url": lab.lb_url,
        "users": args.users,
        "seconds": args.seconds,
        "drills": [],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"fleet-{stamp:%Y%m%d-%H%M%S}"
    for number in chosen:
        name, run = DRILLS[number]
        ok, why = lab.whole()
        if not ok:
            settle = lab.wait(lambda: lab.whole()[0], 180, 3)
            ok, why = lab.whole()
            if not ok:
                log(f"drill {number} skipped: the lab is not whole ({why})")
                report["drills"].append(
                    {
                        "id": number,
                        "name": name,
                        "passed": False,
                        "checks": {"skipped": why, "waited": settle},
                    }
                )
                continue
        log(f"drill {number}: {name}")
        started = time.monotonic()
        try:
            outcome = run(lab, args)
        except Exception as exc:  # noqa: BLE001 - one broken drill is reported, the others still run
            outcome = {"passed": False, "checks": {"exception": f"{type(exc).__name__}: {exc}"}}
        outcome.update(id=number, name=name, wall_seconds=round(time.monotonic() - started, 1))
        outcome.setdefault("checks", {})["lb_error_log_tail"] = lab.lb_error_tail()
        settle = lab.wait(lambda: lab.whole()[0], 180, 3)
        outcome["before_next"] = f"{lab.whole()[1]} (after {settle} s)"
        report["drills"].append(outcome)
        log(f"drill {number}: {'pass' if outcome['passed'] else 'FAIL'}")
        base.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        base.with_suffix(".md").write_text(markdown(report))
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    base.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    base.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {base}.json and {base}.md")


if __name__ == "__main__":
    main()
