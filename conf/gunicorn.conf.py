"""Gunicorn settings for the Wardrobe API: gevent workers, no preload, everything opened after the patch.

Settings come from wardrobe.config (the only reader of the environment). Why the hooks are where they are:
- no `preload_app`: the app would be imported before gevent patches sockets in the worker;
- pools, clients, Sentry and the profiler open in `post_worker_init` (after the patch), not in `post_fork`;
- `timeout` is only a heartbeat for gevent workers and bounds no request: deadlines are the app's own;
- `keepalive` stays above nginx's upstream `keepalive_timeout`, or reused connections race into 502s;
- prometheus_client's multiprocess directory is wiped at start and each dead worker is marked (`child_exit`);
  the shared profile windows' directory is wiped at start too (a dead worker's windows age out by themselves).
"""

import logging

from wardrobe.config import Config, ConfigError

try:
    _config = Config.from_env()
except ConfigError as exc:  # one clear line, not a traceback
    raise SystemExit(f"wardrobe: {exc}") from None

# Multiprocess metrics: the directory is exported before any worker imports prometheus_client.
_metrics_dir = _config.export_metrics_dir("api")
wsgi_app = "wardrobe.wsgi:app"
bind = [_config.bind]
workers = _config.gunicorn_workers
worker_class = "gevent"
worker_connections = _config.gunicorn_worker_connections
preload_app = False  # gevent must patch before the app is imported (gunicorn#2177)
backlog = 4096
# Longer than nginx's upstream keepalive_timeout (60 s), so nginx never reuses a socket we are closing.
keepalive = 75
timeout = 30  # only a heartbeat for gevent workers; request deadlines are enforced in the app
graceful_timeout = 30
# No recycling by request count: at a few hundred requests/s per worker any sane limit restarts a worker every
# minute or two, and each restart drops the keep-alive connections of every client on it (a latency spike).
max_requests = 0
# gunicorn_h1c (installed by gunicorn[fast]): request lines and headers parsed in C, not Python ("auto" falls
# back to the Python parser if the extension is missing, as on a machine without a compiler).
http_parser = "auto"
limit_request_line = 8190
limit_request_field_size = 16384  # Telegram init data can be a few KB
accesslog = None  # the app writes one JSON line per request itself
# ...and because logconfig_dict is set, gunicorn would still build its own access line for every request (about
# 5 % of a worker's CPU under load) and hand it to a logger that drops it. This class skips that.
logger_class = "wardrobe.ops.serverlog.AppWritesAccessLog"
errorlog = "-"
loglevel = _config.log_level.lower()
proc_name = "wardrobe-api"
control_socket_disable = True  # no gunicornc here; avoids clashes between several local servers
# Our formats use none of the caller's file/function/line, thread or process, so the logging module need not
# look them up for every record (the stdlib's own "Optimization" advice); forked workers inherit this.
logging._srcfile = None
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(message)s"},
        "app": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "access": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"},
        "app": {"class": "logging.StreamHandler", "formatter": "app", "stream": "ext://sys.stderr"},
    },
    "root": {"handlers": ["app"], "level": "WARNING"},
    "loggers": {
        "gunicorn.error": {"handlers": ["app"], "level": _config.log_level, "propagate": False},
        "wardrobe.access": {"handlers": ["access"], "level": _config.log_level, "propagate": False},
        "wardrobe": {"handlers": ["app"], "level": _config.log_level, "propagate": False},
    },
}


def on_starting(server):
    from wardrobe.ops.metrics import wipe_multiproc_dir
    from wardrobe.ops.profiling import shared

    wipe_multiproc_dir(_metrics_dir)  # series of a previous run's workers would be summed in forever
    # Each worker shares its closed profile windows there; a previous run's are not this box's present.
    shared.wipe(shared.directory_for(_config.data_dir, "api"))


def child_exit(server, worker):
    from wardrobe.ops.metrics import mark_worker_dead

    mark_worker_dead(worker.pid, _metrics_dir)


def post_fork(server, worker):
    from wardrobe.ops.serverio import send_head_with_body, snapshot_settings

    send_head_with_body()  # one send per response, not one for the head and one for the body
    snapshot_settings(worker.cfg)  # a request reads a dozen settings: plain attributes, not __getattr__


def post_worker_init(worker):
    # gevent has patched the process by now: make psycopg2 cooperative before the first connection.
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    worker.wsgi.services.start()
    from wardrobe.ops.serverio import freeze_startup_heap

    freeze_startup_heap()  # full collections no longer walk the ~115,000 objects every worker starts with


def worker_exit(server, worker):
    services = getattr(getattr(worker, "wsgi", None), "services", None)
    if services is not None:
        services.close()
