"""A Mini App session mix as Locust users: returning users who mostly browse, and onboarding users who sign up and
add their wardrobe in one visit.

- MiniAppUser, a returning user (the bulk): a distinct seeded Telegram user with its own signed init data and a
  wardrobe of seeded items. It opens the app, browses, now and then edits an item (half of the edits set its brand,
  typed with autocomplete), uploads a photo or asks for a capsule.
- OnboardingUser (`--onboarding-share`, default 1 % of the users, at least one when above 0): every visit is a new
  Telegram account the database has never seen. It opens the empty app, uploads 10-20 photos one after another
  (`--photos-per-visit`, 1-3 s apart; each job polled from its own upload on), waits until every job is done or
  given up on (`--job-timeout`), looks at its wardrobe, sets the brand of a few new items and leaves; the same
  Locust user then comes back as the next new account, so sign-ups go on at a steady rate all run long.

Requests are named by route template so statistics group by endpoint; "JOB" entries time upload→ready and
capsule→ready as the user waits for them, polled as the Mini App's `waitJob` polls.
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
from gevent.pool import Group
from locust import FastHttpUser, between, events, task
from PIL import Image, ImageDraw

from bench.mix import onboarding_floor, onboarding_users, photo_range, share
from bench.seed import USER_BASE, photo
from wardrobe.web.auth import sign_init_data

CATEGORIES = ["top", "bottom", "dress", "outerwear", "shoes", "bag", "accessory"]
SEASONS = ["summer", "winter", "demi-season", "all-season"]
OCCASIONS = ["everyday", "work", "date", "party", "travel"]
BRAND_PREFIXES = ["za", "ni", "un", "ma", "ad", "le", "co", "gu", "pr", "h&"]
# Brands people type into an item's brand field: everyday names from the bundled catalogue
# (src/wardrobe/data/brands.txt), mostly short enough that typing one out sends 2-5 suggestion queries.
BRANDS = [
    "Zara", "H&M", "Uniqlo", "Mango", "Nike", "Adidas", "Levi's", "COS", "Gap", "Puma", "Vans", "Bershka",
    "Reserved", "Converse", "Lacoste", "Guess", "Diesel", "Esprit", "Pull&Bear", "Oysho", "Arket", "Monki",
    "Weekday", "Topshop", "ASOS", "Asics", "Reebok", "Wrangler", "Superdry", "Hugo Boss", "Columbia", "Patagonia",
    "Carhartt", "Gucci", "Prada", "Ecco", "Geox", "Crocs", "UGG", "Fila", "Kappa", "Lee", "Sandro", "Desigual",
    "Massimo Dutti", "Calvin Klein", "New Balance",
]  # fmt: skip
BRAND_EDIT_SHARE = 0.5  # of a returning user's item edits
# Typing a brand, as the Mini App's suggestBrands sees it: a query only for 2 characters or more (trimmed), sent
# once 250 ms pass without a keystroke.
KEYSTROKE_GAP_S = (0.15, 0.4)
DEBOUNCE_S = 0.25
MIN_QUERY_CHARS = 2
# The Mini App's waitJob: first poll after 600 ms, then 1.3x longer each time up to 2.5 s, never sooner than the
# job's poll_after_seconds.
JOB_POLL_FIRST_S = 0.6
JOB_POLL_GROWTH = 1.3
JOB_POLL_MAX_S = 2.5
THINK_S = (1.0, 3.0)  # between one user's actions (the users' wait_time too)
EDITS_PER_VISIT = (2, 4)  # new items an onboarding user sets the brand of
# Onboarding accounts: Telegram ids above what bench/seed.py counts as the seeded population ([user_base,
# user_base + 10^8): a user there would make the next run reseed), unique across runs (the run's start, in tenths
# of a second since 2025, taken when Locust imports this file: before it forks its --processes workers) and across
# the Locust processes of a run (the worker index); within a process, one id per visit.
VISIT_BITS = 20  # visits per process and run
PROCESS_BITS = 6  # Locust processes per run
RUN_EPOCH = 1_735_689_600  # 2025-01-01 UTC
RUN_TOKEN = max(0, int(time.time() * 10) - RUN_EPOCH * 10)
# (width, height, quality): phone photos of 100-400 KB once noise is added.
PHOTO_SHAPES = [(900, 1200, 85), (1080, 1350, 88), (1200, 1600, 86), (768, 1024, 92), (1000, 1000, 90)]

_photos: list[Image.Image] = []
_uploads = itertools.count()
_sessions = itertools.count()
_visits = itertools.count()


def class_weights(onboarding_share: float, users: int | None) -> tuple[int, int]:
    """(returning, onboarding) Locust weights. With the user count known, the onboarding count itself: Locust's
    dispatcher gives exactly weight-many users of each class once the weights' sum is spawned, in one process or
    across --processes workers alike (the master dispatches). Rounded up, so any share above 0 has a user."""
    if onboarding_share <= 0:
        return 1, 0
    if users and users > 0:
        onboarding = onboarding_users(users, onboarding_share)
        return users - onboarding, onboarding
    per_mille = min(1000, max(1, round(onboarding_share * 1000)))  # the web UI picks the users later
    return 1000 - per_mille, per_mille


def onboarding_id(floor: int, run_token: int, process: int, visit: int) -> int:
    """A Telegram id no earlier visit, process or run has used (ids are signed 64-bit in Postgres and the API)."""
    if not 0 <= process < 1 << PROCESS_BITS:
        raise ValueError(f"Locust process index {process} outside 0..{(1 << PROCESS_BITS) - 1}")
    if not 0 <= visit < 1 << VISIT_BITS:
        raise ValueError(f"visit {visit}: more than {1 << VISIT_BITS} in one process")
    user_id = floor + ((((run_token << PROCESS_BITS) | process) << VISIT_BITS) | visit)
    if user_id >= 1 << 63:
        raise ValueError("onboarding id beyond a signed 64-bit integer")
    return user_id


def typing_plan(name: str, rng: random.Random) -> list[tuple[float | None, str | None]]:
    """Per keystroke of `name`: the pause before the next one (None after the last) and the query the Mini App
    sends for it (None unless the pause lasts the debounce and the trimmed text has 2 characters or more)."""
    plan: list[tuple[float | None, str | None]] = []
    for typed in range(1, len(name) + 1):
        gap = rng.uniform(*KEYSTROKE_GAP_S) if typed < len(name) else None
        text = name[:typed].strip()
        fires = (gap is None or gap >= DEBOUNCE_S) and len(text) >= MIN_QUERY_CHARS
        plan.append((gap, text if fires else None))
    return plan


def next_poll(delay: float, poll_after: float | None) -> tuple[float, float]:
    """waitJob's schedule: (seconds until this poll, the delay after it)."""
    return max(delay, poll_after or 0.0), min(delay * JOB_POLL_GROWTH, JOB_POLL_MAX_S)


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("wardrobe bench")
    group.add_argument("--bot-token", default="", help="the API's Telegram bot token")
    group.add_argument("--user-base", type=int, default=USER_BASE, help="first seeded Telegram user id")
    group.add_argument("--population", type=int, default=20_000, help="seeded users to draw sessions from")
    group.add_argument(
        "--upload-every", type=float, default=600.0, help="mean seconds between one returning user's uploads"
    )
    group.add_argument(
        "--capsule-every", type=float, default=900.0, help="mean seconds between capsule requests"
    )
    group.add_argument(
        "--job-timeout", type=float, default=120.0, help="give up waiting for a job after this"
    )
    group.add_argument(
        "--onboarding-share",
        type=share,
        default=0.01,
        help="fraction of the users that are onboarding users (rounded up; 0: none)",
    )
    group.add_argument(
        "--photos-per-visit",
        type=photo_range,
        default=(10, 20),
        help="photos an onboarding user uploads in a visit, N or N-M (default 10-20)",
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


@events.init.add_listener
def _mix(environment, **_kwargs) -> None:
    # Fires in every process before any user is dispatched; the weights matter where dispatching happens (the one
    # process, or the master of --processes).
    options = environment.parsed_options
    classes = environment.user_classes
    if options is None or MiniAppUser not in classes or OnboardingUser not in classes:
        return  # another locustfile importing this one for its listeners, or a class picked with its name
    MiniAppUser.weight, OnboardingUser.weight = class_weights(options.onboarding_share, options.num_users)
    classes[:] = [c for c in classes if c.weight > 0]


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


class WardrobeUser(FastHttpUser):
    """What both kinds of user share: the Mini App's requests, job waits and brand autocomplete."""

    abstract = True
    wait_time = between(*THINK_S)
    network_timeout = 60.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        # Job polls and brand queries the user does not wait on: killed with the user.
        self.background = Group()
        self.items: list[dict] = []
        self.capsules: list[str] = []
        self.next_cursor: str | None = None
        self.seen_images: set[str] = set()

    def on_stop(self) -> None:
        self.background.kill(block=False)

    def sign_in(self, user_id: int) -> None:
        self.user_id = user_id
        self.rng = random.Random(user_id)
        init_data = sign_init_data(
            self.environment.parsed_options.bot_token, {"id": user_id, "first_name": "Bench"}
        )
        self.auth = {"Authorization": f"tma {init_data}"}

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

    def think(self) -> None:
        gevent.sleep(self.rng.uniform(*THINK_S))

    def edit_brand(self, item_id: str) -> None:
        """Types a brand into the item's brand field a keystroke at a time, the Mini App asking for suggestions
        where the typing pauses (each query in the background, as fetch does), then saves the item."""
        name = self.rng.choice(BRANDS)
        for gap, query in typing_plan(name, self.rng):
            if query is None:
                gevent.sleep(gap or 0.0)
                continue
            gevent.sleep(DEBOUNCE_S)
            if gap is None:
                self.suggest(query)  # the last one: the user reads the suggestions
            else:
                self.background.spawn(self.suggest, query)
                gevent.sleep(gap - DEBOUNCE_S)
        gevent.sleep(self.rng.uniform(0.5, 1.5))  # picks the brand, presses Save
        self.send("PATCH", f"/api/v1/items/{item_id}", "/api/v1/items/{id}", {"brand": name})

    def suggest(self, query: str) -> None:
        self.get(f"/api/v1/brands?q={quote(query, safe='')}", "/api/v1/brands")

    def wait_for_job(self, job: dict, name: str, started: float) -> dict | None:
        """Polls a job as the Mini App's waitJob does until it is done or --job-timeout after `started`; records the
        wait as a JOB event (a job still queued or running at the deadline is a wait report.py counts apart)."""
        deadline = started + self.environment.parsed_options.job_timeout
        delay = JOB_POLL_FIRST_S
        error: Exception | None = None
        while job.get("state") not in ("succeeded", "failed"):
            now = time.monotonic()
            if now >= deadline:
                error = TimeoutError(f"job still {job.get('state')} after the deadline")
                break
            pause, delay = next_poll(delay, job.get("poll_after_seconds"))
            gevent.sleep(min(pause, deadline - now))
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


class MiniAppUser(WardrobeUser):
    """A returning user: a seeded account with a full wardrobe, mostly browsing."""

    # The classes' weights are set from --onboarding-share when Locust starts (_mix); these (the default share) only
    # keep both classes in the Environment until then, which drops classes of weight 0 before init.
    weight = 49

    def on_start(self) -> None:
        super().on_start()
        options = self.environment.parsed_options
        runner = self.environment.runner
        index = getattr(runner, "worker_index", 0) or 0
        processes = max(1, getattr(options, "processes", 1) or 1)
        # Distinct users across Locust processes: process i takes every n-th seeded id.
        offset = (next(_sessions) * processes + index) % options.population
        self.sign_in(options.user_base + offset)
        self.open_app()

    # -- what a session does --------------------------------------------------------------------------------

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
        if self.rng.random() < BRAND_EDIT_SHARE:
            self.edit_brand(item["id"])
            return
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


class OnboardingUser(WardrobeUser):
    """A new user adding a wardrobe: each visit (task) is a new Telegram account; between visits, think time."""

    weight = 1  # see MiniAppUser.weight

    @task
    def visit(self) -> None:
        options = self.environment.parsed_options
        index = getattr(self.environment.runner, "worker_index", 0) or 0
        floor = onboarding_floor(options.user_base, options.population)
        self.sign_in(onboarding_id(floor, RUN_TOKEN, index, next(_visits)))
        self.items, self.capsules, self.next_cursor, self.seen_images = [], [], None, set()
        self.open_app()  # an empty wardrobe
        # Photo after photo: the upload is what the user waits for; each job is polled from its own upload on.
        added: list[dict] = []
        for number in range(self.rng.randint(*options.photos_per_visit)):
            if number:
                self.think()
            body, ctype = multipart({}, unique_jpeg(self.rng))  # the Mini App sends the photo alone
            started = time.monotonic()
            answer = self.send(
                "POST", "/api/v1/items", "/api/v1/items [upload]", body=body, content_type=ctype
            )
            if answer:
                added.append(answer["item"])
                self.background.spawn(self.wait_for_job, answer["job"], "upload→ready", started)
        self.background.join()  # every job ready, failed or given up on at --job-timeout
        page = self.get("/api/v1/items?limit=20", "/api/v1/items")
        if page:
            self.items = page["items"]
            self.thumbnails(self.items[:6])
        edits = min(len(added), self.rng.randint(*EDITS_PER_VISIT))
        for item in self.rng.sample(added, edits):
            self.think()
            found = self.get(f"/api/v1/items/{item['id']}", "/api/v1/items/{id}")
            if found:
                self.image(found.get("cutout_url") or found.get("image_url"))
            self.edit_brand(item["id"])
