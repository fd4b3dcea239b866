"""`create_app(config)` builds the API and everything it needs; wsgi.py is the only caller in production.

Nothing here connects to anything: pools and clients open lazily on first use or in `Services.start()`, which
gunicorn's `post_worker_init` calls after gevent has patched the process.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import falcon
import falcon.inspect
from PIL import Image

from . import errors, middleware
from .auth import InitDataValidator
from .capsules import Capsules
from .config import Config
from .db import Pool
from .images import ImageStore
from .items import Items
from .jobs import Jobs
from .offload import ThreadOffload
from .openapi import OpenAPI
from .redis_client import connect as connect_redis
from .resources.capsules import Capsule, CapsuleCollection
from .resources.health import Health, Ready
from .resources.images import ImageFiles
from .resources.items import Item, ItemCollection
from .resources.jobs import Job
from .resources.me import Me
from .users import Users

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Services:
    """Everything with a connection or a thread behind it, built once per worker process."""

    config: Config
    pool: Pool
    users: Users
    items: Items
    jobs: Jobs
    store: ImageStore
    offload: Any
    capsules: Capsules
    redis: Any
    dispatcher: Any

    @classmethod
    def build(cls, config: Config, **overrides: Any) -> Services:
        pool = overrides.pop("pool", None) or Pool(
            config.database_url,
            size=config.db_pool_size,
            overflow=config.db_pool_overflow,
            acquire_timeout=config.db_acquire_timeout,
            connect_timeout=config.db_connect_timeout,
            statement_timeout_ms=config.db_statement_timeout_ms,
            idle_tx_timeout_ms=config.db_idle_tx_timeout_ms,
            application_name="wardrobe-api",
        )
        from tasks import queue, work
        from tasks.dispatch import Dispatcher

        redis = overrides.pop("redis", None) or connect_redis(
            config.redis_url, pool_size=config.redis_pool_size, timeout=config.redis_timeout
        )
        jobs = Jobs(pool)
        values: dict[str, Any] = {
            "config": config,
            "pool": pool,
            "users": Users(pool),
            "items": Items(pool, max_attempts=config.job_max_attempts),
            "jobs": jobs,
            "store": ImageStore(config.images_dir),
            "offload": ThreadOffload(config.image_threads),
            "capsules": Capsules(pool, max_attempts=config.job_max_attempts),
            "redis": redis,
            # The API only enqueues: the tasks are registered without a runtime, so no model is ever loaded.
            "dispatcher": Dispatcher(work.register(queue.build(redis)), jobs),
        }
        values.update(overrides)
        return cls(**values)

    def start(self) -> None:
        """Warm what can be warmed; failures here are not fatal (the service recovers when deps return)."""
        try:
            self.pool.ping()
        except Exception as exc:  # noqa: BLE001 - a dependency down at start must not kill the worker
            log.warning("database not reachable at start: %s", exc)

    def close(self) -> None:
        self.pool.close()
        self.redis.connection_pool.disconnect()

    def dispatch(self, jobs: list[dict[str, Any]], req: falcon.Request | None = None) -> None:
        """After the commit: hand the jobs to Redis; if it is down, the reaper sends them later."""
        self.dispatcher.send(jobs)


class WardrobeApp(falcon.App):
    """falcon.App with a place for its services, so gunicorn hooks can start and close them."""

    services: Services


def create_app(config: Config, services: Services | None = None) -> WardrobeApp:
    services = services or Services.build(config)
    # The decompression-bomb guard that Pillow itself applies; our own check runs before it.
    Image.MAX_IMAGE_PIXELS = config.max_image_pixels

    validator = InitDataValidator(config.telegram_bot_token, config.init_data_max_age)
    app = WardrobeApp(
        middleware=[middleware.RequestId(), middleware.TelegramAuth(validator, services.users)],
        cors_enable=False,
    )
    app.req_options.strip_url_path_trailing_slash = True
    form = app.req_options.media_handlers[falcon.MEDIA_MULTIPART].parse_options
    form.max_body_part_buffer_size = 64 * 1024  # text fields only; the image is streamed with its own bound
    form.max_body_part_count = 8
    errors.install(app)

    app.add_route("/healthz", Health())
    app.add_route(
        "/readyz",
        Ready({"postgres": (services.pool.ping, True), "redis": (services.redis.ping, False)}),
    )
    app.add_route("/api/v1/me", Me(services.users))
    app.add_route(
        "/api/v1/items",
        ItemCollection(
            services.items,
            services.store,
            max_upload_bytes=config.max_upload_bytes,
            max_image_pixels=config.max_image_pixels,
            offload=services.offload,
            after_commit=services.dispatch,
        ),
    )
    app.add_route("/api/v1/items/{item_id}", Item(services.items))
    app.add_route("/api/v1/jobs/{job_id}", Job(services.jobs))
    app.add_route("/api/v1/capsules", CapsuleCollection(services.capsules, services.dispatch))
    app.add_route("/api/v1/capsules/{capsule_id}", Capsule(services.capsules))
    app.add_route("/images/{name}", ImageFiles(services.store))
    served = {route.path for route in falcon.inspect.inspect_routes(app)} | {"/openapi.json"}
    app.add_route("/openapi.json", OpenAPI(served))
    app.services = services  # reachable from gunicorn hooks via worker.wsgi
    return app
