"""Seeds a benchmark population in SQL (generate_series): users with ids from USER_BASE, their items, capsules.

Re-running is cheap: a complete population is kept and only what a previous run added (uploads, jobs, new
capsules) is removed; a population of another shape is rebuilt. Images are a few real files in the store.
"""

from __future__ import annotations

import argparse
import io
import random
import time
from pathlib import Path

import numpy as np
import psycopg2
from PIL import Image, ImageDraw, ImageFilter

from wardrobe.clients.images import ImageStore

USER_BASE = 7_000_000_000  # far above the ids tests and people use
SEED_SOURCE = "seed"  # items.analysis->>'source' and capsules.source of seeded rows
IMAGE_COUNT = 6


def noise(size: tuple[int, int], sigma: float, seed: int) -> Image.Image:
    """Grey Gaussian noise around 128, as `Image.effect_noise` makes it, but from a seeded generator. effect_noise
    draws from C's rand(), so the same photo came out as other bytes after other noise had been drawn in the
    process, and a kept population then pointed at images that a new store did not have."""
    width, height = size
    values = np.random.default_rng(seed).normal(128.0, sigma, (height, width))
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)).convert("RGB")


def photo(seed: int, size: tuple[int, int] = (1024, 1280), quality: int = 88) -> bytes:
    """A deterministic JPEG that compresses like a phone photo of a garment (texture, gradient, noise)."""
    rng = random.Random(seed)
    width, height = size
    base = tuple(rng.randrange(40, 220) for _ in range(3))
    img = Image.new("RGB", size, base)
    draw = ImageDraw.Draw(img)
    for _ in range(60):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(20, width // 3)
        shade = tuple(max(0, min(255, c + rng.randrange(-60, 60))) for c in base)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=shade)
    img = img.filter(ImageFilter.GaussianBlur(3))
    # Sensor-like noise keeps JPEG sizes in the 100-400 KB range that real uploads have.
    img = Image.blend(img, noise(size, rng.randrange(18, 30), seed), 0.18)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def garment_photo(
    size=(800, 800), fmt="JPEG", mode="RGB", colour=(190, 25, 35), bed=(232, 230, 224), seed=7
) -> bytes:
    """A shaded shirt (red by default) flat on a lightly textured bed, with sensor noise: a garment photo whose true
    mask is known."""
    width, height = size
    img = Image.new("RGB", size, bed)
    draw = ImageDraw.Draw(img)
    rng = random.Random(seed)
    for _ in range(40):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(10, max(11, width // 6))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(c + rng.randrange(-17, 13) for c in bed))
    sx, sy = width / 640, height / 640
    shirt = [(200, 120), (440, 120), (560, 260), (470, 300), (450, 560), (190, 560), (170, 300), (80, 260)]
    draw.polygon([(x * sx, y * sy) for x, y in shirt], fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    img = Image.blend(img, noise(size, 25, seed), 0.06)
    out = io.BytesIO()
    img.convert(mode).save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


# Garments in several colours on several beds, including low-contrast pairs (grey on grey, navy on dark wood).
GARMENTS = [
    dict(size=(1000, 900)),
    dict(size=(900, 1200), colour=(30, 40, 90), bed=(90, 70, 55), seed=3),
    dict(size=(768, 1024), colour=(150, 150, 150), bed=(200, 200, 205), seed=5),
    dict(size=(1080, 1350), colour=(240, 240, 235), bed=(120, 160, 190), seed=11),
    dict(size=(1024, 768), colour=(40, 140, 60), bed=(245, 240, 230), seed=13),
]


def cutout(seed: int, size: tuple[int, int] = (512, 640)) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    color = (*(rng.randrange(40, 220) for _ in range(3)), 255)
    draw.rounded_rectangle((60, 40, size[0] - 60, size[1] - 40), radius=60, fill=color)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def store_images(images_dir: Path, count: int = IMAGE_COUNT) -> tuple[list[str], list[str]]:
    """(originals, cutouts) keys in the store; content-addressed, so re-running writes nothing new."""
    store = ImageStore(images_dir)
    originals = [store.put(photo(1000 + i), "jpg") for i in range(count)]
    cutouts = [store.put(cutout(2000 + i), "png") for i in range(count)]
    return originals, cutouts


_ITEMS_SQL = """
INSERT INTO items (user_id, status, category, colors, season, style, pattern, material, formality, brand,
                   image_key, cutout_key, analysis, created_at, updated_at)
SELECT u, 'ready',
       (ARRAY['top','top','top','bottom','bottom','dress','outerwear','shoes','shoes','bag','accessory'])[1 + (h %% 11)],
       jsonb_build_array(jsonb_build_object(
           'name', (ARRAY['black','white','navy','beige','grey','red','green','blue','brown','pink'])[1 + (h / 11 %% 10)],
           'hex', (ARRAY['#111111','#f5f5f5','#1f2a44','#d8c3a5','#8a8a8a','#b22222','#2e8b57','#3366cc',
                         '#7b4b2a','#e8a0b4'])[1 + (h / 11 %% 10)])),
       (ARRAY['summer','winter','demi-season','all-season'])[1 + (h / 110 %% 4)],
       (ARRAY['casual','business','sport','evening','streetwear','classic','minimalist'])[1 + (h / 440 %% 7)],
       (ARRAY['solid','solid','striped','checked','floral','graphic'])[1 + (h / 3080 %% 6)],
       (ARRAY['cotton','denim','wool','knit','leather','linen','synthetic'])[1 + (h / 7 %% 7)],
       1 + (h / 13 %% 5),
       (ARRAY['Zara','H&M','Uniqlo','Mango','COS','Levi''s','Nike','Adidas',NULL,NULL])[1 + (h / 17 %% 10)],
       (%(originals)s::text[])[1 + (h %% %(n)s)],
       (%(cutouts)s::text[])[1 + (h %% %(n)s)],
       '{"source": "seed"}'::jsonb,
       now() - make_interval(hours => (i * 7 + u %% 97)::int),
       now() - make_interval(hours => (i * 7 + u %% 97)::int)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS u,
     generate_series(1, %(per_user)s) AS i,
     LATERAL (SELECT hashint8(u * 1000 + i)::bigint & 2147483647 AS h) AS hashed
"""

_CAPSULES_SQL = """
INSERT INTO capsules (user_id, state, occasion, season, size, name, description, outfits, source,
                      wardrobe_version, created_at, updated_at)
SELECT u.id, 'ready', 'everyday', 'all-season', 1, 'Easy Weekend', 'Seeded for the load test.',
       jsonb_build_array(jsonb_build_object('name', 'Look 1', 'item_ids', picked.ids)),
       'seed', u.wardrobe_version, now() - interval '3 days', now() - interval '3 days'
FROM users u
CROSS JOIN LATERAL (
    SELECT jsonb_agg(id::text) AS ids
    FROM (SELECT id FROM items WHERE user_id = u.id ORDER BY created_at DESC, id DESC LIMIT 3) newest
) picked
WHERE u.id BETWEEN %(first)s AND %(last)s
"""


def _population(cur, first: int, last: int) -> tuple[int, int, int]:
    cur.execute("SELECT count(*) FROM users WHERE id BETWEEN %s AND %s", (first, last))
    users = cur.fetchone()[0]
    cur.execute(
        "SELECT count(*) FROM items WHERE user_id BETWEEN %s AND %s AND analysis->>'source' = %s",
        (first, last, SEED_SOURCE),
    )
    items = cur.fetchone()[0]
    cur.execute(
        "SELECT count(*) FROM capsules WHERE user_id BETWEEN %s AND %s AND source = %s",
        (first, last, SEED_SOURCE),
    )
    return users, items, cur.fetchone()[0]


def seed(
    dsn: str,
    images_dir: Path,
    *,
    users: int = 20_000,
    items_per_user: int = 40,
    user_base: int = USER_BASE,
    log=print,
) -> dict[str, int | float]:
    """Make the population exactly `users` x `items_per_user` (+1 capsule each); returns counts and seconds."""
    started = time.monotonic()
    originals, cutouts = store_images(images_dir)
    first, last = user_base, user_base + users - 1
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            # Whatever an earlier run created: its uploads, jobs and requested capsules (and their cutouts).
            cur.execute("DELETE FROM jobs WHERE user_id BETWEEN %s AND %s", (first, last))
            cur.execute(
                "DELETE FROM items WHERE user_id BETWEEN %s AND %s AND analysis->>'source' IS DISTINCT FROM %s",
                (first, last, SEED_SOURCE),
            )
            cur.execute(
                "DELETE FROM capsules WHERE user_id BETWEEN %s AND %s AND source IS DISTINCT FROM %s",
                (first, last, SEED_SOURCE),
            )
            have = _population(cur, first, last)
            cur.execute(
                "SELECT count(*) FROM users WHERE id >= %s AND id < %s + 100000000 AND id > %s",
                (user_base, user_base, last),
            )
            extra_users = cur.fetchone()[0]
            # A population seeded from other image bytes (another Pillow encodes the same photo differently)
            # points at files this store does not have: every image request would be a 404.
            cur.execute(
                "SELECT EXISTS (SELECT 1 FROM items WHERE user_id BETWEEN %s AND %s AND analysis->>'source' = %s"
                " AND NOT (image_key = ANY(%s) AND cutout_key = ANY(%s)))",
                (first, last, SEED_SOURCE, originals, cutouts),
            )
            stale_images = cur.fetchone()[0]
            rebuilt = have != (users, users * items_per_user, users) or extra_users > 0 or stale_images
            if rebuilt:
                log(
                    f"seeding {users} users x {items_per_user} items (found {have}, {extra_users} extra"
                    f"{', images of other bytes' if stale_images else ''})"
                )
                cur.execute(
                    "DELETE FROM users WHERE id >= %s AND id < %s + 100000000", (user_base, user_base)
                )
                cur.execute(
                    """
                    INSERT INTO users (id, display_name, username, profile)
                    SELECT u, 'Bench User ' || (u - %(base)s), 'bench' || (u - %(base)s),
                           jsonb_build_object('style', jsonb_build_array('casual'),
                                              'sizes', jsonb_build_object('top', 'M'))
                    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS u
                    """,
                    {"base": user_base, "first": first, "last": last},
                )
                cur.execute(
                    _ITEMS_SQL,
                    {
                        "originals": originals,
                        "cutouts": cutouts,
                        "n": len(originals),
                        "first": first,
                        "last": last,
                        "per_user": items_per_user,
                    },
                )
                cur.execute(_CAPSULES_SQL, {"first": first, "last": last})
            # Every run starts from the same cache keys and versions, whatever the previous run edited.
            cur.execute(
                "UPDATE users SET wardrobe_version = 1 WHERE id BETWEEN %s AND %s AND wardrobe_version <> 1",
                (first, last),
            )
        conn.commit()
        if rebuilt:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("ANALYZE users, items, capsules, jobs")
    finally:
        conn.close()
    return {
        "users": users,
        "items": users * items_per_user,
        "capsules": users,
        "rebuilt": int(rebuilt),
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Seed the benchmark population.")
    parser.add_argument("--database-url", default="postgresql:///wardrobe_bench")
    parser.add_argument("--data-dir", type=Path, default=Path("var/bench"))
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items-per-user", type=int, default=40)
    args = parser.parse_args(argv)
    result = seed(
        args.database_url, args.data_dir / "images", users=args.users, items_per_user=args.items_per_user
    )
    print(result)


if __name__ == "__main__":
    main()
