"""The original plan's architecture, minimal but faithful: Flask on gunicorn gthread (4 workers x 8 threads), a
psycopg2 ThreadedConnectionPool, and rembg plus the OpenAI call executed inside the upload request.

It serves the same endpoints, data and auth as Wardrobe, so the same Locust scenario runs against both. Phase-1
tuning is applied (one rembg session per worker made at boot, pool sized to the threads, keep-alive, indexes),
so it is the plan at its best, not a straw man. `Settings.from_env()` is its only reader of the environment.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import psycopg2
import psycopg2.extras
import psycopg2.pool
from flask import Flask, Response, g, jsonify, request, send_file
from PIL import Image

from tasks.analysis.ai import CAPSULE_SCHEMA, ITEM_SCHEMA
from tasks.analysis.outfits import candidates
from wardrobe.clients.brands import CatalogueBrands, InvalidQuery
from wardrobe.clients.images import ImageError, ImageStore, downscale, normalize
from wardrobe.store import pagination
from wardrobe.store import parse_uuid as parse_id
from wardrobe.store.capsules import CAPSULE_COLUMNS
from wardrobe.store.capsules import serialize as serialize_capsule
from wardrobe.store.items import EDITABLE, ITEM_COLUMNS
from wardrobe.store.items import serialize as serialize_item
from wardrobe.store.jobs import JOB_COLUMNS
from wardrobe.store.jobs import serialize as serialize_job
from wardrobe.store.users import serialize as serialize_user
from wardrobe.web import schemas
from wardrobe.web.auth import AuthError, InitDataValidator

psycopg2.extras.register_uuid()


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str
    data_dir: Path
    bot_token: str
    openai_api_key: str
    openai_base_url: str
    openai_model: str = "gpt-4o-mini"
    threads: int = 8
    rembg_model: str = "u2netp"
    max_side: int = 1024

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get("BASELINE_DATABASE_URL", "postgresql:///wardrobe_bench"),
            data_dir=Path(env.get("BASELINE_DATA_DIR", "var/bench")),
            bot_token=env["BASELINE_BOT_TOKEN"],
            openai_api_key=env.get("BASELINE_OPENAI_API_KEY", "sk-local"),
            openai_base_url=env.get("BASELINE_OPENAI_BASE_URL", "http://127.0.0.1:8089/v1"),
            threads=int(env.get("BASELINE_THREADS", "8")),
        )


class Resources:
    """Per worker process, made after fork: the pool, the rembg session and the OpenAI client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._session: Any = None
        self._openai: Any = None

    def warm(self) -> None:
        self.pool()
        self.rembg()
        self.openai()

    def pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._lock:
            if self._pool is None:
                # One connection per request thread: the pool never runs dry (it raises, not waits, if it did).
                self._pool = psycopg2.pool.ThreadedConnectionPool(
                    2,
                    self.settings.threads,
                    self.settings.database_url,
                    cursor_factory=psycopg2.extras.RealDictCursor,
                )
            return self._pool

    def rembg(self) -> Any:
        with self._lock:
            if self._session is None:
                from rembg import new_session

                self._session = new_session(self.settings.rembg_model)
            return self._session

    def openai(self) -> Any:
        with self._lock:
            if self._openai is None:
                import openai

                self._openai = openai.OpenAI(
                    api_key=self.settings.openai_api_key, base_url=self.settings.openai_base_url, timeout=30
                )
            return self._openai

    def run(self, work: Callable[[Any], Any]) -> Any:
        pool = self.pool()
        conn = pool.getconn()
        try:
            with conn, conn.cursor() as cur:
                return work(cur)
        finally:
            pool.putconn(conn)


def _error(status: int, title: str, description: str = "") -> Response:
    resp = jsonify({"title": title, "description": description})
    resp.status_code = status
    return resp


def create_app(settings: Settings) -> Flask:
    app = Flask("wardrobe-baseline")
    res = Resources(settings)
    app.extensions["baseline"] = res
    validator = InitDataValidator(settings.bot_token, 86400)
    store = ImageStore(settings.data_dir / "images")
    brands = CatalogueBrands()

    @app.before_request
    def authenticate():
        if not request.path.startswith("/api/"):
            return None
        try:
            user = validator.authenticate(request.headers.get("Authorization"))
        except AuthError as exc:
            return _error(401, "Unauthorized", str(exc))
        res.run(
            lambda cur: cur.execute(
                "INSERT INTO users (id, display_name, username) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (user.id, user.display_name, user.username),
            )
        )
        g.user_id = user.id
        return None

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/api/v1/me")
    def me():
        row = res.run(lambda cur: _one(cur, "SELECT * FROM users WHERE id = %s", (g.user_id,)))
        return serialize_user(row)

    @app.patch("/api/v1/me")
    def patch_me():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or list(
            jsonschema.Draft202012Validator(schemas.PROFILE_PATCH).iter_errors(body)
        ):
            return _error(400, "Invalid body")
        prefs = {k: v for k, v in body.items() if k != "display_name"}
        row = res.run(
            lambda cur: _one(
                cur,
                "UPDATE users SET display_name = COALESCE(%s, display_name), profile = profile || %s, "
                "updated_at = now() WHERE id = %s RETURNING *",
                (body.get("display_name"), psycopg2.extras.Json(prefs), g.user_id),
            )
        )
        return serialize_user(row)

    @app.get("/api/v1/items")
    def list_items():
        limit = min(int(request.args.get("limit", 20)), 100)
        where, params = ["user_id = %s"], [g.user_id]
        for name in ("category", "season"):
            if request.args.get(name):
                where.append(f"{name} = %s")
                params.append(request.args[name])
        if request.args.get("cursor"):
            created_at, row_id = pagination.decode(request.args["cursor"])
            where.append("(created_at, id) < (%s, %s::uuid)")
            params += [created_at, row_id]
        sql = (
            f"SELECT {ITEM_COLUMNS} FROM items WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT %s"
        )
        rows = res.run(lambda cur: _all(cur, sql, [*params, limit + 1]))
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = pagination.encode(rows[-1]["created_at"], rows[-1]["id"])
        return {"items": [serialize_item(r) for r in rows], "next_cursor": next_cursor}

    @app.post("/api/v1/items")
    def upload():
        # The original: everything happens while the client (and one of 32 threads) waits.
        upload = request.files.get("image")
        if upload is None:
            return _error(400, "Missing image")
        try:
            original, ext = normalize(upload.read(), 40_000_000)
        except ImageError as exc:
            return _error(exc.status, "Invalid image", str(exc))
        image_key = store.put(original, ext)
        from rembg import remove

        with Image.open(io.BytesIO(original)) as img:
            cut = remove(downscale(img.convert("RGB"), settings.max_side), session=res.rembg())
        out = io.BytesIO()
        cut.save(out, "PNG", compress_level=6)
        cutout_key = store.put(out.getvalue(), "png")
        analysis = _analyze(res.openai(), settings.openai_model, cut)
        category = request.form.get("category") or analysis.get("category")

        def insert(cur):
            item = _one(
                cur,
                f"""
                INSERT INTO items (user_id, status, category, colors, season, style, pattern, material, formality,
                                   image_key, cutout_key, analysis)
                VALUES (%s, 'ready', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {ITEM_COLUMNS}
                """,
                (
                    g.user_id,
                    category,
                    psycopg2.extras.Json(analysis.get("colors", [])),
                    analysis.get("season"),
                    analysis.get("style"),
                    analysis.get("pattern"),
                    analysis.get("material"),
                    analysis.get("formality"),
                    image_key,
                    cutout_key,
                    psycopg2.extras.Json({**analysis, "source": "openai"}),
                ),
            )
            job = _done_job(cur, g.user_id, "process_item", "analyze", item_id=item["id"])
            return item, job

        item, job = res.run(insert)
        resp = jsonify({"item": serialize_item(item), "job": serialize_job(job)})
        resp.status_code = 202
        return resp

    @app.route("/api/v1/items/<item_id>", methods=["GET", "PATCH", "DELETE"])
    def item(item_id: str):
        if parse_id(item_id) is None:
            return _error(404, "Not found")
        if request.method == "GET":
            row = res.run(
                lambda cur: _one(
                    cur,
                    f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s AND user_id = %s",
                    (item_id, g.user_id),
                )
            )
        elif request.method == "PATCH":
            body = request.get_json(silent=True)
            if not isinstance(body, dict) or list(
                jsonschema.Draft202012Validator(schemas.ITEM_PATCH).iter_errors(body)
            ):
                return _error(400, "Invalid body")
            fields = [k for k in EDITABLE if k in body]
            values = [psycopg2.extras.Json(body[k]) if k == "colors" else body[k] for k in fields]
            assignments = ", ".join(f"{k} = %s" for k in fields)
            row = res.run(
                lambda cur: _one(
                    cur,
                    f"UPDATE items SET {assignments}, updated_at = clock_timestamp() "
                    f"WHERE id = %s AND user_id = %s RETURNING {ITEM_COLUMNS}",
                    (*values, item_id, g.user_id),
                )
            )
        else:
            row = res.run(
                lambda cur: _one(
                    cur, "DELETE FROM items WHERE id = %s AND user_id = %s RETURNING id", (item_id, g.user_id)
                )
            )
            return ("", 204) if row else _error(404, "Not found")
        return serialize_item(row) if row else _error(404, "Not found")

    @app.get("/api/v1/jobs/<job_id>")
    def job(job_id: str):
        if parse_id(job_id) is None:
            return _error(404, "Not found")
        row = res.run(
            lambda cur: _one(
                cur, f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s AND user_id = %s", (job_id, g.user_id)
            )
        )
        return serialize_job(row) if row else _error(404, "Not found")

    @app.get("/api/v1/capsules")
    def list_capsules():
        limit = min(int(request.args.get("limit", 20)), 100)
        rows = res.run(
            lambda cur: _all(
                cur,
                f"SELECT {CAPSULE_COLUMNS} FROM capsules WHERE user_id = %s "
                "ORDER BY created_at DESC, id DESC LIMIT %s",
                (g.user_id, limit),
            )
        )
        return {"items": [serialize_capsule(r) for r in rows], "next_cursor": None}

    @app.post("/api/v1/capsules")
    def request_capsule():
        body = request.get_json(silent=True) or {}
        wardrobe = res.run(
            lambda cur: (
                cur.execute(
                    f"SELECT {ITEM_COLUMNS} FROM items WHERE user_id = %s AND status = 'ready' "
                    "AND category IS NOT NULL ORDER BY created_at DESC, id DESC LIMIT 500",
                    (g.user_id,),
                )
                or cur.fetchall()
            )
        )
        proposed = candidates(wardrobe, occasion=body.get("occasion"), season=body.get("season"), limit=9)
        outfits = _choose(res.openai(), settings.openai_model, proposed)

        def insert(cur):
            capsule = _one(
                cur,
                f"""
                INSERT INTO capsules (user_id, state, occasion, season, size, name, description, outfits, source)
                VALUES (%s, 'ready', %s, %s, %s, %s, %s, %s, 'openai') RETURNING {CAPSULE_COLUMNS}
                """,
                (
                    g.user_id,
                    body.get("occasion"),
                    body.get("season"),
                    body.get("size") or 3,
                    (outfits[0]["name"] if outfits else "Capsule"),
                    f"{len(outfits)} outfits.",
                    psycopg2.extras.Json(outfits),
                ),
            )
            return capsule, _done_job(cur, g.user_id, "build_capsule", "capsule", capsule_id=capsule["id"])

        capsule, job = res.run(insert)
        resp = jsonify({"capsule": serialize_capsule(capsule), "job": serialize_job(job)})
        resp.status_code = 202
        return resp

    @app.get("/api/v1/capsules/<capsule_id>")
    def capsule(capsule_id: str):
        if parse_id(capsule_id) is None:
            return _error(404, "Not found")

        def select(cur):
            row = _one(
                cur,
                f"SELECT {CAPSULE_COLUMNS} FROM capsules WHERE id = %s AND user_id = %s",
                (capsule_id, g.user_id),
            )
            if row is None:
                return None, {}
            ids = sorted({i for o in row["outfits"] for i in o.get("item_ids", [])})
            items = _all(
                cur,
                f"SELECT {ITEM_COLUMNS} FROM items WHERE user_id = %s AND id = ANY(%s::uuid[])",
                (g.user_id, ids),
            )
            return row, {str(r["id"]): r for r in items}

        row, wardrobe = res.run(select)
        return serialize_capsule(row, wardrobe) if row else _error(404, "Not found")

    @app.get("/api/v1/brands")
    def search_brands():
        try:
            return brands.search(request.args.get("q", ""), min(int(request.args.get("limit", 10)), 50))
        except InvalidQuery as exc:
            return _error(400, "Invalid query", str(exc))

    @app.get("/images/<name>")
    def image(name: str):
        try:
            path = store.path(name)
        except KeyError:
            return _error(404, "Not found")
        if not path.exists():
            return _error(404, "Not found")
        resp = send_file(path, max_age=31536000, etag=True, conditional=True)
        resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return resp

    return app


def _one(cur, sql: str, params: Any) -> dict | None:
    cur.execute(sql, params)
    return cur.fetchone()


def _all(cur, sql: str, params: Any) -> list[dict]:
    cur.execute(sql, params)
    return cur.fetchall()


def _done_job(cur, user_id: int, kind: str, stage: str, **ref: Any) -> dict:
    # The work is already done when the row is written: the client's first poll sees it finished.
    return _one(
        cur,
        f"""
        INSERT INTO jobs (user_id, kind, stage, state, item_id, capsule_id, attempts, started_at, finished_at)
        VALUES (%s, %s, %s, 'succeeded', %s, %s, 1, now(), clock_timestamp()) RETURNING {JOB_COLUMNS}
        """,
        (user_id, kind, stage, ref.get("item_id"), ref.get("capsule_id")),
    )


def _structured(client: Any, model: str, messages: list, name: str, schema: dict) -> dict:
    answer = client.chat.completions.create(
        model=model,
        messages=messages,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": schema},
        },
        max_tokens=400,
    )
    return json.loads(answer.choices[0].message.content or "{}")


def _analyze(client: Any, model: str, cutout: Image.Image) -> dict:
    small = downscale(cutout.convert("RGB"), 512)
    buf = io.BytesIO()
    small.save(buf, "PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [
        {"role": "system", "content": "Describe the garment for a wardrobe app."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this garment."},
                {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
            ],
        },
    ]
    return _structured(client, model, messages, "item_analysis", ITEM_SCHEMA)


def _choose(client: Any, model: str, proposed: list[dict]) -> list[dict]:
    if not proposed:
        return []
    brief = {"candidates": [{"item_ids": [str(i) for i in o["item_ids"]]} for o in proposed]}
    messages = [
        {"role": "system", "content": "Choose, name and describe the best outfits among the candidates."},
        {"role": "user", "content": json.dumps(brief)},
    ]
    answer = _structured(client, model, messages, "capsules", CAPSULE_SCHEMA)
    known = {str(i) for o in proposed for i in o["item_ids"]}
    return [
        {
            "name": c.get("name", ""),
            "description": c.get("description", ""),
            "item_ids": [i for i in c.get("item_ids", []) if i in known],
        }
        for c in answer.get("capsules", [])
    ]


def application() -> Flask:
    """gunicorn's app factory (`bench.baseline.app:application()`)."""
    return create_app(Settings.from_env())
