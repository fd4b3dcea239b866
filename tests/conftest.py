"""Fixtures over real services: the test database (migrated by scripts/services.sh), Redis, memcached."""

from __future__ import annotations

import io
import itertools
import os
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import falcon.testing
import psycopg2
import pytest
from PIL import Image

from wardrobe.app import Services, create_app
from wardrobe.config import Config
from wardrobe.web.auth import sign_init_data

BOT_TOKEN = "1234567890:TEST-bot-token-for-wardrobe-tests"
TEST_DB = os.environ.get("WARDROBE_TEST_DATABASE", "wardrobe_test")
TEST_DSN = f"postgresql:///{TEST_DB}"
_user_ids = itertools.count(random.randint(10**9, 2 * 10**9) * 1000)


def server_env(tmp_path: Path, **overrides) -> dict[str, str]:
    """The environment of an API or worker under test: test database, Redis db 1, a private data dir."""
    environ = {
        "WARDROBE_DATABASE_URL": TEST_DSN,
        "WARDROBE_DATA_DIR": str(tmp_path / "data"),
        "WARDROBE_TELEGRAM_BOT_TOKEN": BOT_TOKEN,
        "WARDROBE_REDIS_URL": "redis://127.0.0.1:6379/1",
        "WARDROBE_PROFILE_HZ": "0",
    }
    environ.update({k: str(v) for k, v in overrides.items()})
    return environ


def stack_env(
    tmp_path: Path, redis_url: str, openai_url: str, keys: list[str], **overrides
) -> dict[str, str]:
    """A whole stack's environment (API and both consumers): private Redis, the OpenAI fake, the real model."""
    from harness.processes import ROOT

    return server_env(
        tmp_path,
        WARDROBE_REDIS_URL=redis_url,
        WARDROBE_OPENAI_API_KEYS=",".join(keys),
        WARDROBE_OPENAI_BASE_URL=openai_url,
        WARDROBE_U2NET_HOME=ROOT / "var" / "models",
        **overrides,
    )


def make_config(tmp_path: Path, **overrides) -> Config:
    return Config.from_env(server_env(tmp_path, **overrides))


@pytest.fixture(scope="session", autouse=True)
def _clean_database() -> None:
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE users, items, jobs, capsules CASCADE")


def settle_unfinished_jobs() -> None:
    """Before real consumers start: jobs that earlier tests left queued (nobody ran their workers) would be found
    by the reaper and processed first, delaying the jobs the test is waiting for."""
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE jobs SET state = 'failed', error = 'left by an earlier test' WHERE state IN ('queued', 'running')"
        )


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def services(config: Config) -> Iterator[Services]:
    built = Services.build(config)
    yield built
    built.close()


@pytest.fixture
def client(config: Config, services: Services) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(config, services))


def auth_header(
    user_id: int, *, token: str = BOT_TOKEN, first_name: str = "Test", **kwargs
) -> dict[str, str]:
    return {
        "Authorization": "tma " + sign_init_data(token, {"id": user_id, "first_name": first_name}, **kwargs)
    }


@pytest.fixture
def user() -> dict[str, str]:
    """A brand-new Telegram user's Authorization header (ids never repeat, so tests don't see each other)."""
    return auth_header(next(_user_ids))


@pytest.fixture
def new_user():
    return lambda: auth_header(next(_user_ids))


def image_bytes(fmt: str = "JPEG", size=(64, 48), color=(200, 30, 30), exif: bytes | None = None) -> bytes:
    out = io.BytesIO()
    mode = "RGBA" if fmt == "PNG" else "RGB"
    img = Image.new(mode, size, color)
    kwargs = {"exif": exif} if exif else {}
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid-looking PNG that claims billions of pixels but is a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def multipart(fields: dict[str, tuple[str, bytes, str] | str]) -> tuple[bytes, str]:
    boundary = "wardrobe-test-boundary"
    parts = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data, ctype = value
            head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: {ctype}'
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"', value.encode()
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def upload(client, headers, data: bytes, filename: str = "shirt.jpg", **fields):
    body, ctype = multipart({"image": (filename, data, "application/octet-stream"), **fields})
    return client.simulate_post("/api/v1/items", body=body, headers={**headers, "Content-Type": ctype})
