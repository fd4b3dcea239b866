"""The one place that reads the environment: every setting, its default and its coercion.

`Config.from_env()` fails start-up with one clear line naming the variable when a value is bad.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


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


def _rate(raw: str) -> tuple[int, int]:
    # "30/60" = 30 requests per 60 seconds.
    count, _, seconds = raw.strip().partition("/")
    value = (int(count), int(seconds or 60))
    if value[0] < 1 or value[1] < 1:
        raise ValueError("expected COUNT/SECONDS with both >= 1")
    return value


# (environment variable, field, parser, default as the environment would spell it)
_SETTINGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("WARDROBE_BIND", "bind", _bind, "127.0.0.1:8000"),
    ("WARDROBE_DATA_DIR", "data_dir", _path, "var"),
    ("WARDROBE_DATABASE_URL", "database_url", _str, "postgresql:///wardrobe"),
    ("WARDROBE_DB_POOL_SIZE", "db_pool_size", _int(1, 1000), "20"),
    ("WARDROBE_DB_POOL_OVERFLOW", "db_pool_overflow", _int(0, 1000), "10"),
    ("WARDROBE_DB_ACQUIRE_TIMEOUT", "db_acquire_timeout", _float(0.01), "2.0"),
    ("WARDROBE_DB_CONNECT_TIMEOUT", "db_connect_timeout", _float(0.1), "3.0"),
    ("WARDROBE_DB_STATEMENT_TIMEOUT_MS", "db_statement_timeout_ms", _int(1), "5000"),
    ("WARDROBE_DB_IDLE_TX_TIMEOUT_MS", "db_idle_tx_timeout_ms", _int(1), "10000"),
    ("WARDROBE_TELEGRAM_BOT_TOKEN", "telegram_bot_token", _str, ""),
    ("WARDROBE_INIT_DATA_MAX_AGE", "init_data_max_age", _int(0), "86400"),
    ("WARDROBE_MAX_UPLOAD_BYTES", "max_upload_bytes", _int(1024), str(10 * 1024 * 1024)),
    ("WARDROBE_MAX_IMAGE_PIXELS", "max_image_pixels", _int(1), str(40_000_000)),
    ("WARDROBE_IMAGE_THREADS", "image_threads", _int(1, 64), "2"),
    ("WARDROBE_REDIS_URL", "redis_url", _url, "redis://127.0.0.1:6379/0"),
    ("WARDROBE_REDIS_POOL_SIZE", "redis_pool_size", _int(1, 10000), "50"),
    ("WARDROBE_REDIS_TIMEOUT", "redis_timeout", _float(0.01), "0.5"),
    ("WARDROBE_MEMCACHED_SERVERS", "memcached_servers", _list, "127.0.0.1:11211"),
    ("WARDROBE_MEMCACHED_TIMEOUT", "memcached_timeout", _float(0.01), "0.2"),
    ("WARDROBE_MEMCACHED_POOL_SIZE", "memcached_pool_size", _int(1, 10000), "32"),
    ("WARDROBE_CACHE_LOCAL_TTL", "cache_local_ttl", _float(0.0), "2.0"),
    ("WARDROBE_CAPSULE_TTL", "capsule_ttl", _int(1), "86400"),
    ("WARDROBE_OPENAI_API_KEYS", "openai_api_keys", _list, ""),
    ("WARDROBE_OPENAI_BASE_URL", "openai_base_url", _url, "https://api.openai.com/v1"),
    ("WARDROBE_OPENAI_MODEL", "openai_model", _str, "gpt-4o-mini"),
    ("WARDROBE_OPENAI_RPM", "openai_rpm", _int(1), "500"),
    ("WARDROBE_OPENAI_TPM", "openai_tpm", _int(1), "200000"),
    ("WARDROBE_OPENAI_TIMEOUT", "openai_timeout", _float(0.1), "30"),
    ("WARDROBE_OPENAI_CONNECT_TIMEOUT", "openai_connect_timeout", _float(0.1), "5"),
    ("WARDROBE_OPENAI_MAX_WAIT", "openai_max_wait", _float(0.0), "10"),
    ("WARDROBE_OPENAI_HEADROOM", "openai_headroom", _float(0.0), "0.1"),
    ("WARDROBE_OPENAI_WINDOW", "openai_window", _float(0.1), "60"),
    ("WARDROBE_REMBG_MODEL", "rembg_model", _str, "u2netp"),
    ("WARDROBE_U2NET_HOME", "u2net_home", _path, "var/models"),
    ("WARDROBE_IMAGE_MAX_SIDE", "image_max_side", _int(64, 8192), "1024"),
    ("WARDROBE_IMAGE_WORKERS", "image_workers", _int(1, 64), "1"),
    ("WARDROBE_ONNX_THREADS", "onnx_threads", _int(0, 64), "0"),
    ("WARDROBE_CUTOUT_PRECISION", "cutout_precision", _choice("auto", "bf16", "f32"), "auto"),
    ("WARDROBE_IMAGE_WORKER_MAX_TASKS", "image_worker_max_tasks", _int(1), "200"),
    ("WARDROBE_IMAGE_CATCHUP_SECONDS", "image_catchup_seconds", _float(0), "10"),
    ("WARDROBE_AI_WORKERS", "ai_workers", _int(1, 1000), "32"),
    ("WARDROBE_JOB_MAX_ATTEMPTS", "job_max_attempts", _int(1, 100), "5"),
    ("WARDROBE_JOB_LEASE_SECONDS", "job_lease_seconds", _int(5), "300"),
    ("WARDROBE_REAPER_INTERVAL", "reaper_interval", _float(0.5), "15"),
    ("WARDROBE_REAPER_GRACE", "reaper_grace", _float(0.0), "10"),
    ("WARDROBE_BRAND_API_URL", "brand_api_url", _url, ""),
    ("WARDROBE_BRAND_API_TIMEOUT", "brand_api_timeout", _float(0.05), "0.8"),
    ("WARDROBE_BRAND_API_CONCURRENCY", "brand_api_concurrency", _int(1, 1000), "10"),
    ("WARDROBE_RATE_LIMIT_UPLOAD", "rate_limit_upload", _rate, "30/60"),
    ("WARDROBE_RATE_LIMIT_CAPSULE", "rate_limit_capsule", _rate, "10/60"),
    ("WARDROBE_RATE_LIMIT_BRANDS", "rate_limit_brands", _rate, "60/60"),
    ("WARDROBE_METRICS_TOKEN", "metrics_token", _str, ""),
    ("WARDROBE_WORKER_METRICS_BIND", "worker_metrics_bind", _str, ""),
    ("WARDROBE_SENTRY_DSN", "sentry_dsn", _str, ""),
    ("WARDROBE_SENTRY_ENVIRONMENT", "sentry_environment", _str, "development"),
    ("WARDROBE_PROFILE_HZ", "profile_hz", _int(0, 1000), "100"),
    ("WARDROBE_PROFILE_KEEP_MINUTES", "profile_keep_minutes", _float(1), "15"),
    ("WARDROBE_PROFILE_CLOCK", "profile_clock", _choice("native", "thread"), "native"),
    ("WARDROBE_PYROSCOPE_URL", "pyroscope_url", _url, ""),
    ("WARDROBE_LOG_LEVEL", "log_level", _str, "INFO"),
    ("GUNICORN_WORKERS", "gunicorn_workers", _int(1, 256), str(os.cpu_count() or 1)),
    ("GUNICORN_WORKER_CONNECTIONS", "gunicorn_worker_connections", _int(1, 100_000), "2000"),
]


@dataclasses.dataclass(frozen=True)
class Config:
    bind: str
    data_dir: Path
    database_url: str
    db_pool_size: int
    db_pool_overflow: int
    db_acquire_timeout: float
    db_connect_timeout: float
    db_statement_timeout_ms: int
    db_idle_tx_timeout_ms: int
    telegram_bot_token: str
    init_data_max_age: int
    max_upload_bytes: int
    max_image_pixels: int
    image_threads: int
    redis_url: str
    redis_pool_size: int
    redis_timeout: float
    memcached_servers: tuple[str, ...]
    memcached_timeout: float
    memcached_pool_size: int
    cache_local_ttl: float
    capsule_ttl: int
    openai_api_keys: tuple[str, ...]
    openai_base_url: str
    openai_model: str
    openai_rpm: int
    openai_tpm: int
    openai_timeout: float
    openai_connect_timeout: float
    openai_max_wait: float
    openai_headroom: float
    openai_window: float
    rembg_model: str
    u2net_home: Path
    image_max_side: int
    image_workers: int
    onnx_threads: int  # per images process; 0: the box's cores shared out among the processes
    cutout_precision: (
        str  # auto: bf16 where the CPU does it natively, else f32, both on OpenVINO; f32: onnxruntime
    )
    image_worker_max_tasks: int
    image_catchup_seconds: float  # a niced images worker runs at nice 0 while cutouts wait longer; 0: never
    ai_workers: int
    job_max_attempts: int
    job_lease_seconds: int
    reaper_interval: float
    reaper_grace: float
    brand_api_url: str
    brand_api_timeout: float
    brand_api_concurrency: int
    rate_limit_upload: tuple[int, int]
    rate_limit_capsule: tuple[int, int]
    rate_limit_brands: tuple[int, int]
    metrics_token: str
    worker_metrics_bind: str
    sentry_dsn: str
    sentry_environment: str
    profile_hz: int
    profile_keep_minutes: float
    profile_clock: str
    pyroscope_url: str
    log_level: str
    gunicorn_workers: int
    gunicorn_worker_connections: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field, parse, default in _SETTINGS:
            raw = environ.get(name)
            # A blank value means "the default", except for lists, where it means "none" (e.g. no memcached).
            if raw is None or (raw.strip() == "" and parse is not _list):
                raw = default
            try:
                values[field] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None
        values.update(overrides)
        config = cls(**values)
        if not config.telegram_bot_token:
            config = dataclasses.replace(config, telegram_bot_token=config.local_bot_token())
        return config

    @property
    def images_dir(self) -> Path:
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
    return [(name, default) for name, _field, _parse, default in _SETTINGS]
