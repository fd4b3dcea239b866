"""`create_app(config)` builds the API and everything it needs; wsgi.py is the only caller in production.

Nothing here connects to anything: pools and clients open lazily on first use, and the threads (profiler,
Pyroscope push, process metrics) start in `Services.start()`, which gunicorn's `post_worker_init` calls after
gevent has patched the process.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import falcon
import falcon.inspect
from PIL import Image

from wardrobe import jsonio, queue
from wardrobe.clients.brands import CatalogueBrands, CircuitBreaker, HttpBrandClient
from wardrobe.clients.cache import Cache, LocalLRU, NullCache
from wardrobe.clients.images import ImageStore
from wardrobe.clients.objectstore import image_store
from wardrobe.clients.offload import ThreadOffload
from wardrobe.clients.ratelimit import UserRateLimiter
from wardrobe.clients.redis_client import connect as connect_redis
from wardrobe.config import Config
from wardrobe.migrate import SchemaCheck
from wardrobe.ops import metrics, observability
from wardrobe.ops.profiling import (
    FlamegraphResource,
    PprofResource,
    Profiler,
    ProfilingMiddleware,
    PyroscopePusher,
    build_profiler,
)
from wardrobe.queue import Dispatcher
from wardrobe.store.capsules import Capsules
from wardrobe.store.db import Pool
from wardrobe.store.items import Items
from wardrobe.store.jobs import JobLedger, Jobs
from wardrobe.store.replicas import with_replicas
from wardrobe.store.users import Users, VersionCache
from wardrobe.web import errors, middleware
from wardrobe.web.auth import InitDataValidator
from wardrobe.web.http_cache import JsonValidators
from wardrobe.web.openapi import OpenAPI
from wardrobe.web.reads import WardrobeReads
from wardrobe.web.resources.brands import Brands
from wardrobe.web.resources.capsules import Capsule, CapsuleCollection
from wardrobe.web.resources.health import Health, Ready
from wardrobe.web.resources.images import ImageFiles
from wardrobe.web.resources.items import Item, ItemCollection
from wardrobe.web.resources.jobs import Job
from wardrobe.web.resources.me import Me
from wardrobe.web.resources.static import StaticFiles
from wardrobe.web.throttle import Throttle

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Services:
    """Everything with a connection or a thread behind it, built once per worker process."""

    config: Config
    pool: Pool
    users: Users
    items: Items
    jobs: Jobs
    capsules: Capsules
    store: ImageStore  # or objectstore.S3ImageStore: the same interface
    offload: Any
    redis: Any
    dispatcher: Any
    cache: Any
    brands: Any
    limiter: UserRateLimiter
    profiler: Profiler | None
    pusher: PyroscopePusher | None

    @classmethod
    def build(cls, config: Config, dispatcher: Any = None, **overrides: Any) -> Services:
        """`dispatcher`: what sends committed jobs (default: the Huey queues on this Redis, enqueue-only)."""
        pool = overrides.pop("pool", None) or Pool.from_config(
            config, config.database_url, application_name="wardrobe-api", observer=observability.PoolMetrics()
        )
        redis = overrides.pop("redis", None) or connect_redis(
            config.redis_url, pool_size=config.redis_pool_size, timeout=config.redis_timeout
        )
        cache = overrides.pop("cache", None) or _cache(config)
        # With replicas: reads that may be a moment old go to one that has the user's writes (store/replicas.py).
        pool = with_replicas(
            config, pool, cache, application_name="wardrobe-api", observer=metrics.ReplicaMetrics()
        )
        caching = config.version_cache_ttl and not isinstance(cache, NullCache)
        versions = VersionCache(cache, config.version_cache_ttl) if caching else None
        writes = versions.publishing(pool) if versions else pool  # bumps reach memcached after each commit
        jobs = Jobs(pool)
        profiler, pusher = build_profiler(config, role="api", share=True)
        values: dict[str, Any] = {
            "config": config,
            "pool": pool,
            "users": Users(writes, versions=versions),
            "items": Items(writes, max_attempts=config.job_max_attempts),
            "jobs": jobs,
            "capsules": Capsules(writes, max_attempts=config.job_max_attempts),
            "store": image_store(config),  # its client connects on first use, after the fork
            "offload": ThreadOffload(config.image_threads),
            "redis": redis,
            "dispatcher": dispatcher or enqueuer(redis, jobs),
            "cache": cache,
            "brands": _brands(config, cache),
            "limiter": UserRateLimiter(
                redis,
                rules={
                    "upload": config.rate_limit_upload,
                    "capsule": config.rate_limit_capsule,
                    "brands": config.rate_limit_brands,
                },
                on_fail_open=observability.rate_limit_fail_open,
            ),
            "profiler": profiler,
            "pusher": pusher,
        }
        values.update(overrides)
        return cls(**values)

    def start(self) -> None:
        """In each worker after fork: start the threads and warm what can be warmed."""
        observability.init_sentry(self.config.sentry_dsn, self.config.sentry_environment, "api")
        if self.pusher is not None:
            self.pusher.start()
        if self.profiler is not None:
            self.profiler.start()
        metrics.ProcessUsage("api").start(interval=15)
        metrics.live_gauges().start(interval=1.0)
        try:
            self.pool.ping()
        except Exception as exc:  # noqa: BLE001 - a dependency down at start must not kill the worker
            log.warning("database not reachable at start: %s", exc)

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
        if self.pusher is not None:
            self.pusher.stop()
        self.pool.close()
        self.redis.connection_pool.disconnect()
        if hasattr(self.brands, "close"):
            self.brands.close()

    def dispatch(self, jobs: list[dict[str, Any]]) -> None:
        """After the commit: hand the jobs to Redis; if it is down, the reaper sends them later."""
        self.dispatcher.send(jobs)

    def cache_health(self) -> None:
        state = self.cache.ping()
        if state == "degraded":
            raise ConnectionError("memcached unreachable")


def _cache(config: Config) -> Any:
    if not config.memcached_servers:
        return NullCache(on_result=observability.cache_result)
    local = LocalLRU(maxsize=2048, ttl=config.cache_local_ttl) if config.cache_local_ttl > 0 else None
    return Cache(
        config.memcached_servers,
        max_pool_size=config.memcached_pool_size,
        connect_timeout=config.memcached_timeout,
        timeout=config.memcached_timeout,
        local=local,
        on_error=observability.cache_error,
        on_result=observability.cache_result,
    )


def _brands(config: Config, cache: Any) -> Any:
    catalogue = CatalogueBrands()
    if not config.brand_api_url:
        return catalogue  # the embedded default: the bundled catalogue of well-known brands
    return HttpBrandClient(
        config.brand_api_url,
        cache=cache,
        fallback=catalogue,
        timeout=config.brand_api_timeout,
        max_concurrency=config.brand_api_concurrency,
        breaker=CircuitBreaker(on_state_change=observability.breaker_state),
        on_outcome=observability.brand_outcome,
    )


class WardrobeApp(falcon.App):
    """falcon.App with a place for its services, so gunicorn hooks can start and close them."""

    services: Services


def enqueuer(redis: Any, jobs: Jobs) -> Dispatcher:
    """The API's dispatcher: the tasks declared without a runtime, so this process can only enqueue them."""
    return Dispatcher(queue.register(queue.build(redis)), jobs, on_error=observability.dependency_error)


# Route templates anyone may call; every other route needs Telegram init data (a new route is private until it is
# listed here). /metrics and /debug/* check for an operator themselves.
PUBLIC_ROUTES = frozenset(
    {
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/images/{name}",
        "/app",  # the Mini App's page: it signs in with the init data Telegram hands it
        "/app/{name}",
        "/metrics",
        "/debug/pprof/profile",
        "/debug/flamegraph",
    }
)


def create_app(
    config: Config, services: Services | None = None, dispatcher: Dispatcher | None = None
) -> WardrobeApp:
    """The API. `services` and `dispatcher` are seams for tests; by default both are built from `config`."""
    services = services or Services.build(config, dispatcher=dispatcher)
    # The decompression-bomb guard that Pillow itself applies; our own check runs before it.
    Image.MAX_IMAGE_PIXELS = config.max_image_pixels

    validator = InitDataValidator(config.telegram_bot_token, config.init_data_max_age)
    stack = [
        middleware.RequestId(),
        metrics.MetricsMiddleware(),
        *([ProfilingMiddleware()] if services.profiler is not None else []),
        middleware.TelegramAuth(validator, services.users, public=PUBLIC_ROUTES),
        *([observability.SentryTags()] if config.sentry_dsn else []),
        JsonValidators(),
    ]
    app = WardrobeApp(middleware=stack, cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    json_handler = jsonio.media_handler()
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    form = app.req_options.media_handlers[falcon.MEDIA_MULTIPART].parse_options
    form.max_body_part_buffer_size = 64 * 1024  # text fields only; the image is streamed with its own bound
    form.max_body_part_count = 8
    errors.install(app, forget_user=services.users.forget)

    reads = WardrobeReads(
        services.users,
        services.items,
        services.capsules,
        services.cache,
        config.capsule_ttl,
        image_url=services.store.url,
    )
    limit = Throttle(services.limiter)
    guard = observability.OperatorGuard(config.metrics_token)

    app.add_route("/healthz", Health())
    app.add_route(
        "/readyz",
        Ready(
            {
                "postgres": (services.pool.ping, True),
                # Not ready on a database that lacks this release's migrations (site.yml runs them first).
                "schema": (SchemaCheck(services.pool), True),
                "redis": (services.redis.ping, False),  # uploads still succeed: the reaper enqueues later
                "memcached": (services.cache_health, False),  # reads fall through to Postgres
                # A bucket down is down for every backend alike (uploads answer 503 themselves): degraded; a
                # local image directory failing is this box's alone: unready, so traffic goes elsewhere.
                "images": (services.store.probe, not services.store.shared),
            },
            operator=guard,
        ),
    )
    app.add_route("/api/v1/me", Me(services.users))
    app.add_route(
        "/api/v1/items",
        ItemCollection(
            services.items,
            services.store,
            services.dispatch,
            reads,
            limit,
            max_upload_bytes=config.max_upload_bytes,
            max_image_pixels=config.max_image_pixels,
            offload=services.offload,
        ),
    )
    app.add_route("/api/v1/items/{item_id}", Item(services.items, services.store.url))
    app.add_route("/api/v1/jobs/{job_id}", Job(services.jobs))
    app.add_route("/api/v1/capsules", CapsuleCollection(services.capsules, services.dispatch, reads, limit))
    app.add_route("/api/v1/capsules/{capsule_id}", Capsule(services.capsules, services.store.url))
    app.add_route("/api/v1/brands", Brands(services.brands, limit))
    app.add_route("/images/{name}", ImageFiles(services.store, config.image_base_url))
    page = StaticFiles(image_base_url=config.image_base_url)
    app.add_route("/app", page)  # "/app/" too: trailing slashes are stripped before routing
    app.add_route("/app/{name}", page)
    app.add_route(
        "/metrics",
        metrics.MetricsResource(
            guard,
            config.exported_metrics_dir(),
            metrics.ProcessUsage("api"),
            # Read at scrape time from the API's own pool: the box shows its queues with or without consumers.
            probes=[observability.QueueBacklog(JobLedger(services.pool).backlog)],
        ),
    )
    if services.profiler is not None:
        app.add_route("/debug/pprof/profile", PprofResource(services.profiler, guard))
        app.add_route("/debug/flamegraph", FlamegraphResource(services.profiler, guard))
    served = {route.path for route in falcon.inspect.inspect_routes(app)} | {"/openapi.json"}
    app.add_route("/openapi.json", OpenAPI(served))
    app.services = services  # reachable from gunicorn hooks via worker.wsgi
    return app
