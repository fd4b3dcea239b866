"""Steady Mini App traffic against the lab's load balancer for one drill, written as JSON when it stops.

The session mix of bench/locustfile.py made self-contained: the lab's database starts empty and users are
created on their first request, so each user opens the app, uploads a couple of photos, then browses, edits and
now and then uploads again. Every 202 job is polled until it succeeds; after the traffic stops, jobs not yet
done are waited for while they keep finishing, and what is still not done once none has finished for the grace
period (or at the cap) is counted lost. Runs under gevent as its own process, so
the drill driver (plain threads and subprocesses) never shares a monkey-patched interpreter with it.

    python scripts/fleet/loadgen.py --lb http://10.213.7.10 --bot-token T --users 150 --seconds 120 --out f.json
"""

import gevent.monkey

gevent.monkey.patch_all()

import argparse  # noqa: E402 - gevent patches before anything opens a socket
import io  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
from geventhttpclient import HTTPClient  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from bench.seed import photo  # noqa: E402
from wardrobe.web.auth import sign_init_data  # noqa: E402

CATEGORIES = ["top", "bottom", "dress", "outerwear", "shoes", "bag", "accessory"]
SEASONS = ["summer", "winter", "demi-season", "all-season"]
# Small photos: two cores run the whole lab, and a cutout's cost grows with pixels.
PHOTO_SIZE = (480, 600)
ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.213.7.0/24")]
JOB_POLL_SECONDS = 2.0


def allowed(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in ALLOWED_NETWORKS)


class Tally:
    """Requests by (method, route, status) and a per-second timeline of failures, for the drill's report."""

    def __init__(self) -> None:
        self.started = time.time()
        self.by_status: Counter = Counter()
        self.failed: Counter = Counter()
        self.errors: Counter = Counter()
        self.timeline: Counter = Counter()  # (second, method, ok)
        self.retry_after_503 = 0
        self.plain_503 = 0

    def record(
        self, method: str, route: str, status: int, error: str = "", retry_after: bool = False
    ) -> None:
        ok = 0 < status < 400
        self.by_status[(method, route, status)] += 1
        second = int(time.time() - self.started)
        self.timeline[(second, method, ok)] += 1
        if not ok:
            self.failed[(method, route, status)] += 1
            if error:
                self.errors[f"{method} {route} {status} {error}"[:200]] += 1
        if status == 503:
            if retry_after:
                self.retry_after_503 += 1
            else:
                self.plain_503 += 1


class Jobs:
    def __init__(self) -> None:
        self.accepted: dict[str, dict] = {}  # job id -> {"user", "item", "t", "state"}
        self.failed_uploads: list[dict] = []  # {"user", "notes", "status"}: checked for half-created items

    def pending(self) -> list[str]:
        return [j for j, v in self.accepted.items() if v["state"] not in ("succeeded", "failed")]


class Session:
    def __init__(self, gen: "Generator", user_id: int) -> None:
        self.gen = gen
        self.user_id = user_id
        self.rng = random.Random(user_id)
        init_data = sign_init_data(gen.bot_token, {"id": user_id, "first_name": "Drill"})
        self.auth = {"Authorization": f"tma {init_data}"}
        self.client = gen.client()
        self.items: list[str] = []
        self.uploads = 0

    def call(self, method: str, path: str, route: str, body: bytes | None = None, ctype: str = ""):
        headers = dict(self.auth)
        if ctype:
            headers["Content-Type"] = ctype
        try:
            resp = self.client.request(method, path, body=body, headers=headers)
            data = resp.read()
            status = resp.status_code
            retry_after = resp.get("retry-after") is not None
        except Exception as exc:  # noqa: BLE001 - any transport failure is a failed request, status 0
            self.client.close()
            self.client = self.gen.client()
            self.gen.tally.record(method, route, 0, type(exc).__name__)
            return 0, None
        error = "" if status < 400 else data[:80].decode(errors="replace")
        self.gen.tally.record(method, route, status, error, retry_after)
        if status >= 400:
            return status, None
        try:
            return status, json.loads(data) if data else {}
        except ValueError:
            return status, None

    def upload(self) -> None:
        serial = self.gen.next_serial()
        notes = f"drill-{self.gen.run_id}-{serial}"
        boundary = f"wardrobe-drill-{random.getrandbits(64):016x}"
        fields = {"category": self.rng.choice(CATEGORIES), "notes": notes}
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
            + self.gen.jpeg(serial)
            + b"\r\n"
        ]
        for name, value in fields.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, answer = self.call(
            "POST",
            "/api/v1/items",
            "/api/v1/items [upload]",
            body,
            f"multipart/form-data; boundary={boundary}",
        )
        self.uploads += 1
        if status == 202 and answer and "job" in answer:
            job_id = answer["job"]["id"]
            self.gen.jobs.accepted[job_id] = {
                "user": self.user_id,
                "item": answer.get("item", {}).get("id"),
                "t": round(time.time() - self.gen.tally.started, 1),
                "state": answer["job"].get("state", "queued"),
            }
            if answer.get("item", {}).get("id"):
                self.items.insert(0, answer["item"]["id"])
        else:
            self.gen.jobs.failed_uploads.append({"user": self.user_id, "notes": notes, "status": status})

    def poll_jobs(self) -> None:
        for job_id in self.gen.jobs.pending():
            if self.gen.jobs.accepted[job_id]["user"] != self.user_id:
                continue
            _, job = self.call("GET", f"/api/v1/jobs/{job_id}", "/api/v1/jobs/{id}")
            if job and "state" in job:
                self.gen.jobs.accepted[job_id]["state"] = job["state"]
                if job["state"] == "succeeded":
                    self.gen.jobs.accepted[job_id]["done_t"] = round(time.time() - self.gen.tally.started, 1)

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.30:
            _, page = self.call("GET", "/api/v1/items?limit=20", "/api/v1/items")
            if page and page.get("items"):
                self.items = [i["id"] for i in page["items"]]
        elif roll < 0.55 and self.items:
            self.call("GET", f"/api/v1/items/{self.rng.choice(self.items)}", "/api/v1/items/{id}")
        elif roll < 0.65:
            self.call(
                "GET", f"/api/v1/items?category={self.rng.choice(CATEGORIES)}", "/api/v1/items?category"
            )
        elif roll < 0.72:
            self.call("GET", "/api/v1/me", "/api/v1/me")
        elif roll < 0.78:
            self.call("GET", "/api/v1/capsules?limit=10", "/api/v1/capsules")
        elif roll < 0.86 and self.items:
            change = {"season": self.rng.choice(SEASONS)}
            self.call(
                "PATCH",
                f"/api/v1/items/{self.rng.choice(self.items)}",
                "/api/v1/items/{id}",
                json.dumps(change).encode(),
                "application/json",
            )
        elif roll < 0.86 + self.gen.upload_chance:
            self.upload()
        else:
            self.poll_jobs()

    def run(self) -> None:
        gevent.sleep(self.rng.uniform(0, self.gen.ramp))
        self.call("GET", "/api/v1/me", "/api/v1/me")
        for _ in range(self.gen.first_uploads):
            if self.gen.stopping:
                return
            self.upload()
        while not self.gen.stopping:
            self.step()
            gevent.sleep(self.rng.uniform(1.0, 3.0))


class Generator:
    def __init__(self, args) -> None:
        self.url = args.lb.rstrip("/")
        self.bot_token = args.bot_token
        self.users = args.users
        self.ramp = args.ramp
        self.first_uploads = args.first_uploads
        self.upload_chance = args.upload_chance
        self.run_id = args.run_id or f"{int(time.time())}"
        self.user_base = args.user_base
        self.tally = Tally()
        self.jobs = Jobs()
        self.stopping = False
        self._serial = 0
        self._photo = Image.open(io.BytesIO(photo(4242, PHOTO_SIZE))).convert("RGB")

    def client(self) -> HTTPClient:
        return HTTPClient.from_url(self.url, concurrency=1, connection_timeout=5.0, network_timeout=60.0)

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def jpeg(self, serial: int) -> bytes:
        # Unique pixels per upload so no layer can deduplicate it.
        img = self._photo.copy()
        draw = ImageDraw.Draw(img)
        stamp = serial ^ (int(self.run_id[-6:]) << 20 if self.run_id[-6:].isdigit() else 0)
        for bit in range(40):
            shade = 255 if (stamp >> bit) & 1 else 0
            draw.rectangle((8 + bit * 10, 8, 16 + bit * 10, 16), fill=(shade, 128, 255 - shade))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=85)
        return out.getvalue()

    def grace(self, seconds: float, cap: float) -> float:
        """After traffic stops: poll every still-pending job until all are done, or none has finished for `seconds`
        (the queue is stuck: what is left is lost), or `cap` seconds have passed in all. A backlog that is still
        being worked off (uploads arrived faster than the lab's two worker boxes cut them out) is waited for."""
        start = last_progress = time.monotonic()
        poller = Session(self, self.user_base)
        done = len(self.jobs.accepted) - len(self.jobs.pending())
        for _ in range(int(cap / JOB_POLL_SECONDS) + 1):
            pending = self.jobs.pending()
            now = time.monotonic()
            if len(self.jobs.accepted) - len(pending) > done:
                done, last_progress = len(self.jobs.accepted) - len(pending), now
            if not pending or now - last_progress > seconds or now - start > cap:
                break
            for job_id in pending:
                user = self.jobs.accepted[job_id]["user"]
                poller.auth = {
                    "Authorization": "tma "
                    + sign_init_data(self.bot_token, {"id": user, "first_name": "Drill"})
                }
                _, job = poller.call("GET", f"/api/v1/jobs/{job_id}", "/api/v1/jobs/{id} [grace]")
                if job and "state" in job:
                    self.jobs.accepted[job_id]["state"] = job["state"]
            gevent.sleep(JOB_POLL_SECONDS)
        return time.monotonic() - start

    def half_created(self) -> list[dict]:
        """Uploads that got an error but whose item exists anyway (its notes carry the upload's unique token)."""
        found = []
        checker = Session(self, self.user_base)
        for failed in self.jobs.failed_uploads[:200]:
            user = failed["user"]
            checker.auth = {
                "Authorization": "tma " + sign_init_data(self.bot_token, {"id": user, "first_name": "Drill"})
            }
            _, page = checker.call("GET", "/api/v1/items?limit=100", "/api/v1/items [check]")
            for item in (page or {}).get("items", []):
                if item.get("notes") == failed["notes"]:
                    found.append({**failed, "item": item.get("id")})
        return found


def summary(gen: Generator, seconds: float, grace_used: float, half: list[dict]) -> dict:
    tally, jobs = gen.tally, gen.jobs
    by_method: Counter = Counter()
    failed_by_method: Counter = Counter()
    for (method, _route, status), count in tally.by_status.items():
        by_method[method] += count
        if not 0 < status < 400:
            failed_by_method[method] += count
    states = Counter(v["state"] for v in jobs.accepted.values())
    return {
        "users": gen.users,
        "seconds": round(seconds, 1),
        "grace_seconds": round(grace_used, 1),
        "requests": sum(by_method.values()),
        "requests_by_method": dict(by_method),
        "failed_by_method": dict(failed_by_method),
        "failed": sum(failed_by_method.values()),
        "failed_gets": failed_by_method.get("GET", 0),
        "by_status": [
            {"method": m, "route": r, "status": s, "count": c}
            for (m, r, s), c in sorted(tally.by_status.items())
        ],
        "failures": [
            {"method": m, "route": r, "status": s, "count": c}
            for (m, r, s), c in sorted(tally.failed.items())
        ],
        "errors": dict(tally.errors.most_common(20)),
        "timeline_failures": sorted(
            [{"second": s, "method": m, "count": c} for (s, m, ok), c in tally.timeline.items() if not ok],
            key=lambda x: x["second"],
        ),
        "responses_503": {"with_retry_after": tally.retry_after_503, "without": tally.plain_503},
        "jobs_accepted": len(jobs.accepted),
        "jobs_completed": states.get("succeeded", 0),
        "jobs_failed": states.get("failed", 0),
        "jobs_lost": len(jobs.accepted) - states.get("succeeded", 0),
        "jobs_lost_ids": [j for j, v in jobs.accepted.items() if v["state"] != "succeeded"][:50],
        "uploads_refused": len(jobs.failed_uploads),
        "uploads_refused_by_status": dict(Counter(str(f["status"]) for f in jobs.failed_uploads)),
        "half_created_items": half,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lb", required=True)
    parser.add_argument("--bot-token", required=True)
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="traffic duration (stops early on SIGTERM)"
    )
    parser.add_argument("--ramp", type=float, default=10.0, help="users start spread over this many seconds")
    parser.add_argument("--first-uploads", type=int, default=1, help="uploads each user makes on arrival")
    parser.add_argument("--upload-chance", type=float, default=0.03, help="chance a step is an upload")
    parser.add_argument(
        "--grace",
        type=float,
        default=180.0,
        help="at the end, seconds without a job finishing before what is pending counts as lost",
    )
    parser.add_argument(
        "--grace-cap", type=float, default=1200.0, help="at the end, seconds to wait for pending jobs at most"
    )
    parser.add_argument("--user-base", type=int, default=7_100_000_000)
    parser.add_argument("--run-id", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not allowed(args.lb):
        sys.exit(f"refusing {args.lb}: traffic goes to loopback and 10.213.7.0/24 only")

    gen = Generator(args)
    gevent.signal_handler(signal.SIGTERM, lambda: setattr(gen, "stopping", True))
    sessions = [Session(gen, args.user_base + i) for i in range(args.users)]
    greenlets = [gevent.spawn(s.run) for s in sessions]
    started = time.monotonic()
    # Bounded: the traffic window, then at most 30 s for in-flight requests to end.
    while not gen.stopping and time.monotonic() - started < args.seconds:
        gevent.sleep(0.5)
    gen.stopping = True
    gevent.joinall(greenlets, timeout=30)
    gevent.killall([g for g in greenlets if not g.dead], block=True, timeout=5)
    seconds = time.monotonic() - started
    # The grace polls and the half-created check are verification, not the drill's traffic: counted apart.
    traffic, gen.tally = gen.tally, Tally()
    grace_used = gen.grace(args.grace, args.grace_cap)
    half = gen.half_created()
    verification, gen.tally = gen.tally, traffic
    result = summary(gen, seconds, grace_used, half)
    result["verification"] = {
        "requests": sum(verification.by_status.values()),
        "failed": sum(verification.failed.values()),
        "errors": dict(verification.errors.most_common(10)),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"loadgen: {result['requests']} requests, {result['failed']} failed ({result['failed_gets']} GETs), "
        f"jobs {result['jobs_accepted']} accepted / {result['jobs_completed']} completed / {result['jobs_lost']} lost"
    )


if __name__ == "__main__":
    main()
