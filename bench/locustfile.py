"""A Mini App session as Locust users: open the app, browse, and now and then upload, edit or ask for a capsule.

Each simulated user is a distinct seeded Telegram user with its own signed init data. Requests are named by
route template so statistics group by endpoint; "JOB" entries time upload→ready and capsule→ready as the user
waits for them (polled once a second, as the Mini App does).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import time
from urllib.parse import quote

import gevent
from locust import FastHttpUser, between, events, task
from PIL import Image, ImageDraw

from bench.seed import USER_BASE, photo
from wardrobe.web.auth import sign_init_data

CATEGORIES = ["top", "bottom", "dress", "outerwear", "shoes", "bag", "accessory"]
SEASONS = ["summer", "winter", "demi-season", "all-season"]
OCCASIONS = ["everyday", "work", "date", "party", "travel"]
BRAND_PREFIXES = ["za", "ni", "un", "ma", "ad", "le", "co", "gu", "pr", "h&"]
JOB_POLL_SECONDS = 1.0
# (width, height, quality): phone photos of 100-400 KB once noise is added.
PHOTO_SHAPES = [(900, 1200, 85), (1080, 1350, 88), (1200, 1600, 86), (768, 1024, 92), (1000, 1000, 90)]

_photos: list[Image.Image] = []
_uploads = itertools.count()
_sessions = itertools.count()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("wardrobe bench")
    group.add_argument("--bot-token", default="", help="the API's Telegram bot token")
    group.add_argument("--user-base", type=int, default=USER_BASE, help="first seeded Telegram user id")
    group.add_argument("--population", type=int, default=20_000, help="seeded users to draw sessions from")
    group.add_argument(
        "--upload-every", type=float, default=600.0, help="mean seconds between one user's uploads"
    )
    group.add_argument(
        "--capsule-every", type=float, default=900.0, help="mean seconds between capsule requests"
    )
    group.add_argument(
        "--job-timeout", type=float, default=120.0, help="give up waiting for a job after this"
    )
    group.add_argument(
        "--samples-dir", default="", help="write every request's timing here (one file per process)"
    )


@events.init.add_listener
def _prepare(environment, **_kwargs) -> None:
    if environment.parsed_options is not None:
        _options_of["samples_dir"] = environment.parsed_options.samples_dir
    # Decoded once per process; each upload then gets unique pixels so no layer can deduplicate it.
    for index, (width, height, _quality) in enumerate(PHOTO_SHAPES):
        _photos.append(Image.open(io.BytesIO(photo(500 + index, (width, height)))).convert("RGB"))


class SampleLog:
    """Every request as a line (start, type, name, ms, ok, error): the driver computes exact percentiles from
    these over exactly the measured window, and merges Locust processes without merging histograms."""

    def __init__(self) -> None:
        self._file = None

    def record(self, request_type, name, response_time, exception=None, start_time=None, **_kwargs) -> None:
        if self._file is None:
            directory = _options_of.get("samples_dir")
            if not directory:
                return
            self._file = open(os.path.join(directory, f"samples-{os.getpid()}.tsv"), "a", buffering=1 << 16)
        error = "" if exception is None else str(exception).replace("\t", " ").replace("\n", " ")[:160]
        started = start_time if start_time is not None else time.time() - response_time / 1000
        self._file.write(
            f"{started:.3f}\t{request_type}\t{name}\t{response_time:.1f}\t{int(exception is None)}\t{error}\n"
        )

    def close(self, **_kwargs) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_options_of: dict[str, str] = {}
_samples = SampleLog()
events.request.add_listener(_samples.record)
events.test_stop.add_listener(_samples.close)
events.quitting.add_listener(_samples.close)


def unique_jpeg(rng: random.Random) -> bytes:
    index = rng.randrange(len(_photos))
    img = _photos[index].copy()
    serial = next(_uploads)
    draw = ImageDraw.Draw(img)
    for bit in range(32):
        shade = 255 if (serial >> bit) & 1 else 0
        draw.rectangle((8 + bit * 10, 8, 16 + bit * 10, 16), fill=(shade, rng.randrange(256), 255 - shade))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=PHOTO_SHAPES[index][2])
    return out.getvalue()


def multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    boundary = f"wardrobe-bench-{random.getrandbits(64):016x}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
    ]
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class MiniAppUser(FastHttpUser):
    wait_time = between(1, 3)
    network_timeout = 60.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        runner = self.environment.runner
        index = getattr(runner, "worker_index", 0) or 0
        processes = max(1, getattr(options, "processes", 1) or 1)
        # Distinct users across Locust processes: process i takes every n-th seeded id.
        offset = (next(_sessions) * processes + index) % options.population
        self.user_id = options.user_base + offset
        self.rng = random.Random(self.user_id)
        init_data = sign_init_data(options.bot_token, {"id": self.user_id, "first_name": "Bench"})
        self.auth = {"Authorization": f"tma {init_data}"}
        self.items: list[dict] = []
        self.capsules: list[str] = []
        self.next_cursor: str | None = None
        self.seen_images: set[str] = set()
        self.open_app()

    # -- what a session does --------------------------------------------------------------------------------

    def open_app(self) -> None:
        self.get("/api/v1/me", "/api/v1/me")
        page = self.get("/api/v1/items?limit=20", "/api/v1/items")
        if page:
            self.items = page["items"] or self.items
            self.next_cursor = page["next_cursor"]
            self.thumbnails(self.items[:6])
        capsules = self.get("/api/v1/capsules?limit=10", "/api/v1/capsules")
        if capsules:
            self.capsules = [c["id"] for c in capsules["items"]]

    @task(12)
    def view_item(self) -> None:
        if not self.items:
            return
        item = self.rng.choice(self.items)
        found = self.get(f"/api/v1/items/{item['id']}", "/api/v1/items/{id}")
        if found:
            self.image(found.get("image_url"))

    @task(6)
    def next_page(self) -> None:
        if not self.next_cursor:
            self.next_cursor = None
            page = self.get("/api/v1/items?limit=20", "/api/v1/items")
        else:
            page = self.get(
                f"/api/v1/items?limit=20&cursor={quote(self.next_cursor)}", "/api/v1/items?cursor"
            )
        if page:
            self.items = page["items"] or self.items
            self.next_cursor = page["next_cursor"]
            self.thumbnails(page["items"][:4])

    @task(5)
    def filter_items(self) -> None:
        if self.rng.random() < 0.6:
            url, name = f"/api/v1/items?category={self.rng.choice(CATEGORIES)}", "/api/v1/items?category"
        else:
            url, name = f"/api/v1/items?season={self.rng.choice(SEASONS)}", "/api/v1/items?season"
        page = self.get(url, name)
        if page and page["items"]:
            self.thumbnails(page["items"][:4])

    @task(3)
    def search_brand(self) -> None:
        self.get(f"/api/v1/brands?q={quote(self.rng.choice(BRAND_PREFIXES))}", "/api/v1/brands")

    @task(3)
    def browse_capsules(self) -> None:
        if self.capsules and self.rng.random() < 0.7:
            self.get(f"/api/v1/capsules/{self.rng.choice(self.capsules)}", "/api/v1/capsules/{id}")
        else:
            self.get("/api/v1/capsules?limit=10", "/api/v1/capsules")

    @task(2)
    def edit_item(self) -> None:
        if not self.items:
            return
        item = self.rng.choice(self.items)
        change = self.rng.choice(
            [
                {"notes": f"worn {self.rng.randrange(1, 50)} times"},
                {"season": self.rng.choice(SEASONS)},
                {"formality": self.rng.randrange(1, 6)},
            ]
        )
        self.send("PATCH", f"/api/v1/items/{item['id']}", "/api/v1/items/{id}", change)

    @task(1)
    def edit_profile(self) -> None:
        self.send("PATCH", "/api/v1/me", "/api/v1/me", {"sizes": {"top": self.rng.choice(["S", "M", "L"])}})

    @task(1)
    def reopen_app(self) -> None:
        self.open_app()

    @task(1)
    def act(self) -> None:
        # Uploads and capsules are rare per user but long: their chance per step is set from the mean interval
        # (about one step per 2 s of think time plus response time).
        options = self.environment.parsed_options
        step_seconds = 2.0 * 34  # this task is 1 of 34 weight units
        if self.rng.random() < step_seconds / max(options.upload_every, 1e-3):
            self.upload()
        if self.rng.random() < step_seconds / max(options.capsule_every, 1e-3):
            self.request_capsule()

    def upload(self) -> None:
        body, ctype = multipart({"category": self.rng.choice(CATEGORIES)}, unique_jpeg(self.rng))
        started = time.monotonic()
        answer = self.send("POST", "/api/v1/items", "/api/v1/items [upload]", body=body, content_type=ctype)
        if answer:
            job = self.wait_for_job(answer["job"], "upload→ready", started)
            if job and job.get("state") == "succeeded":
                self.items.insert(0, answer["item"])

    def request_capsule(self) -> None:
        started = time.monotonic()
        answer = self.send(
            "POST", "/api/v1/capsules", "/api/v1/capsules", {"occasion": self.rng.choice(OCCASIONS)}
        )
        if answer:
            job = self.wait_for_job(answer["job"], "capsule→ready", started)
            if job and job.get("state") == "succeeded":
                capsule_id = answer["capsule"]["id"]
                self.capsules.insert(0, capsule_id)
                self.get(f"/api/v1/capsules/{capsule_id}", "/api/v1/capsules/{id}")

    def wait_for_job(self, job: dict, name: str, started: float) -> dict | None:
        deadline = started + self.environment.parsed_options.job_timeout
        error: Exception | None = None
        while job.get("state") not in ("succeeded", "failed"):
            if time.monotonic() > deadline:
                error = TimeoutError(f"job still {job.get('state')} after the deadline")
                break
            # As the Mini App does: once a second, or when the job says asking again is worth it.
            gevent.sleep(max(JOB_POLL_SECONDS, job.get("poll_after_seconds") or 0))
            job = self.get(f"/api/v1/jobs/{job['id']}", "/api/v1/jobs/{id}") or job
        if error is None and job.get("state") == "failed":
            error = RuntimeError(f"job failed: {str(job.get('error'))[:80]}")
        self.environment.events.request.fire(
            request_type="JOB",
            name=name,
            response_time=(time.monotonic() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )
        return job

    # -- HTTP helpers ---------------------------------------------------------------------------------------

    def thumbnails(self, items: list[dict]) -> None:
        for item in items:
            self.image(item.get("cutout_url") or item.get("image_url"), key=item["id"])

    def image(self, url: str | None, key: str | None = None) -> None:
        # The browser keeps immutable images: each item's picture is fetched once per session.
        if not url or (key or url) in self.seen_images:
            return
        self.seen_images.add(key or url)
        with self.client.get(url, name="/images/{name}", catch_response=True) as resp:
            if resp.status_code not in (200, 304):
                resp.failure(f"HTTP {resp.status_code}")

    def get(self, url: str, name: str) -> dict | None:
        with self.client.get(url, name=name, headers=self.auth, catch_response=True) as resp:
            return self._json(resp)

    def send(
        self,
        method: str,
        url: str,
        name: str,
        payload: dict | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> dict | None:
        data = json.dumps(payload).encode() if payload is not None else body
        headers = {**self.auth, "Content-Type": content_type}
        with self.client.request(
            method, url, name=name, data=data, headers=headers, catch_response=True
        ) as resp:
            return self._json(resp)

    @staticmethod
    def _json(resp) -> dict | None:
        if resp.status_code >= 400 or resp.status_code == 0:
            detail = ""
            try:
                detail = (resp.json() or {}).get("title", "")
            except Exception:
                detail = (resp.text or "")[:60]
            resp.failure(f"HTTP {resp.status_code} {detail}".strip())
            return None
        try:
            return resp.json()
        except Exception:
            resp.failure("response is not JSON")
            return None
