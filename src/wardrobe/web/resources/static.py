"""The Mini App's page: `index.html` revalidated on every open, its assets named by content and cached for good."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import urlsplit

import falcon

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# `app.3f9c2b1a0d.js`: the part before the extension is the first 10 hex digits of the file's SHA-256.
HASHED_NAME = re.compile(r"^[a-z0-9-]+\.([0-9a-f]{10})\.(js|css|svg|png)$")
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
}
# Same origin only, plus Telegram's own script (loaded inside Telegram alone); images may be blob: previews.
CSP = (
    "default-src 'self'; script-src 'self' https://telegram.org; img-src 'self' blob: data:; "
    "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'"
)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:10]


class StaticFiles:
    """`/app/` (index.html) and `/app/{name}` (hashed assets), read from the package's static folder once."""

    def __init__(self, root: Path = STATIC_DIR, image_base_url: str = "") -> None:
        self._root = root
        # Images under a CDN (WARDROBE_IMAGE_BASE_URL) come from its origin; a relative base is our own.
        origin = urlsplit(image_base_url)
        extra = f" {origin.scheme}://{origin.netloc}" if origin.scheme and origin.netloc else ""
        self._csp = CSP.replace("img-src 'self'", f"img-src 'self'{extra}")
        self._files: dict[str, tuple[bytes, str]] = {}

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str = "index.html") -> None:
        data, etag = self._load(name)
        resp.etag = f'"{etag}"'
        resp.set_header("X-Content-Type-Options", "nosniff")
        if name == "index.html":
            # Always asked again (a 304 when unchanged), so a deploy reaches every open of the Mini App at once.
            resp.cache_control = ["no-cache"]
            resp.set_header("Content-Security-Policy", self._csp)
            resp.set_header("Referrer-Policy", "no-referrer")
        else:
            resp.cache_control = ["public", "max-age=31536000", "immutable"]
        if req.if_none_match and any(tag == "*" or str(tag) == etag for tag in req.if_none_match):
            resp.status = falcon.HTTP_304
            resp.content_type = None
            return
        resp.content_type = CONTENT_TYPES[name.rsplit(".", 1)[1]]
        resp.data = data

    def _load(self, name: str) -> tuple[bytes, str]:
        if name not in self._files:
            # Only index.html and names whose hash checks out: nothing else under the folder is served.
            match = HASHED_NAME.match(name)
            if name != "index.html" and match is None:
                raise falcon.HTTPNotFound(description="No such file.")
            try:
                data = (self._root / name).read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                raise falcon.HTTPNotFound(description="No such file.") from None
            self._files[name] = (data, match.group(1) if match else content_hash(data))
        return self._files[name]
