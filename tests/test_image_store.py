"""Both image stores behind one interface, the S3 one against a real S3-protocol server on loopback (moto's, in a
process of its own): content-addressed keys, content types and cache headers on the objects, a missing image
told apart from a store that is down, and the API answering for any image from the bucket."""

from __future__ import annotations

import hashlib
import random
import uuid

import falcon.testing
import psycopg2
import pytest
from conftest import TEST_DSN, auth_header, image_bytes, make_config, upload

from harness.processes import free_port
from tests.fakes.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server
from wardrobe.app import create_app
from wardrobe.clients.images import ImageMissing, ImageStore, StoreUnavailable
from wardrobe.clients.objectstore import S3ImageStore, S3Settings, image_store
from wardrobe.config import ConfigError

IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


def settings_for(server: S3Server, bucket: str, **values) -> S3Settings:
    return S3Settings(
        bucket=bucket,
        prefix="images",
        endpoint_url=server.url,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        **{"connect_timeout": 1.0, "read_timeout": 2.0, "max_attempts": 2, **values},
    )


def new_bucket(server: S3Server) -> str:
    return server.create_bucket(f"wardrobe-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return ImageStore(tmp_path / "images")
    server = request.getfixturevalue("s3")
    return S3ImageStore(settings_for(server, new_bucket(server)))


# --- one suite, both backends --------------------------------------------------------------------------------


def test_put_is_content_addressed_and_read_gives_the_bytes_back(store):
    data = image_bytes("PNG")
    key = store.put(data, "png")
    assert key == f"{hashlib.sha256(data).hexdigest()}.png"
    assert store.put(data, "png") == key  # a duplicate upload is the same object
    assert store.read(key) == data
    stream, length = store.open(key)
    with stream:
        assert (stream.read(), length) == (data, len(data))


def test_exists_and_a_missing_image_is_a_file_not_found(store):
    key = store.put(image_bytes("JPEG"), "jpg")
    absent = "0" * 64 + ".jpg"
    assert store.exists(key) and not store.exists(absent) and not store.exists("../../etc/passwd")
    with pytest.raises(ImageMissing):
        store.read(absent)
    with pytest.raises(FileNotFoundError):  # what the stages have always caught as "the image is missing"
        store.open(absent)


def test_urls_are_the_apis_unless_a_base_url_is_set(store):
    key = "a" * 64 + ".png"
    assert store.url(key) == f"/images/{key}" and store.url(None) is None
    store.probe()


# --- the S3 store --------------------------------------------------------------------------------------------


def test_objects_carry_their_content_type_and_cache_forever(s3):
    bucket = new_bucket(s3)
    store = S3ImageStore(settings_for(s3, bucket))
    for fmt, ext, ctype in [
        ("JPEG", "jpg", "image/jpeg"),
        ("PNG", "png", "image/png"),
        ("WEBP", "webp", "image/webp"),
    ]:
        key = store.put(image_bytes(fmt), ext)
        head = s3.client().head_object(Bucket=bucket, Key=f"images/{key}")  # flat, under the prefix
        assert (head["ContentType"], head["CacheControl"]) == (ctype, IMMUTABLE)


def test_the_client_is_built_on_first_use_sized_for_gevent_with_explicit_timeouts(s3):
    built = []

    def factory(settings):
        from wardrobe.clients.objectstore import build_client

        built.append(build_client(settings))
        return built[-1]

    store = S3ImageStore(settings_for(s3, new_bucket(s3), pool_size=321), client_factory=factory)
    assert built == []  # constructing the store (in create_app, before the fork) connects to nothing
    store.put(image_bytes(), "jpg")
    store.exists("0" * 64 + ".jpg")
    assert len(built) == 1  # one client per process, shared by every greenlet
    config = built[0].meta.config
    assert config.max_pool_connections == 321
    assert (config.connect_timeout, config.read_timeout) == (1.0, 2.0)
    assert config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert config.s3["addressing_style"] == "path"


def test_a_store_that_is_down_is_unavailable_not_missing():
    store = S3ImageStore(
        S3Settings(
            bucket="nowhere",
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            connect_timeout=0.5,
            max_attempts=1,
        )
    )
    key = "b" * 64 + ".png"
    for call in (
        lambda: store.put(b"x", "png"),
        lambda: store.read(key),
        lambda: store.exists(key),
        store.probe,
    ):
        with pytest.raises(StoreUnavailable):
            call()


def test_a_missing_bucket_fails_the_probe(s3):
    with pytest.raises(StoreUnavailable, match="NoSuchBucket"):
        S3ImageStore(settings_for(s3, "no-such-bucket-here")).probe()


def test_wardrobe_image_store_picks_the_store(tmp_path, s3):
    assert isinstance(image_store(make_config(tmp_path)), ImageStore)
    assert image_store(make_config(tmp_path)).root == tmp_path / "data" / "images"
    assert (
        image_store(make_config(tmp_path, WARDROBE_IMAGE_STORE=tmp_path / "shared")).root
        == tmp_path / "shared"
    )
    store = image_store(make_config(tmp_path, **s3.env("photos", prefix="prod/img/")))
    assert isinstance(store, S3ImageStore)
    assert (store.settings.bucket, store.settings.prefix, store.settings.endpoint_url) == (
        "photos",
        "prod/img",
        s3.url,
    )
    with pytest.raises(ConfigError, match="WARDROBE_IMAGE_STORE"):
        make_config(tmp_path, WARDROBE_IMAGE_STORE="s3://")
    with pytest.raises(ConfigError, match="WARDROBE_IMAGE_STORE"):
        make_config(tmp_path, WARDROBE_IMAGE_STORE="gs://bucket")


# --- the API over the bucket ---------------------------------------------------------------------------------


def rows_of(user_id: int) -> tuple[int, int]:
    """(items, jobs) the user has."""
    with psycopg2.connect(TEST_DSN) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM items WHERE user_id = %s), (SELECT count(*) FROM jobs WHERE user_id = %s)",
            (user_id, user_id),
        )
        return cur.fetchone()


def test_the_api_stores_uploads_in_the_bucket_and_serves_them_from_it(tmp_path, s3, user):
    bucket = new_bucket(s3)
    config = make_config(tmp_path, WARDROBE_REDIS_URL="redis://127.0.0.1:1/0", **s3.env(bucket))
    client = falcon.testing.TestClient(create_app(config))
    item = upload(client, user, image_bytes("PNG"), "shirt.png").json["item"]
    assert not (tmp_path / "data" / "images").exists()  # nothing on the local disk
    key = item["image_url"].removeprefix("/images/")
    assert s3.client().head_object(Bucket=bucket, Key=f"images/{key}")["ContentType"] == "image/png"
    served = client.simulate_get(item["image_url"])
    assert (
        served.status_code == 200
        and served.content == s3.client().get_object(Bucket=bucket, Key=f"images/{key}")["Body"].read()
    )
    assert (served.headers["content-type"], served.headers["cache-control"]) == ("image/png", IMMUTABLE)
    assert client.simulate_get("/images/" + "c" * 64 + ".png").status_code == 404


def test_with_a_base_url_clients_get_cdn_urls_and_old_links_are_redirected(tmp_path, s3, user):
    cdn = "https://cdn.example.test/img"
    config = make_config(
        tmp_path,
        WARDROBE_REDIS_URL="redis://127.0.0.1:1/0",
        WARDROBE_IMAGE_BASE_URL=cdn + "/",
        **s3.env(new_bucket(s3)),
    )
    client = falcon.testing.TestClient(create_app(config))
    created = upload(client, user, image_bytes()).json["item"]
    key = created["image_url"].removeprefix(cdn + "/")
    assert created["image_url"] == f"{cdn}/{key}" and len(key) == 68
    assert (
        client.simulate_get(f"/api/v1/items/{created['id']}", headers=user).json["image_url"]
        == f"{cdn}/{key}"
    )
    assert client.simulate_get("/api/v1/items", headers=user).json["items"][0]["image_url"] == f"{cdn}/{key}"
    moved = client.simulate_get(f"/images/{key}")  # a link from before the CDN
    assert moved.status_code == 301 and moved.headers["location"] == f"{cdn}/{key}"
    # The Mini App's page may show images from the CDN's origin.
    assert (
        "img-src 'self' https://cdn.example.test "
        in client.simulate_get("/app").headers["content-security-policy"]
    )


def test_upload_with_the_store_down_is_a_503_with_retry_after_and_creates_nothing(tmp_path):
    config = make_config(
        tmp_path,
        WARDROBE_REDIS_URL="redis://127.0.0.1:1/0",
        WARDROBE_IMAGE_STORE="s3://down/images",
        WARDROBE_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
        WARDROBE_S3_CONNECT_TIMEOUT="0.5",
        WARDROBE_S3_MAX_ATTEMPTS="1",
    )
    client = falcon.testing.TestClient(create_app(config))
    user_id = random.randint(10**12, 2 * 10**12)
    resp = upload(client, auth_header(user_id), image_bytes())
    assert resp.status_code == 503 and resp.headers["retry-after"] == "5", resp.text
    assert resp.json["title"] == "Service Unavailable"
    assert rows_of(user_id) == (0, 0)
    ready = client.simulate_get("/readyz")  # from loopback: an operator's view, with each dependency
    assert ready.json["checks"]["images"] == "degraded: StoreUnavailable"
