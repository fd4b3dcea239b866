"""Images in S3-compatible object storage (AWS S3, Cloudflare R2, Backblaze B2, MinIO, Hetzner...), so every API
backend and every worker box reads and writes the same content-addressed objects.

One boto3 client per process, built on first use: after gunicorn's fork and gevent's patch, never at import.
`image_store(config)` is where the API and the consumers get their store, this one or the local directory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from wardrobe.clients.images import (
    CACHE_CONTROL,
    CONTENT_TYPES,
    ImageMissing,
    ImageStore,
    StoreUnavailable,
    checked_key,
    image_url,
)

if TYPE_CHECKING:
    from wardrobe.config import Config

# The codes S3 and its look-alikes answer for an object (or a prefix) that is not there.
_MISSING = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str = ""  # blank: AWS's own endpoint for the region
    region: str = "us-east-1"
    access_key_id: str = ""  # blank (both): boto3's default chain, e.g. an instance role
    secret_access_key: str = ""
    addressing_style: str = "path"
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_attempts: int = 3
    pool_size: int = 100
    base_url: str = ""  # a CDN in front of the bucket: clients get image URLs under it

    @classmethod
    def from_location(cls, location: str, **values: Any) -> S3Settings:
        """`s3://bucket/prefix` and the endpoint settings."""
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        return cls(bucket=bucket, prefix=prefix.strip("/"), **values)


def build_client(settings: S3Settings) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    boto_config = BotoConfig(
        region_name=settings.region,
        signature_version="s3v4",
        # `path` (https://endpoint/bucket/key) is what most S3-compatible stores serve; AWS takes both.
        s3={"addressing_style": settings.addressing_style},
        connect_timeout=settings.connect_timeout,  # botocore's defaults are 60 s each
        read_timeout=settings.read_timeout,
        # `standard` retries throttling and 5xx with backoff; `legacy` (the default) retries less and blindly.
        # (`total_max_attempts` counts the first try; botocore's `max_attempts` would not.)
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        # urllib3's pool defaults to 10 connections per client, while one gevent worker serves 1,000+
        # connections: without this, requests queue behind ten sockets.
        max_pool_connections=settings.pool_size,
        tcp_keepalive=True,
        # botocore >= 1.36 sends CRC32 trailers on every PUT by default, which several S3-compatible stores
        # refuse; we send Content-MD5 ourselves instead, which all of them check.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    credentials = {}
    if settings.access_key_id or settings.secret_access_key:
        credentials = {
            "aws_access_key_id": settings.access_key_id,
            "aws_secret_access_key": settings.secret_access_key,
        }
    # A session of its own: boto3's default session is shared module state and sessions are not thread-safe;
    # the client they make is, and is shared by every greenlet of the process.
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url or None, config=boto_config, **credentials
    )


class S3ImageStore:
    """Content-addressed objects `<prefix>/<sha256>.<ext>`: written once, never changed, cacheable forever.

    Plain `put_object`/`get_object`: s3transfer's managed transfers run a thread pool per call, which buys
    nothing for images of a few hundred KB and fights gevent.
    """

    shared = True  # every backend sees the same objects: a failing probe is the fleet's, not this box's

    def __init__(self, settings: S3Settings, client_factory: Callable[[S3Settings], Any] = build_client):
        self.settings = settings
        self._factory = client_factory
        self._client: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        # Keyed by pid too: a client inherited across a fork would share its sockets with the parent.
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    self._client = self._factory(self.settings)
                    self._pid = os.getpid()
        return self._client

    def object_key(self, key: str) -> str:
        key = checked_key(key)
        return f"{self.settings.prefix}/{key}" if self.settings.prefix else key

    def put(self, data: bytes, ext: str) -> str:
        key = f"{hashlib.sha256(data).hexdigest()}.{ext}"
        # No HEAD first: a duplicate upload rewrites the same bytes under the same name, which is harmless
        # and one round trip cheaper than asking.
        with _translated(key):
            self.client.put_object(
                Bucket=self.settings.bucket,
                Key=self.object_key(key),
                Body=data,
                ContentType=CONTENT_TYPES[ext],
                CacheControl=CACHE_CONTROL,
                ContentMD5=base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode(),
            )
        return key

    def read(self, key: str) -> bytes:
        stream, _ = self.open(key)
        with _translated(key):
            try:
                return stream.read()
            finally:
                stream.close()

    def open(self, key: str) -> tuple[BinaryIO, int]:
        """A stream of the object's bytes and its length; the caller closes it."""
        with _translated(key):
            answer = self.client.get_object(Bucket=self.settings.bucket, Key=self.object_key(key))
        return answer["Body"], answer["ContentLength"]

    def exists(self, key: str) -> bool:
        try:
            with _translated(key):
                self.client.head_object(Bucket=self.settings.bucket, Key=self.object_key(key))
        except (ImageMissing, KeyError):
            return False
        return True

    def probe(self) -> None:
        """For /readyz: the bucket answers and these credentials may list it (one cheap request)."""
        with _translated("bucket"):
            self.client.list_objects_v2(Bucket=self.settings.bucket, Prefix=self.settings.prefix, MaxKeys=1)

    def url(self, key: str | None) -> str | None:
        return image_url(key, self.settings.base_url)


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    """botocore's errors as the store's own: a missing object, or the store unreachable or refusing."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            raise ImageMissing(key) from None
        # Anything else (5xx after the retries, SlowDown, AccessDenied, NoSuchBucket) means images cannot be
        # stored or served right now; the message keeps the store's code for the log.
        raise StoreUnavailable(f"object store answered {code}") from exc
    except BotoCoreError as exc:  # connect and read timeouts, refused connections, streams cut short
        raise StoreUnavailable(f"object store unreachable: {type(exc).__name__}") from exc


def image_store(config: Config) -> ImageStore | S3ImageStore:
    """The store `WARDROBE_IMAGE_STORE` names: a local directory (the default) or an S3 bucket."""
    if not config.image_store.startswith("s3://"):
        return ImageStore(config.images_dir, config.image_base_url)
    return S3ImageStore(
        S3Settings.from_location(
            config.image_store,
            endpoint_url=config.s3_endpoint_url,
            region=config.s3_region,
            access_key_id=config.s3_access_key_id,
            secret_access_key=config.s3_secret_access_key,
            addressing_style=config.s3_addressing_style,
            connect_timeout=config.s3_connect_timeout,
            read_timeout=config.s3_read_timeout,
            max_attempts=config.s3_max_attempts,
            pool_size=config.s3_pool_size,
            base_url=config.image_base_url,
        )
    )
