"""The Mini App's page in a real browser (the system's headless Chromium, driven by Playwright) against the real
stack on loopback: gunicorn, both consumers, a private redis-server and a local OpenAI stand-in.

A person signs in through the URL fragment as Telegram does it, adds a photo and sees its cutout, reloads and sees
the wardrobe at once from this device's copy while the server answers 304, and a second person on the same browser
sees none of it. Screenshots at phone and desktop width go to tests/artifacts/.
"""

from __future__ import annotations

import io
import re
import shutil
import signal
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
import requests
from conftest import BOT_TOKEN, _user_ids, settle_unfinished_jobs, stack_env
from PIL import Image, ImageDraw
from processes import ROOT, RedisServer, gunicorn, worker
from test_jobs import shirt_photo

from tests.fakes.openai_server import FakeOpenAI
from wardrobe.cli import mini_app_link
from wardrobe.web.auth import InitDataValidator, sign_init_data
from wardrobe.web.resources.static import HASHED_NAME, STATIC_DIR, content_hash

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
KEYS = ["sk-miniapp-key"]
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 800}


# --- the page as files: no browser needed -----------------------------------------------------------------------


def test_every_asset_is_named_by_its_content_and_index_html_names_only_those():
    assets = [p for p in STATIC_DIR.iterdir() if p.name != "index.html"]
    assert assets
    for path in assets:
        match = HASHED_NAME.match(path.name)
        assert match, f"{path.name}: run scripts/hash_static.py"
        assert match.group(1) == content_hash(path.read_bytes()), f"{path.name}: run scripts/hash_static.py"
    html = (STATIC_DIR / "index.html").read_text()
    referenced = set(re.findall(r'"/app/([^"]+)"', html))
    assert referenced == {p.name for p in assets}


def test_index_is_revalidated_and_assets_are_cached_for_good(client):
    index = client.simulate_get("/app/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert index.headers["cache-control"] == "no-cache"
    assert "script-src 'self' https://telegram.org" in index.headers["content-security-policy"]
    again = client.simulate_get("/app/", headers={"If-None-Match": index.headers["etag"]})
    assert again.status_code == 304 and not again.content
    asset = re.findall(r'src="/app/([^"]+\.js)"', index.text)[0]
    script = client.simulate_get(f"/app/{asset}")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert (
        client.simulate_get(f"/app/{asset}", headers={"If-None-Match": script.headers["etag"]}).status_code
        == 304
    )
    assert client.simulate_get("/api/v1/items").status_code == 401  # the API still needs a sign-in
    for missing in ("/app/app.0000000000.js", "/app/..%2Fresources%2Fstatic.py", "/app/static.py"):
        assert client.simulate_get(missing).status_code == 404


def test_the_dev_link_signs_in_as_the_user_it_names():
    link = mini_app_link(
        "http://127.0.0.1:8000", sign_init_data(BOT_TOKEN, {"id": 4242, "first_name": "A B+C"})
    )
    fragment = urllib.parse.urlsplit(link).fragment
    init_data = urllib.parse.parse_qs(fragment)["tgWebAppData"][0]
    user = InitDataValidator(BOT_TOKEN, 3600).validate(init_data)
    assert link.startswith("http://127.0.0.1:8000/app/#tgWebAppData=")
    assert (user.id, user.display_name) == (4242, "A B+C")


# --- the real stack and a real browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("miniapp")
    settle_unfinished_jobs()
    redis = RedisServer(tmp / "redis.log").start()
    fake = FakeOpenAI(keys=KEYS, latency=0.1).start()
    # A second capsule within the minute gets a real 429.
    env = stack_env(tmp, redis.url, fake.url, KEYS, WARDROBE_RATE_LIMIT_CAPSULE="1/60")
    procs = {
        "images": worker("images", env, tmp / "images.log"),
        "ai": worker("ai", env, tmp / "ai.log", "--no-periodic"),
    }
    api, base = gunicorn(env, tmp / "gunicorn.log", workers=1)
    procs["api"] = api
    yield {"base": base, "procs": procs}
    for proc in procs.values():
        proc.stop(signal.SIGINT)
    fake.stop()
    redis.stop()


@pytest.fixture(scope="module")
def browser(stack):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("the chromium package is not installed")
    profile = tempfile.mkdtemp(prefix="wardrobe-chromium-")
    with sync_api.sync_playwright() as playwright:
        # One profile for the whole module, like one phone: the second user shares the first one's localStorage.
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            viewport=DESKTOP,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        context.set_default_timeout(30_000)
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def new_user() -> tuple[int, str]:
    user_id = next(_user_ids)
    return user_id, sign_init_data(BOT_TOKEN, {"id": user_id, "first_name": f"Person {user_id % 1000}"})


@pytest.fixture(scope="module")
def first(stack):
    return new_user()


def open_app(context, stack, init_data: str, viewport=DESKTOP):
    page = context.new_page()
    page.set_viewport_size(viewport)
    page.goto(mini_app_link(stack["base"], init_data))
    return page


def logs(stack) -> str:
    return "\n".join(f"--- {n}\n{p.output()[-2500:]}" for n, p in stack["procs"].items())


def cards(page):
    return page.locator("#grid .card")


@pytest.mark.slow
def test_a_person_adds_a_photo_and_sees_it_cut_out_then_corrects_it(browser, stack, first):
    page = open_app(browser, stack, first[1])
    page.get_by_text("Nothing here yet").wait_for()
    assert not page.locator(
        "script[src*='telegram.org']"
    ).count()  # not inside Telegram: its script is not loaded
    page.get_by_role("button", name="Add item").click()
    page.locator("#pick-file").set_input_files(
        files=[{"name": "shirt.jpg", "mimeType": "image/jpeg", "buffer": shirt_photo()}]
    )
    heading = page.get_by_role("heading", name="Check what we found")
    try:
        heading.wait_for(timeout=120_000)
    except Exception:
        raise AssertionError(f"{page.locator('#upload-status').inner_text()}\n{logs(stack)}") from None
    hero = page.locator("#item-img")
    pixels = hero.evaluate(
        """async (img) => {
            await img.decode();
            const canvas = document.createElement("canvas");
            canvas.width = img.naturalWidth;
            canvas.height = img.naturalHeight;
            const context = canvas.getContext("2d");
            context.drawImage(img, 0, 0);
            const alpha = (x, y) => context.getImageData(x, y, 1, 1).data[3];
            return {src: img.currentSrc, width: img.naturalWidth, corner: alpha(3, 3),
                    middle: alpha(img.naturalWidth >> 1, img.naturalHeight >> 1)};
        }"""
    )
    assert pixels["src"].endswith(".png") and pixels["width"] > 100
    assert pixels["corner"] < 30 and pixels["middle"] > 200  # background gone, shirt kept
    assert "Ready" in page.locator("#item-status").inner_text()

    page.locator("#item-form [name=season]").select_option("summer")
    page.locator("#item-form [name=brand]").fill("Uniqlo")
    page.get_by_role("button", name="Save changes").click()
    page.get_by_text("Saved", exact=True).wait_for()
    page.get_by_role("button", name="Back").first.click()
    card = cards(page).first
    card.get_by_text("Uniqlo · Summer").wait_for()
    page.close()


@pytest.mark.slow
def test_a_big_photo_is_made_smaller_in_the_browser_before_upload(browser, stack):
    _, init_data = new_user()
    page = open_app(browser, stack, init_data)
    page.get_by_role("button", name="Add item").click()
    posted = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith("/api/v1/items") and posted.append(r))
    page.locator("#pick-file").set_input_files(
        files=[{"name": "big.jpg", "mimeType": "image/jpeg", "buffer": garment("dress", (40, 120, 80), 3000)}]
    )
    page.get_by_role("heading", name="Check what we found").wait_for(timeout=120_000)
    original = page.evaluate(
        """async () => {
            const r = await fetch("/api/v1/items?limit=1", {headers: {Authorization: "tma " +
                new URLSearchParams(location.hash.slice(1)).get("tgWebAppData")}, cache: "no-store"});
            const img = new Image();
            img.src = (await r.json()).items[0].image_url;
            await img.decode();
            return [img.naturalWidth, img.naturalHeight];
        }"""
    )
    assert posted and max(original) == 1600
    page.close()


@pytest.mark.slow
def test_a_reload_shows_the_wardrobe_from_this_device_at_once_and_revalidates_with_304(browser, stack, first):
    page = open_app(browser, stack, first[1])
    cards(page).first.wait_for()
    held, statuses = [], []
    page.route(
        lambda url: urllib.parse.urlsplit(url).path == "/api/v1/items", lambda route: held.append(route)
    )
    page.on(
        "response",
        lambda r: urllib.parse.urlsplit(r.url).path == "/api/v1/items" and statuses.append(r.status),
    )
    page.reload()
    deadline = time.monotonic() + 15
    while not held:
        assert time.monotonic() < deadline, "the page never asked for the wardrobe"
        page.wait_for_timeout(50)
    # The request is held back, unanswered: what is on screen came from localStorage.
    cards(page).first.get_by_text("Uniqlo · Summer").wait_for()
    assert statuses == []
    assert held[0].request.headers.get("if-none-match", "").startswith('"v')
    for route in held:
        route.continue_()
    page.unroute_all()
    deadline = time.monotonic() + 15
    while not statuses:
        assert time.monotonic() < deadline, "no answer to the wardrobe request"
        page.wait_for_timeout(50)
    assert statuses[0] == 304
    assert cards(page).count() == 1

    # Offline, the saved copy stays and the page says why nothing is new.
    browser.set_offline(True)
    try:
        page.locator("#f-season").select_option("summer")
        page.get_by_text("You are offline").wait_for()
    finally:
        browser.set_offline(False)
    page.close()


@pytest.mark.slow
def test_a_second_person_on_the_same_browser_sees_none_of_the_first_ones_items(browser, stack, first):
    _, second = new_user()
    page = browser.new_page()
    held = []
    page.route(
        lambda url: urllib.parse.urlsplit(url).path == "/api/v1/items", lambda route: held.append(route)
    )
    page.goto(mini_app_link(stack["base"], second))
    deadline = time.monotonic() + 15
    while not held:
        assert time.monotonic() < deadline, "the page never asked for the wardrobe"
        page.wait_for_timeout(50)
    # Before the server has answered: nothing of the first person's on screen or left on the device.
    page.get_by_role("button", name="Add item").wait_for()
    assert cards(page).count() == 0
    stored = page.evaluate("Object.keys(localStorage).join(' ') + Object.values(localStorage).join(' ')")
    assert str(first[0]) not in stored and "Uniqlo" not in stored
    for route in held:
        route.continue_()
    page.unroute_all()
    page.get_by_text("Nothing here yet").wait_for()
    assert cards(page).count() == 0
    page.close()


@pytest.mark.slow
def test_screenshots_at_phone_and_desktop_width_and_keyboard_use(browser, stack, first):
    seed_wardrobe(stack["base"], first[1])
    ARTIFACTS.mkdir(exist_ok=True)
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = open_app(browser, stack, first[1], viewport)
        page.locator("#grid .card img").nth(6).wait_for()
        # Every thumbnail loaded, decoded and painted before the picture is taken.
        page.evaluate(
            """async () => {
                await Promise.all([...document.querySelectorAll("#grid img")].map((img) => img.decode()));
                await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
            }"""
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        page.screenshot(path=str(ARTIFACTS / f"miniapp-{name}.png"))
        page.close()

    page = open_app(browser, stack, first[1], PHONE)
    cards(page).first.wait_for()
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('card')"):
            break
    else:
        raise AssertionError("no item card is reachable with the keyboard")
    page.keyboard.press("Enter")
    page.locator("#view-item").wait_for()
    page.close()


@pytest.mark.slow
def test_a_capsule_is_generated_and_a_second_one_too_soon_says_when_to_retry(browser, stack, first):
    page = open_app(browser, stack, first[1], PHONE)
    page.get_by_role("button", name="Capsules").click()
    page.get_by_text("No capsules yet").wait_for()
    page.locator("#capsule-form [name=occasion]").select_option("work")
    page.get_by_role("button", name="Generate a capsule").click()
    page.get_by_text("Capsule ready").wait_for(timeout=60_000)
    capsule = page.locator("#capsule-list .capsule").first
    capsule.locator(".outfit .thumb img").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "miniapp-capsules-phone.png"))
    page.get_by_role("button", name="Generate a capsule").click()
    alert = page.get_by_role("alert")
    alert.get_by_text("Too many requests. Try again in").wait_for()
    page.close()


# --- seeding: real uploads through the API, as the page makes them -----------------------------------------------


def garment(kind: str, color: tuple[int, int, int], side: int = 640) -> bytes:
    """A plain-coloured piece of clothing on a light background, drawn on a 640 grid and scaled to `side`."""
    shapes = {
        "top": [
            (200, 120),
            (440, 120),
            (560, 260),
            (470, 300),
            (450, 560),
            (190, 560),
            (170, 300),
            (80, 260),
        ],
        "bottom": [(210, 90), (430, 90), (470, 580), (360, 580), (320, 250), (280, 580), (170, 580)],
        "dress": [(260, 80), (380, 80), (400, 220), (520, 580), (120, 580), (240, 220)],
        "outerwear": [
            (190, 90),
            (450, 90),
            (590, 330),
            (520, 360),
            (470, 250),
            (470, 590),
            (170, 590),
            (170, 250),
            (120, 360),
            (50, 330),
        ],
        "shoes": [(90, 330), (250, 300), (330, 390), (560, 430), (570, 500), (90, 500)],
        "bag": [(150, 260), (490, 260), (530, 560), (110, 560)],
    }
    img = Image.new("RGB", (640, 640), (236, 235, 230))
    draw = ImageDraw.Draw(img)
    draw.polygon(shapes[kind], fill=color)
    if kind == "bag":
        draw.arc((230, 130, 410, 380), 180, 360, fill=color, width=22)
    if side != 640:
        img = img.resize((side, side * 3 // 4 if side > 1600 else side))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


SEED = [  # category, colour, brand, season, and the colour's name as a person would correct it
    ("outerwear", (120, 90, 60), "Massimo Dutti", "demi-season", "brown"),
    ("bottom", (40, 55, 95), "Levi's", "all-season", "navy"),
    ("dress", (30, 110, 90), "COS", "summer", "green"),
    ("shoes", (245, 245, 245), "Adidas", "all-season", "white"),
    ("top", (240, 240, 236), "Uniqlo", "summer", "white"),
    ("bag", (25, 25, 28), "Mango", "all-season", "black"),
    ("top", (230, 180, 40), "Zara", "summer", "mustard"),
]


def seed_wardrobe(base: str, init_data: str) -> None:
    headers = {"Authorization": f"tma {init_data}"}
    jobs = []
    with requests.Session() as http:
        for kind, color, brand, season, colour_name in SEED:
            resp = http.post(
                f"{base}/api/v1/items",
                headers=headers,
                files={"image": ("photo.jpg", garment(kind, color), "image/jpeg")},
                data={"category": kind, "brand": brand},
                timeout=30,
            )
            assert resp.status_code == 202, resp.text
            correction = {
                "season": season,
                "colors": [{"name": colour_name, "hex": "#" + bytes(color).hex()}],
            }
            jobs.append((resp.json()["job"]["id"], resp.json()["item"]["id"], correction))
        for job_id, item_id, correction in jobs:
            deadline = time.monotonic() + 120
            while (state := http.get(f"{base}/api/v1/jobs/{job_id}", headers=headers, timeout=10).json())[
                "state"
            ] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, f"job {job_id} still {state['state']}"
                time.sleep(0.3)
            assert state["state"] == "succeeded", state
            fixed = http.patch(f"{base}/api/v1/items/{item_id}", json=correction, headers=headers, timeout=10)
            assert fixed.status_code == 200, fixed.text
