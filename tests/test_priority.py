"""A niced images worker catches up at the API's priority when cutouts wait too long, and only then."""

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from tasks.priority import CatchUp

NOW = datetime(2026, 11, 24, 23, 50, tzinfo=UTC)


def job(waited: float) -> dict:
    return {"id": "j", "created_at": NOW - timedelta(seconds=waited)}


def test_raises_priority_only_while_uploads_wait_and_returns_once_they_are_fresh():
    calls = []
    catch_up = CatchUp(10, renice=calls.append, base=10, clock=lambda: NOW)
    for waited in (0.4, 3, 9.9):
        catch_up.job_claimed(job(waited))
    assert calls == [] and catch_up.current == 10
    catch_up.job_claimed(job(14))  # behind: the API's priority
    assert calls == [0] and catch_up.current == 0
    for waited in (30, 12, 6):  # still working the backlog off: no flapping between levels
        catch_up.job_claimed(job(waited))
    assert calls == [0]
    catch_up.job_claimed(job(4))  # fresh again: back below the API
    assert calls == [0, 10] and catch_up.current == 10


def test_a_worker_at_the_apis_priority_or_with_catch_up_off_never_renices():
    calls = []
    for catch_up in (
        CatchUp(10, renice=calls.append, base=0, clock=lambda: NOW),
        CatchUp(0, renice=calls.append, base=10, clock=lambda: NOW),
    ):
        catch_up.job_claimed(job(600))
    assert calls == []


def test_without_the_right_to_renice_it_says_so_once_and_keeps_working(caplog):
    attempts = []

    def refuse(nice: int) -> None:
        attempts.append(nice)
        raise PermissionError(13, "Permission denied")

    catch_up = CatchUp(10, renice=refuse, base=10, clock=lambda: NOW)
    for _ in range(3):
        catch_up.job_claimed(job(60))
    assert attempts == [0] and catch_up.current == 10
    assert "LimitNICE=+0" in caplog.text and caplog.text.count("may not raise its priority") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="lowering a nice value needs root or LimitNICE")
def test_every_thread_of_the_worker_process_changes_priority():
    # A real process started at nice 10, as the images consumer is beside the API, with a second thread
    # standing in for the inference engine's.
    script = textwrap.dedent(
        """
        import json, os, threading
        from datetime import UTC, datetime, timedelta
        from tasks.priority import CatchUp

        done = threading.Event()
        threading.Thread(target=done.wait, daemon=True).start()

        def nices():
            return sorted({int(open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()[16])
                           for t in os.listdir("/proc/self/task")})

        catch_up = CatchUp(10)
        seen = [nices()]
        catch_up.job_claimed({"created_at": datetime.now(UTC) - timedelta(seconds=25)})
        seen.append(nices())
        catch_up.job_claimed({"created_at": datetime.now(UTC) - timedelta(seconds=1)})
        seen.append(nices())
        print(json.dumps({"threads": threading.active_count(), "nices": seen}))
        """
    )
    out = subprocess.run(
        ["nice", "-n", "10", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    report = json.loads(out.stdout)
    assert report["threads"] == 2
    assert report["nices"] == [[10], [0], [10]]


def test_a_failing_priority_hook_never_costs_the_job(caplog):
    from tasks.stages import StageRunner

    class Ledger:
        def claim(self, job_id, stage, lease_seconds):
            return {"id": job_id, "kind": "process_item", "request_id": "r", "attempts": 1, "max_attempts": 5}

    def broken_hook(job):
        raise ValueError("naive datetime")

    runner = StageRunner(
        items=None, capsules=None, users=None, store=None, ledger=Ledger(), send=None, on_claim=broken_hook
    )
    ran = []
    assert runner._run("j1", "cutout", lambda job: ran.append(job["id"]) or {"done": True}) == "succeeded"
    assert ran == ["j1"] and "on_claim hook failed" in caplog.text
