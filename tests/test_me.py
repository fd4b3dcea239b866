"""The signed-in user's profile."""

import pytest


def test_profile_round_trip(client, user):
    me = client.simulate_get("/api/v1/me", headers=user).json
    assert me["preferences"] == {}
    patch = {"display_name": "Anna", "style": ["casual", "minimalist"], "sizes": {"top": "S", "shoes": "38"}}
    resp = client.simulate_patch("/api/v1/me", json=patch, headers=user)
    assert resp.status_code == 200
    assert resp.json["display_name"] == "Anna"
    assert resp.json["preferences"] == {
        "style": ["casual", "minimalist"],
        "sizes": {"top": "S", "shoes": "38"},
    }
    client.simulate_patch("/api/v1/me", json={"favourite_colors": ["navy"]}, headers=user)
    prefs = client.simulate_get("/api/v1/me", headers=user).json["preferences"]
    assert prefs["favourite_colors"] == ["navy"] and prefs["style"] == ["casual", "minimalist"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"style": ["gothic-space"]},
        {"sizes": {"hat": "L"}},
        {"display_name": ""},
        {"favourite_colors": "red"},
        {"display_name": "x" * 65},
        [1, 2],
    ],
)
def test_invalid_profile_changes_are_400(client, user, body):
    resp = client.simulate_patch("/api/v1/me", json=body, headers=user)
    assert resp.status_code == 400
    assert resp.json["description"]
