"""Uploaded photos: recognise the format from the bytes, refuse bombs before decoding, strip metadata, and keep
them under content-addressed names (`<sha256>.<ext>`) so their URLs can be cached forever.

Two stores answer to one interface (`put`, `read`, `open`, `exists`, `probe`, `url`): `ImageStore`, a local
directory, and `objectstore.S3ImageStore`; `objectstore.image_store(config)` picks one.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

FORMATS = {"JPEG": ("jpg", "image/jpeg"), "PNG": ("png", "image/png"), "WEBP": ("webp", "image/webp")}
CONTENT_TYPES = {ext: ctype for ext, ctype in FORMATS.values()}
KEY_RE = re.compile(r"^[0-9a-f]{64}\.(jpg|png|webp)$")
# A name is the hash of its bytes: whatever serves it (the API, nginx, a CDN, the bucket) may cache it forever.
CACHE_CONTROL = "public, max-age=31536000, immutable"


class ImageError(Exception):
    status = 400


class UnsupportedImage(ImageError):
    status = 415


class ImageTooLarge(ImageError):
    status = 413


class CorruptImage(ImageError):
    status = 400


class ImageMissing(FileNotFoundError):
    """No image under that key in the store (a FileNotFoundError, as the local store has always raised)."""


class StoreUnavailable(Exception):
    """The store cannot take or give images right now (unreachable, timing out, refusing): retry later."""


def checked_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise KeyError(key)
    return key


def sniff(data: bytes) -> str | None:
    """The format by magic bytes, never by filename or declared type."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    fmt = sniff(data)
    if fmt is None:
        raise UnsupportedImage("Upload a JPEG, PNG or WebP image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # open() reads only the header: the size is known before any pixel is decoded.
            img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"The image has more than {max_pixels} pixels.") from None
    except (OSError, SyntaxError, ValueError):
        raise CorruptImage("The image could not be read.") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise CorruptImage("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageTooLarge(f"The image is {width}x{height}; at most {max_pixels} pixels are accepted.")
    return img


def normalize(data: bytes, max_pixels: int) -> tuple[bytes, str]:
    """Decode, apply EXIF orientation, drop all metadata (GPS included) and re-encode.

    Returns (bytes, extension). CPU-bound: the API runs it on a native thread (Pillow releases the GIL).
    """
    img = _open_checked(data, max_pixels)
    fmt = img.format or "JPEG"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"The image has more than {max_pixels} pixels.") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise CorruptImage("The image is corrupt or truncated.") from None
    # A fresh image carries no info dict: EXIF, XMP, ICC and comments stay behind.
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    out = io.BytesIO()
    if fmt == "JPEG":
        clean = img.convert("RGB") if img.mode != "RGB" else img.copy()
        clean.info = {}
        clean.save(out, "JPEG", quality=90)
    elif fmt == "PNG":
        clean = img.convert("RGBA" if has_alpha else "RGB")
        clean.info = {}
        clean.save(out, "PNG", optimize=False, compress_level=6)
    else:
        clean = img.convert("RGBA" if has_alpha else "RGB")
        clean.info = {}
        clean.save(out, "WEBP", quality=90, method=4)
    return out.getvalue(), FORMATS[fmt][0]


def downscale(
    img: Image.Image, max_side: int, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> Image.Image:
    if max(img.size) <= max_side:
        return img
    img = img.copy()
    img.thumbnail((max_side, max_side), resample)
    return img


class ImageStore:
    """Content-addressed files in a local directory: one box, or a volume every box mounts."""

    shared = False  # a failing disk is this box's alone: the balancer should send traffic elsewhere

    def __init__(self, root: Path, base_url: str = "") -> None:
        self.root = Path(root)
        self.base_url = base_url

    def path(self, key: str) -> Path:
        key = checked_key(key)
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes, ext: str) -> str:
        key = f"{hashlib.sha256(data).hexdigest()}.{ext}"
        path = self.path(key)
        try:
            if path.exists():
                return key
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a reader never sees half a file, and a duplicate upload is a no-op.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:  # a full, read-only or failing disk: the upload is refused as retryable
            raise StoreUnavailable(f"image directory unwritable: {exc.strerror or exc}") from exc
        return key

    def read(self, key: str) -> bytes:
        handle, _ = self.open(key)
        with handle:
            return handle.read()

    def open(self, key: str) -> tuple[BinaryIO, int]:
        """A file object of the image and its size; the caller closes it."""
        try:
            handle = self.path(key).open("rb")
        except FileNotFoundError:
            raise ImageMissing(key) from None
        except OSError as exc:
            raise StoreUnavailable(f"image directory unreadable: {exc.strerror or exc}") from exc
        return handle, os.fstat(handle.fileno()).st_size

    def exists(self, key: str) -> bool:
        try:
            return self.path(key).exists()
        except KeyError:
            return False

    def probe(self) -> None:
        """For /readyz: the directory is there (or can be made) and this process may write to it."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root} is not writable")

    def url(self, key: str | None) -> str | None:
        return image_url(key, self.base_url)


def image_url(key: str | None, base_url: str = "") -> str | None:
    """Where clients fetch an image: under `base_url` (a CDN) if there is one, else from the API's /images/."""
    if not key:
        return None
    return f"{base_url.rstrip('/')}/{key}" if base_url else f"/images/{key}"
