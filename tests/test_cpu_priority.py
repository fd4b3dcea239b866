"""On a box shared with the API, cutouts only get the CPU the API leaves idle, however long the queue: `make run`
and the systemd unit both start the images worker SCHED_IDLE (benchmarks, not tests, show what that buys)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_make_run_starts_the_images_worker_sched_idle():
    script = (ROOT / "scripts" / "run.sh").read_text()
    line = next(line for line in script.splitlines() if "wardrobe-worker images" in line)
    command = line.split("start ", 1)[1].split()
    assert command[:3] == ["chrt", "--idle", "0"]
    # And chrt really gives a process that policy here (util-linux is on every Debian machine).
    shown = subprocess.run(
        ["chrt", "--idle", "0", "chrt", "-p", "0"], capture_output=True, text=True, check=True
    )
    assert "SCHED_IDLE" in shown.stdout


def test_the_images_unit_runs_sched_idle_without_a_way_back_to_the_apis_priority():
    drop_in = (ROOT / "conf" / "systemd" / "wardrobe-worker@images.service.d" / "10-queue.conf").read_text()
    assert re.search(r"^CPUSchedulingPolicy=idle$", drop_in, re.M)
    unit = (ROOT / "conf" / "systemd" / "wardrobe-worker@.service").read_text()
    assert "LimitNICE" not in unit  # nothing may raise it back above the API
