"""Items: uploading photos (and every way an upload can be wrong), listing, editing, deleting, ownership."""

import io

import pytest
from conftest import image_bytes, multipart, png_bomb, upload
from PIL import Image


def exif_with_gps_and_rotation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    exif[0x8825] = {1: "N", 2: (55.0, 45.0, 0.0), 3: "E", 4: (37.0, 37.0, 0.0)}  # GPS
    return exif.tobytes()


def test_upload_returns_202_with_item_job_and_location(client, user):
    resp = upload(client, user, image_bytes(), category="top", brand="Uniqlo", notes="linen")
    assert resp.status_code == 202, resp.text
    item, job = resp.json["item"], resp.json["job"]
    assert resp.headers["location"] == f"/api/v1/items/{item['id']}"
    assert item["status"] == "processing"
    assert (item["category"], item["brand"], item["notes"]) == ("top", "Uniqlo", "linen")
    assert job["kind"] == "process_item" and job["state"] == "queued"
    assert client.simulate_get(f"/api/v1/jobs/{job['id']}", headers=user).json["id"] == job["id"]


def test_stored_original_is_upright_and_has_no_metadata(client, user):
    data = image_bytes("JPEG", size=(80, 40), exif=exif_with_gps_and_rotation())
    item = upload(client, user, data).json["item"]
    resp = client.simulate_get(item["image_url"])
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/jpeg"
    assert resp.headers["cache-control"] == "public, max-age=31536000, immutable"
    stored = Image.open(io.BytesIO(resp.content))
    assert stored.size == (40, 80)  # orientation applied
    assert not stored.getexif()  # GPS and everything else gone
    assert b"Exif" not in resp.content[:512]
    again = client.simulate_get(item["image_url"], headers={"If-None-Match": resp.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_same_photo_twice_shares_one_content_addressed_file(client, user):
    a = upload(client, user, image_bytes("PNG")).json["item"]
    b = upload(client, user, image_bytes("PNG")).json["item"]
    assert a["id"] != b["id"] and a["image_url"] == b["image_url"]
    assert a["image_url"].endswith(".png")


def test_webp_is_accepted_by_content_not_filename(client, user):
    resp = upload(client, user, image_bytes("WEBP"), filename="photo.txt")
    assert resp.status_code == 202
    assert resp.json["item"]["image_url"].endswith(".webp")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"%PDF-1.4 not an image at all", 415),
        (b"GIF89a" + b"\x00" * 100, 415),
        (image_bytes("JPEG", size=(400, 400))[:300], 400),  # truncated
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, 400),  # header lies
        (png_bomb(), 413),  # 2.5 gigapixels claimed, never decoded
    ],
)
def test_bad_images_get_clear_errors(client, user, data, status):
    resp = upload(client, user, data, filename="x.jpg")
    assert resp.status_code == status, resp.text
    assert resp.json["title"] and resp.json["description"]


def test_oversized_upload_is_refused(client, user, config):
    big = b"\xff\xd8\xff" + b"\x00" * (config.max_upload_bytes + 1)
    resp = upload(client, user, big)
    assert resp.status_code == 413
    # Also without a Content-Length: the bound is enforced while streaming the part.
    body, ctype = multipart(
        {"image": ("a.jpg", b"\xff\xd8\xff" + b"\x00" * (config.max_upload_bytes + 10), "x")}
    )
    resp = client.simulate_post(
        "/api/v1/items", body=body[: config.max_upload_bytes + 4096], headers={**user, "Content-Type": ctype}
    )
    assert resp.status_code in (400, 413)


def test_form_mistakes_are_400_or_415(client, user):
    assert client.simulate_post("/api/v1/items", json={"x": 1}, headers=user).status_code == 415
    body, ctype = multipart({"notes": "no image here"})
    resp = client.simulate_post("/api/v1/items", body=body, headers={**user, "Content-Type": ctype})
    assert resp.status_code == 400
    assert upload(client, user, image_bytes(), category="hat").status_code == 400
    assert upload(client, user, image_bytes(), notes="x" * 5000).status_code == 400
    garbled = client.simulate_post(
        "/api/v1/items",
        body=b"--nope\r\n\r\n",
        headers={**user, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert garbled.status_code == 400


def test_list_is_newest_first_with_keyset_pagination_and_filters(client, user):
    created = []
    for i in range(5):
        category = "shoes" if i % 2 else "top"
        created.append(
            upload(client, user, image_bytes(color=(i, 0, 0)), category=category).json["item"]["id"]
        )
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.simulate_get("/api/v1/items", params=params, headers=user).json
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(created))
    shoes = client.simulate_get("/api/v1/items", params={"category": "shoes"}, headers=user).json["items"]
    assert [i["id"] for i in shoes] == [created[3], created[1]]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"cursor": "garbage"},
        {"cursor": "W10"},
        {"category": "x"},
    ],
)
def test_bad_list_parameters_are_400(client, user, params):
    resp = client.simulate_get("/api/v1/items", params=params, headers=user)
    assert resp.status_code == 400
    assert resp.json["description"]


def test_patch_records_user_corrections_and_validates(client, user):
    item = upload(client, user, image_bytes()).json["item"]
    url = f"/api/v1/items/{item['id']}"
    resp = client.simulate_patch(
        url, json={"category": "dress", "colors": [{"name": "red", "hex": "#ff0000"}]}, headers=user
    )
    assert resp.status_code == 200
    assert resp.json["category"] == "dress" and resp.json["colors"][0]["name"] == "red"
    assert client.simulate_get(url, headers=user).json["category"] == "dress"
    for bad in ({"category": "spaceship"}, {"formality": 9}, {}, {"id": "x"}, {"notes": 5}):
        assert client.simulate_patch(url, json=bad, headers=user).status_code == 400
    resp = client.simulate_patch(url, body="{not json", headers={**user, "Content-Type": "application/json"})
    assert resp.status_code == 400
    resp = client.simulate_patch(url, body="a=b", headers={**user, "Content-Type": "text/plain"})
    assert resp.status_code == 415


@pytest.mark.parametrize(
    "body",
    [
        '{"formality": NaN}',  # the stdlib's json would take these three
        '{"notes": "\\ud800"}',
        '{"formality": 1180591620717411303424}',
        '{"notes": "a"',
        "\ufeff{}",
    ],
)
def test_json_that_is_not_json_is_400_and_changes_nothing(client, user, body):
    item = upload(client, user, image_bytes()).json["item"]
    url = f"/api/v1/items/{item['id']}"
    resp = client.simulate_patch(url, body=body, headers={**user, "Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json["title"]
    assert client.simulate_get(url, headers=user).json["notes"] == item["notes"]


def test_text_beyond_ascii_round_trips_as_utf8(client, user):
    item = upload(client, user, image_bytes()).json["item"]
    url = f"/api/v1/items/{item['id']}"
    resp = client.simulate_patch(url, json={"notes": "Größe M, 裙子 👗"}, headers=user)
    assert resp.status_code == 200
    assert "Größe M, 裙子 👗".encode() in resp.content  # UTF-8 on the wire, not \u escapes
    assert client.simulate_get(url, headers=user).json["notes"] == "Größe M, 裙子 👗"


def test_other_users_items_and_jobs_are_404(client, user, new_user):
    created = upload(client, user, image_bytes()).json
    item_url = f"/api/v1/items/{created['item']['id']}"
    stranger = new_user()
    assert client.simulate_get(item_url, headers=stranger).status_code == 404
    assert client.simulate_patch(item_url, json={"notes": "mine"}, headers=stranger).status_code == 404
    assert client.simulate_delete(item_url, headers=stranger).status_code == 404
    assert client.simulate_get(f"/api/v1/jobs/{created['job']['id']}", headers=stranger).status_code == 404
    assert client.simulate_get("/api/v1/items", headers=stranger).json["items"] == []
    assert client.simulate_get(item_url, headers=user).status_code == 200


def test_delete_then_gone(client, user):
    item = upload(client, user, image_bytes()).json["item"]
    url = f"/api/v1/items/{item['id']}"
    assert client.simulate_delete(url, headers=user).status_code == 204
    assert client.simulate_get(url, headers=user).status_code == 404
    assert client.simulate_delete(url, headers=user).status_code == 404


@pytest.mark.parametrize("path", ["/api/v1/items/not-a-uuid", "/api/v1/jobs/%00", "/images/../../etc/passwd"])
def test_odd_ids_are_404_not_500(client, user, path):
    assert client.simulate_get(path, headers=user).status_code == 404
