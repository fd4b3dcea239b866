"""/openapi.json describes exactly the routes the app serves, and the API holds up when fuzzed from it."""

import falcon.inspect
import hypothesis
import pytest
import schemathesis
from conftest import BOT_TOKEN, auth_header, make_config

from wardrobe.app import create_app
from wardrobe.web.openapi import paths


def test_document_matches_the_served_routes(client):
    app_routes = {
        r.path: {m.method.lower() for m in r.methods if m.internal is False}
        for r in falcon.inspect.inspect_routes(client.app)
    }
    doc = client.simulate_get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == set(app_routes)
    for path, methods in app_routes.items():
        documented = {m for m in doc["paths"][path] if m != "parameters"}
        assert documented == methods - {"options"}, path
    assert set(doc["paths"]) <= set(paths())


_app = None


def _fuzz_app():
    global _app
    if _app is None:
        import tempfile
        from pathlib import Path

        _app = create_app(make_config(Path(tempfile.mkdtemp())))
    return _app


schema = schemathesis.openapi.from_wsgi("/openapi.json", _fuzz_app())


@schema.auth()
class TelegramAuth:
    def get(self, case, ctx):
        return auth_header(777_000_001, token=BOT_TOKEN)["Authorization"]

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = data


@pytest.mark.slow
@schema.parametrize()
@hypothesis.settings(max_examples=25, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_fuzzed_requests_never_get_a_server_error(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert response.json()["title"]
