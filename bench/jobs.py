"""`make bench-jobs`: what one worker box does for background work.

Uploads a batch of 1024x1024 photos through the API at once, then watches Postgres: images/s through background
removal (u2netp) with one images process per core, RSS per process, and the share of the configured OpenAI RPM
the AI worker actually uses while its backlog lasts (against the fake at a low RPM, so it stays short).

Then, on a fresh stack, the steady phase: uploads arrive at random (Poisson) at the rate N users of the load test
make them (N / 600 s), with both workers running as a worker box runs them, and upload->ready is taken from the
jobs table: what a user waits when the images queue has a box of its own, as the fleet deploys it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import io
import json
import os
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg2

from bench import report
from bench.run import RESULTS, Options, jobs_from_db, prepare_database, wait_for_quiet
from bench.sampling import ProcessSampler
from bench.seed import USER_BASE, photo
from bench.stack import StackSettings, WardrobeStack
from tasks.cutout.removal import PRECISIONS, engine_for, resolve_precision
from wardrobe.web.auth import sign_init_data


def _upload(base_url: str, bot_token: str, user_id: int, image: bytes) -> str:
    init_data = sign_init_data(bot_token, {"id": user_id, "first_name": "Bench"})
    boundary = "wardrobe-bench-jobs"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        base_url + "/api/v1/items",
        data=body,
        method="POST",
        headers={
            "Authorization": f"tma {init_data}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["item"]["id"]


def _progress(dsn: str, item_ids: list[str]) -> tuple[int, int, int]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                """
                SELECT count(*) FILTER (WHERE cutout_key IS NOT NULL),
                       count(*) FILTER (WHERE status = 'ready'),
                       count(*) FILTER (WHERE status = 'failed')
                FROM items WHERE id = ANY(%s::uuid[])
                """,
                (item_ids,),
            )
            return cur.fetchone()
    finally:
        conn.close()


CUT, READY, FAILED = 0, 1, 2  # what _progress counts


def _poll(
    dsn: str, item_ids: list[str], column: int, since: float, timeout: float
) -> list[tuple[float, tuple[int, int, int]]]:
    """(time, _progress) every 0.5 s until `column` and the failed together count every item, or until `timeout`
    s after `since`."""
    polls = []
    while time.time() - since < timeout:
        counts = _progress(dsn, item_ids)
        polls.append((time.time(), counts))
        if counts[column] + counts[FAILED] >= len(item_ids):
            break
        time.sleep(0.5)
    return polls


def _rate(points: list[tuple[float, int]], total: int) -> float | None:
    """Items per second between the first and the last change of a cumulative count."""
    moving = [(t, n) for t, n in points if 0 < n]
    if len(moving) < 2:
        return None
    start = moving[0]
    end = next((p for p in moving if p[1] >= total), moving[-1])
    if end[0] <= start[0]:
        return None
    return (end[1] - start[1]) / (end[0] - start[0])


def _worker_box(options: Options, work: Path, rpm: int, **extra: Any) -> StackSettings:
    """A worker box: one images process per core, nothing nice'd, the OpenAI fake at `rpm`."""
    return StackSettings(
        database_url=options.dsn,
        data_dir=options.data_dir,
        log_dir=work / "logs",
        openai_rpm=rpm,
        image_workers=os.cpu_count() or 1,
        worker_nice=False,
        cutout_precision=options.cutout_precision,
        **extra,
    )


def run(count: int, rpm: int, options: Options, timeout: float) -> dict[str, Any]:
    prepare_database(options)
    busy_before = wait_for_quiet(options.quiet_wait) if options.quiet_wait else None
    cores = os.cpu_count() or 1
    images = []
    for i in range(8):
        img = photo(3000 + i, (1024, 1024), quality=90)
        images.append(img)
    with tempfile.TemporaryDirectory(prefix="wardrobe-bench-jobs-") as work:
        # images first, alone; then the AI worker meets a full backlog
        settings = _worker_box(options, Path(work), rpm, defer_ai_worker=True)
        with WardrobeStack(settings) as stack:
            sampler = ProcessSampler(stack.roles).start()
            started = time.time()
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                # One upload per seeded user: per-user upload limits never bite.
                futures = [
                    pool.submit(
                        _upload,
                        stack.base_url,
                        settings.bot_token,
                        USER_BASE + 10_000 + i,
                        _variant(images[i % len(images)], i),
                    )
                    for i in range(count)
                ]
                item_ids = [f.result() for f in futures]
            uploaded = time.time()
            cut_polls = _poll(options.dsn, item_ids, CUT, started, timeout)
            images_done = time.time()
            stack.start_worker("ai")
            ready_polls = _poll(options.dsn, item_ids, READY, started, timeout)
            finished = time.time()
            sampler.stop()
            problems = stack.check_alive()
    cutouts = [(t, counts[CUT]) for t, counts in cut_polls]
    ready = [(t, counts[READY]) for t, counts in ready_polls]
    failed = ([*cut_polls, *ready_polls] or [(0.0, (0, 0, 0))])[-1][1][FAILED]
    images_per_s = _rate(cutouts, count)
    analyses_per_s = _rate(ready, count)
    procs = sampler.summary(started, images_done)
    ai_procs = sampler.summary(images_done, finished)
    result = {
        "name": f"jobs-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}",
        "kind": "jobs",
        "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "params": {
            "uploads": count,
            "image_side": 1024,
            "model": "u2netp",
            "image_processes": cores,
            "openai_rpm": rpm,
            "cutout_precision": resolve_precision(options.cutout_precision),
            "cutout_engine": engine_for(options.cutout_precision),
        },
        "upload_seconds": round(uploaded - started, 1),
        "images_per_s_per_box": round(images_per_s, 2) if images_per_s else None,
        "cores": cores,
        "cutouts_done": cutouts[-1][1] if cutouts else 0,
        "ready": ready[-1][1] if ready else 0,
        "failed": failed,
        "openai_calls_per_min": round(analyses_per_s * 60, 1) if analyses_per_s else None,
        "openai_rpm_used_fraction": round(analyses_per_s * 60 / rpm, 3) if analyses_per_s else None,
        "processes": procs,
        "processes_ai_phase": ai_procs,
        "stack_problems": problems,
        "machine_busy_before": busy_before,
        "notes": [
            "images/s: cutouts completed per second while the backlog lasted, all cores given to the images queue "
            "(the API idles: it only took the uploads).",
            "OpenAI share: the AI worker starts once every cutout is done, so it meets the whole backlog; item "
            "analyses finished per minute, over the configured RPM (each analysis is one chat completion).",
            "Process table: the images phase (size worker boxes by the images processes' RSS).",
        ],
    }
    return result


def steady(
    users: int, upload_every: float, duration: float, options: Options, timeout: float, seed: int = 11
) -> dict[str, Any]:
    """Uploads at `users / upload_every` per second (Poisson) for `duration` s on a worker box; upload->ready."""
    prepare_database(options)
    rate = users / upload_every
    cores = os.cpu_count() or 1
    rng = random.Random(seed)
    images = [photo(4000 + i, (1024, 1280), quality=88) for i in range(8)]
    with tempfile.TemporaryDirectory(prefix="wardrobe-bench-steady-") as work:
        settings = _worker_box(options, Path(work), rpm=500)  # one key's production limit
        with WardrobeStack(settings) as stack:
            sampler = ProcessSampler(stack.roles).start()
            started = time.time()
            futures: list[concurrent.futures.Future] = []
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                due = started
                while True:
                    due += rng.expovariate(rate)
                    if due - started >= duration:
                        break
                    time.sleep(max(0.0, due - time.time()))
                    serial = len(futures)
                    futures.append(
                        pool.submit(
                            _upload,
                            stack.base_url,
                            settings.bot_token,
                            # one upload per seeded user, from the population's second half
                            USER_BASE + (options.population // 2 + serial) % options.population,
                            _variant(images[serial % len(images)], serial),
                        )
                    )
                item_ids = [f.result() for f in futures]
            arrivals_end = time.time()
            polls = _poll(options.dsn, item_ids, READY, arrivals_end, timeout)
            _, done, failed = polls[-1][1] if polls else (0, 0, 0)
            finished = time.time()
            sampler.stop()
            problems = stack.check_alive()
    jobs = jobs_from_db(options.dsn, started - 1, arrivals_end + 1).get("process_item", {})
    return {
        "users": users,
        "upload_every_s": upload_every,
        "uploads_per_s": round(rate, 3),
        "duration_s": duration,
        "uploads": len(item_ids),
        "ready": done,
        "failed": failed,
        "upload_to_ready_s": {k: jobs.get(k) for k in ("p50", "p95", "max")},
        "drain_s": round(finished - arrivals_end, 1),
        "image_processes": cores,
        "processes": sampler.summary(started, arrivals_end),
        "stack_problems": problems,
    }


def _variant(jpeg: bytes, serial: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    ImageDraw.Draw(img).rectangle((0, 0, 16, 16), fill=(serial % 256, serial // 256 % 256, 7))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def markdown(result: dict[str, Any]) -> str:
    roles = result["processes"].get("roles", {})
    lines = [
        f"# Background jobs on one worker box ({result['started_at']})",
        "",
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores. {result['params']['uploads']} uploads of "
        f"1024x1024 JPEGs, u2netp in {result['params'].get('cutout_precision', 'f32')}"
        f"{report.on_engine(result['params'].get('cutout_engine'))}, "
        f"{result['params']['image_processes']} images processes; OpenAI fake at "
        f"{result['params']['openai_rpm']} RPM.",
        "",
        f"- Background removal: **{result['images_per_s_per_box']} images/s per box** "
        f"({result['cutouts_done']}/{result['params']['uploads']} done, {result['failed']} failed).",
        f"- OpenAI: {result['openai_calls_per_min']} calls/min under backlog = "
        f"**{_pct(result['openai_rpm_used_fraction'])} of the configured RPM**.",
        "",
        f"Machine busy {result['processes'].get('machine_busy') or 0:.0%}, "
        f"{result['processes'].get('unaccounted_share') or 0:.0%} of it by work this run did not start.",
        "",
        "| process | count | CPU (cores) | RSS peak, all MB | RSS peak, one process MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for role, p in sorted(roles.items()):
        lines.append(
            f"| {role} | {p['processes']} | {p['cpu_cores']:.2f} | {p['rss_mb_peak']} | "
            f"{p.get('rss_mb_peak_one_process', '-')} |"
        )
    lines += ["", *[f"- {n}" for n in result["notes"]]]
    st = result.get("steady")
    if st:
        wait = st["upload_to_ready_s"]
        lines += [
            "",
            f"## Steady uploads: {st['users']} users' rate on a worker box",
            "",
            f"{st['uploads']} uploads at random, {st['uploads_per_s']}/s ({st['users']} users x one per "
            f"{st['upload_every_s']:g} s, as in the load test) for {st['duration_s']:g} s; "
            f"{st['image_processes']} images processes and the AI worker, OpenAI fake at 500 RPM.",
            "",
            f"- **upload→ready p50 {wait['p50']} s, p95 {wait['p95']} s**, max {wait['max']} s (jobs table: "
            f"created→finished); {st['ready']} ready, {st['failed']} failed; the last one was ready "
            f"{st['drain_s']} s after the last upload.",
            f"- Machine busy {st['processes'].get('machine_busy') or 0:.0%} while uploads arrived.",
        ]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=120)
    parser.add_argument(
        "--rpm", type=int, default=120, help="the fake's (and the limiter's) requests per minute"
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--steady-users", type=int, default=1000, help="steady phase: this many users' upload rate (0: skip)"
    )
    parser.add_argument(
        "--steady-duration", type=float, default=120.0, help="steady phase: seconds of arrivals"
    )
    parser.add_argument("--upload-every", type=float, default=600.0, help="mean s between one user's uploads")
    parser.add_argument(
        "--cutout-precision",
        choices=PRECISIONS,
        default="auto",
        help="WARDROBE_CUTOUT_PRECISION",
    )
    parser.add_argument("--database", default="wardrobe_bench")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--quiet-wait", type=float, default=600.0, help="wait up to this long for an idle machine"
    )
    args = parser.parse_args(argv)
    from bench.run import _terminate_on_sigterm

    _terminate_on_sigterm()
    options = Options(
        database=args.database,
        results_dir=args.results_dir,
        quiet_wait=args.quiet_wait,
        cutout_precision=args.cutout_precision,
    )
    try:
        result = run(args.uploads, args.rpm, options, args.timeout)
        if args.steady_users > 0:
            if options.quiet_wait:
                wait_for_quiet(options.quiet_wait)
            result["steady"] = steady(
                args.steady_users, args.upload_every, args.steady_duration, options, args.timeout
            )
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{result['name']}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results_dir / f"{result['name']}.md").write_text(markdown(result))
    print(markdown(result))
    steady_ok = not result.get("steady") or (
        not result["steady"]["stack_problems"] and result["steady"]["failed"] == 0
    )
    return 0 if not result["stack_problems"] and result["failed"] == 0 and steady_ok else 1


if __name__ == "__main__":
    sys.exit(main())
