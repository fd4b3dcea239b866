"""The one place that reads the environment: every setting, its default and its coercion.

Each setting is declared once, as a `Config` field carrying its variable, parser and default, so the
variable, the attribute and the README's table cannot drift apart. `Config.from_env()` fails start-up with
one clear line naming the variable when a value is bad.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


def _int(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be <= {maximum}")
        return value

    return parse


def _float(minimum: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return parse


def _choice(*values: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in values:
            raise ValueError(f"expected one of {', '.join(values)}")
        return value

    return parse


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _bind(raw: str) -> str:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT")
    return raw.strip()


def _url(raw: str) -> str:
    raw = raw.strip()
    if raw and "://" not in raw:
        raise ValueError("expected a URL with a scheme")
    return raw


def _str(raw: str) -> str:
    return raw.strip()


def _path(raw: str) -> Path:
    return Path(raw.strip()).expanduser().resolve()


def _image_store(raw: str) -> str:
    # Blank: the data dir's images/. A directory is resolved now, against the cwd the process started in.
    raw = raw.strip()
    if raw.startswith("s3://"):
        if not raw.removeprefix("s3://").split("/", 1)[0]:
            raise ValueError("expected s3://BUCKET[/PREFIX]")
        return raw.rstrip("/")
    if "://" in raw:
        raise ValueError("expected a directory or s3://BUCKET[/PREFIX]")
    return str(_path(raw)) if raw else ""


def _rate(raw: str) -> tuple[int, int]:
    # "30/60" = 30 requests per 60 seconds.
    count, _, seconds = raw.strip().partition("/")
    value = (int(count), int(seconds or 60))
    if value[0] < 1 or value[1] < 1:
        raise ValueError("expected COUNT/SECONDS with both >= 1")
    return value


_SETTING = "wardrobe.setting"  # the field metadata key


class _Setting(NamedTuple):
    variable: str
    parse: Callable[[str], Any]
    default: str  # as the environment would spell it, so the README can show it and it goes through `parse`


def setting(variable: str, parse: Callable[[str], Any], default: str) -> Any:
    """A `Config` field read from `variable`: the field is the setting's only declaration, so nothing can drift.

    No dataclass default: one parsed at import would resolve paths against whatever the cwd was then and
    skip the bot token fallback, so a `Config` comes from `from_env` (or a full set of values).
    """
    return dataclasses.field(metadata={_SETTING: _Setting(variable, parse, default)})


# `setting()` returns a `dataclasses.field`, which ruff cannot see through, so it takes the Path fields for
# mutable defaults evaluated once.
# ruff: noqa: RUF009
@dataclasses.dataclass(frozen=True)
class Config:
    bind: str = setting("WARDROBE_BIND", _bind, "127.0.0.1:8000")
    data_dir: Path = setting("WARDROBE_DATA_DIR", _path, "var")
    database_url: str = setting("WARDROBE_DATABASE_URL", _str, "postgresql:///wardrobe")
    db_pool_size: int = setting("WARDROBE_DB_POOL_SIZE", _int(1, 1000), "20")
    db_pool_overflow: int = setting("WARDROBE_DB_POOL_OVERFLOW", _int(0, 1000), "10")
    db_acquire_timeout: float = setting("WARDROBE_DB_ACQUIRE_TIMEOUT", _float(0.01), "2.0")
    db_connect_timeout: float = setting("WARDROBE_DB_CONNECT_TIMEOUT", _float(0.1), "3.0")
    db_statement_timeout_ms: int = setting("WARDROBE_DB_STATEMENT_TIMEOUT_MS", _int(1), "5000")
    db_idle_tx_timeout_ms: int = setting("WARDROBE_DB_IDLE_TX_TIMEOUT_MS", _int(1), "10000")
    # transaction: behind PgBouncer in transaction mode (timeouts per transaction, nothing kept in the session)
    db_pooler: str = setting("WARDROBE_DB_POOLER", _choice("none", "transaction"), "none")
    # Streaming replicas for the reads that may be a moment old (store/replicas.py); none: all on the primary
    database_replica_urls: tuple[str, ...] = setting("WARDROBE_DATABASE_REPLICA_URLS", _list, "")
    # Seconds of the primary's writes a replica may lack and still be read (it is skipped beyond)
    replica_max_lag: float = setting("WARDROBE_REPLICA_MAX_LAG", _float(0.0), "5")
    telegram_bot_token: str = setting("WARDROBE_TELEGRAM_BOT_TOKEN", _str, "")
    init_data_max_age: int = setting("WARDROBE_INIT_DATA_MAX_AGE", _int(0), "86400")
    max_upload_bytes: int = setting("WARDROBE_MAX_UPLOAD_BYTES", _int(1024), str(10 * 1024 * 1024))
    max_image_pixels: int = setting("WARDROBE_MAX_IMAGE_PIXELS", _int(1), str(40_000_000))
    image_threads: int = setting("WARDROBE_IMAGE_THREADS", _int(1, 64), "2")
    image_store: str = setting("WARDROBE_IMAGE_STORE", _image_store, "")
    image_base_url: str = setting("WARDROBE_IMAGE_BASE_URL", _url, "")
    s3_endpoint_url: str = setting("WARDROBE_S3_ENDPOINT_URL", _url, "")
    s3_region: str = setting("WARDROBE_S3_REGION", _str, "us-east-1")
    s3_access_key_id: str = setting("WARDROBE_S3_ACCESS_KEY_ID", _str, "")
    s3_secret_access_key: str = setting("WARDROBE_S3_SECRET_ACCESS_KEY", _str, "")
    s3_addressing_style: str = setting(
        "WARDROBE_S3_ADDRESSING_STYLE", _choice("path", "virtual", "auto"), "path"
    )
    s3_connect_timeout: float = setting("WARDROBE_S3_CONNECT_TIMEOUT", _float(0.1), "2")
    s3_read_timeout: float = setting("WARDROBE_S3_READ_TIMEOUT", _float(0.1), "5")
    s3_max_attempts: int = setting("WARDROBE_S3_MAX_ATTEMPTS", _int(1, 10), "3")
    s3_pool_size: int = setting("WARDROBE_S3_POOL_SIZE", _int(1, 10000), "100")
    redis_url: str = setting("WARDROBE_REDIS_URL", _url, "redis://127.0.0.1:6379/0")
    redis_pool_size: int = setting("WARDROBE_REDIS_POOL_SIZE", _int(1, 10000), "50")
    redis_timeout: float = setting("WARDROBE_REDIS_TIMEOUT", _float(0.01), "0.5")
    memcached_servers: tuple[str, ...] = setting("WARDROBE_MEMCACHED_SERVERS", _list, "127.0.0.1:11211")
    memcached_timeout: float = setting("WARDROBE_MEMCACHED_TIMEOUT", _float(0.01), "0.2")
    memcached_pool_size: int = setting("WARDROBE_MEMCACHED_POOL_SIZE", _int(1, 10000), "32")
    cache_local_ttl: float = setting("WARDROBE_CACHE_LOCAL_TTL", _float(0.0), "2.0")
    version_cache_ttl: int = setting("WARDROBE_VERSION_CACHE_TTL", _int(0, 86400), "0")
    capsule_ttl: int = setting("WARDROBE_CAPSULE_TTL", _int(1), "86400")
    openai_api_keys: tuple[str, ...] = setting("WARDROBE_OPENAI_API_KEYS", _list, "")
    openai_base_url: str = setting("WARDROBE_OPENAI_BASE_URL", _url, "https://api.openai.com/v1")
    openai_model: str = setting("WARDROBE_OPENAI_MODEL", _str, "gpt-4o-mini")
    openai_rpm: int = setting("WARDROBE_OPENAI_RPM", _int(1), "500")
    openai_tpm: int = setting("WARDROBE_OPENAI_TPM", _int(1), "200000")
    openai_timeout: float = setting("WARDROBE_OPENAI_TIMEOUT", _float(0.1), "30")
    openai_connect_timeout: float = setting("WARDROBE_OPENAI_CONNECT_TIMEOUT", _float(0.1), "5")
    openai_max_wait: float = setting("WARDROBE_OPENAI_MAX_WAIT", _float(0.0), "10")
    openai_headroom: float = setting("WARDROBE_OPENAI_HEADROOM", _float(0.0), "0.1")
    openai_window: float = setting("WARDROBE_OPENAI_WINDOW", _float(0.1), "60")
    rembg_model: str = setting("WARDROBE_REMBG_MODEL", _str, "u2netp")
    u2net_home: Path = setting("WARDROBE_U2NET_HOME", _path, "var/models")
    image_max_side: int = setting("WARDROBE_IMAGE_MAX_SIDE", _int(64, 8192), "1024")
    image_workers: int = setting("WARDROBE_IMAGE_WORKERS", _int(1, 64), "1")
    # per images process; 0: the box's cores shared out among the processes
    onnx_threads: int = setting("WARDROBE_ONNX_THREADS", _int(0, 64), "0")
    # auto: bf16 where the CPU does it natively, else f32, both on OpenVINO; f32: onnxruntime
    cutout_precision: str = setting("WARDROBE_CUTOUT_PRECISION", _choice("auto", "bf16", "f32"), "auto")
    image_worker_max_tasks: int = setting("WARDROBE_IMAGE_WORKER_MAX_TASKS", _int(1), "200")
    ai_workers: int = setting("WARDROBE_AI_WORKERS", _int(1, 1000), "32")
    job_max_attempts: int = setting("WARDROBE_JOB_MAX_ATTEMPTS", _int(1, 100), "5")
    job_lease_seconds: int = setting("WARDROBE_JOB_LEASE_SECONDS", _int(5), "300")
    reaper_interval: float = setting("WARDROBE_REAPER_INTERVAL", _float(0.5), "15")
    reaper_grace: float = setting("WARDROBE_REAPER_GRACE", _float(0.0), "10")
    brand_api_url: str = setting("WARDROBE_BRAND_API_URL", _url, "")
    brand_api_timeout: float = setting("WARDROBE_BRAND_API_TIMEOUT", _float(0.05), "0.8")
    brand_api_concurrency: int = setting("WARDROBE_BRAND_API_CONCURRENCY", _int(1, 1000), "10")
    rate_limit_upload: tuple[int, int] = setting("WARDROBE_RATE_LIMIT_UPLOAD", _rate, "30/60")
    rate_limit_capsule: tuple[int, int] = setting("WARDROBE_RATE_LIMIT_CAPSULE", _rate, "10/60")
    rate_limit_brands: tuple[int, int] = setting("WARDROBE_RATE_LIMIT_BRANDS", _rate, "60/60")
    metrics_token: str = setting("WARDROBE_METRICS_TOKEN", _str, "")
    worker_metrics_bind: str = setting("WARDROBE_WORKER_METRICS_BIND", _str, "")
    sentry_dsn: str = setting("WARDROBE_SENTRY_DSN", _str, "")
    sentry_environment: str = setting("WARDROBE_SENTRY_ENVIRONMENT", _str, "development")
    profile_hz: int = setting("WARDROBE_PROFILE_HZ", _int(0, 1000), "100")
    profile_keep_minutes: float = setting("WARDROBE_PROFILE_KEEP_MINUTES", _float(1), "15")
    profile_clock: str = setting("WARDROBE_PROFILE_CLOCK", _choice("native", "thread"), "native")
    pyroscope_url: str = setting("WARDROBE_PYROSCOPE_URL", _url, "")
    log_level: str = setting("WARDROBE_LOG_LEVEL", _str, "INFO")
    gunicorn_workers: int = setting("GUNICORN_WORKERS", _int(1, 256), str(os.cpu_count() or 1))
    gunicorn_worker_connections: int = setting("GUNICORN_WORKER_CONNECTIONS", _int(1, 100_000), "2000")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name, parse, default = field.metadata[_SETTING]
            raw = environ.get(name)
            # A blank value means "the default", except for lists, where it means "none" (e.g. no memcached).
            if raw is None or (raw.strip() == "" and parse is not _list):
                raw = default
            try:
                values[field.name] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None
        values.update(overrides)
        config = cls(**values)
        if not config.telegram_bot_token:
            config = dataclasses.replace(config, telegram_bot_token=config.local_bot_token())
        return config

    @property
    def images_dir(self) -> Path:
        """The local image store's directory (unused when `image_store` is an s3:// bucket)."""
        if self.image_store and not self.image_store.startswith("s3://"):
            return Path(self.image_store)
        return self.data_dir / "images"

    @property
    def metrics_dir(self) -> Path:
        return self.data_dir / "metrics"

    def metrics_dir_for(self, role: str) -> Path:
        return self.metrics_dir / role

    def export_metrics_dir(self, role: str) -> str:
        """Point prometheus_client's multiprocess mode at this role's directory, before it is imported.

        Each role (api, worker-images, worker-ai) has its own, so one's start-up wipe never eats another's; a
        directory already given in PROMETHEUS_MULTIPROC_DIR (the systemd unit's) is kept.
        """
        preset = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # e.g. systemd's RuntimeDirectory wins
        path = Path(preset) if preset else self.metrics_dir_for(role)
        path.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
        return str(path)

    @staticmethod
    def exported_metrics_dir() -> str | None:
        """The multiprocess metrics directory this process was started with, if any."""
        return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

    def local_bot_token(self) -> str:
        """A development bot token kept under the data dir, so `make token` and the API agree."""
        path = self.data_dir / "dev-bot-token"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        token = f"{secrets.randbelow(10**9) + 10**9}:{secrets.token_urlsafe(27)}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(token + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)
        return path.read_text().strip()


def documented_settings() -> list[tuple[str, str]]:
    """(variable, default) pairs, for the README's configuration table and its test."""
    specs = (field.metadata[_SETTING] for field in dataclasses.fields(Config))
    return [(spec.variable, spec.default) for spec in specs]
