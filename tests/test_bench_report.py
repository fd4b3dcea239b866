"""The load test's verdict: what counts as an error and what is a slow cutout, as the report tells a reader."""

from bench import report

UPLOAD = "upload→ready"


def rows(*, http_failures: int = 0, still_waiting: int = 0, failed_jobs: int = 0) -> list[tuple]:
    out = [(1.0 + i / 100, "GET", "/api/v1/items", 40.0, True, "") for i in range(100)]
    out += [(2.0, "GET", "/api/v1/items", 2100.0, False, "HTTP 503 Service Unavailable")] * http_failures
    out += [(3.0, "JOB", UPLOAD, 4200.0, True, "")]
    out += [(3.0, "JOB", UPLOAD, 60000.0, False, "job still queued after the deadline")] * still_waiting
    out += [(3.0, "JOB", UPLOAD, 900.0, False, "job failed: image missing")] * failed_jobs
    return out


def judged(sample: list[tuple]) -> dict:
    result = {"latency": report.latency(sample, 0.0, 10.0)}
    result["verdict"] = report.verdict(result)
    return result


def test_a_cutout_still_waiting_is_reported_beside_the_verdict_not_counted_as_an_error():
    result = judged(rows(still_waiting=3))
    upload = result["latency"]["jobs_client"][UPLOAD]
    assert (upload["count"], upload["failed"], upload["still_waiting"]) == (4, 0, 3)
    assert result["latency"]["errors"]["count"] == 0
    assert result["verdict"]["passed"]
    assert not result["verdict"]["upload_to_ready_p95_under_30s"]  # one done in 4.2 s, but 3 of 4 never were
    assert "no (3 of 4 still waiting" in report._cutouts_kept_up(result["verdict"], upload)


def test_a_failed_job_and_a_failed_request_are_errors():
    for sample in (rows(failed_jobs=1), rows(http_failures=1)):
        result = judged(sample)
        assert result["latency"]["errors"]["count"] == 1
        assert not result["verdict"]["zero_errors"]
        assert not result["verdict"]["passed"]
