"""`make bench-jobs`: what one worker box does for background work.

Uploads a batch of 1024x1024 photos through the API at once, then watches Postgres: images/s through background
removal (u2netp) with one images process per core, RSS per process, and the share of the configured OpenAI RPM
the AI worker actually uses while its backlog lasts (against the fake at a low RPM, so it stays short).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import io
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg2

from bench import report
from bench.run import RESULTS, Options, prepare_database, wait_for_quiet
from bench.sampling import ProcessSampler
from bench.seed import USER_BASE, photo
from bench.stack import StackSettings, WardrobeStack
from wardrobe.auth import sign_init_data


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


def run(count: int, rpm: int, options: Options, timeout: float) -> dict[str, Any]:
    prepare_database(options)
    busy_before = wait_for_quiet(options.quiet_wait) if options.quiet_wait else None
    cores = os.cpu_count() or 1
    images = []
    for i in range(8):
        img = photo(3000 + i, (1024, 1024), quality=90)
        images.append(img)
    with tempfile.TemporaryDirectory(prefix="wardrobe-bench-jobs-") as work:
        settings = StackSettings(
            database_url=options.dsn,
            data_dir=options.data_dir,
            log_dir=Path(work) / "logs",
            openai_rpm=rpm,
            image_workers=cores,  # a worker box: one images process per core
            worker_nice=False,
            defer_ai_worker=True,  # images first, alone; then the AI worker meets a full backlog
        )
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
            cutouts: list[tuple[float, int]] = []
            ready: list[tuple[float, int]] = []
            failed = 0
            while time.time() - started < timeout:
                cut, done, failed = _progress(options.dsn, item_ids)
                cutouts.append((time.time(), cut))
                if cut + failed >= count:
                    break
                time.sleep(0.5)
            images_done = time.time()
            stack.start_worker("ai")
            while time.time() - started < timeout:
                cut, done, failed = _progress(options.dsn, item_ids)
                ready.append((time.time(), done))
                if done + failed >= count:
                    break
                time.sleep(0.5)
            finished = time.time()
            sampler.stop()
            problems = stack.check_alive()
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
        f"1024x1024 JPEGs, u2netp, {result['params']['image_processes']} images processes; OpenAI fake at "
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
    parser.add_argument("--database", default="wardrobe_bench")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--quiet-wait", type=float, default=600.0, help="wait up to this long for an idle machine"
    )
    args = parser.parse_args(argv)
    from bench.run import _terminate_on_sigterm

    _terminate_on_sigterm()
    options = Options(database=args.database, results_dir=args.results_dir, quiet_wait=args.quiet_wait)
    try:
        result = run(args.uploads, args.rpm, options, args.timeout)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{result['name']}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results_dir / f"{result['name']}.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if not result["stack_problems"] and result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
