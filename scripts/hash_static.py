"""Names each Mini App asset by its content and points index.html at the new names.

Run after editing anything in src/wardrobe/web/static/ (`.venv/bin/python scripts/hash_static.py`): the assets are
served as cacheable forever, so a changed file must get a new name. Plain names (`app.js`) are hashed the first
time. Only index.html refers to assets; the assets refer to none of each other.
"""

from __future__ import annotations

import re
import sys

from wardrobe.web.resources.static import HASHED_NAME, STATIC_DIR, content_hash

PLAIN_NAME = re.compile(r"^([a-z0-9-]+)\.(js|css|svg|png)$")


def main() -> int:
    index = STATIC_DIR / "index.html"
    html = index.read_text()
    renamed = 0
    for path in sorted(STATIC_DIR.iterdir()):
        hashed, plain = HASHED_NAME.match(path.name), PLAIN_NAME.match(path.name)
        if not (hashed or plain):
            continue
        stem = path.name.split(".")[0]
        ext = path.name.rsplit(".", 1)[1]
        name = f"{stem}.{content_hash(path.read_bytes())}.{ext}"
        if name == path.name:
            continue
        path.rename(STATIC_DIR / name)
        html = html.replace(f"/app/{path.name}", f"/app/{name}")
        print(f"{path.name} -> {name}")
        renamed += 1
    index.write_text(html)
    print(f"{renamed} renamed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
