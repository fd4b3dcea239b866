"""Gunicorn for the baseline, with the original plan's Phase-1 tuning: gthread, 4 workers x 8 threads per 4-CPU box.

Each worker builds its pool, rembg session and OpenAI client at boot, so no request pays a model load.
"""

import os

wsgi_app = "bench.baseline.app:application()"
bind = [os.environ.get("BASELINE_BIND", "127.0.0.1:8100")]
worker_class = "gthread"
workers = 4
threads = 8
preload_app = False  # rembg/onnxruntime sessions must be made after fork
keepalive = 5
timeout = 120  # an upload runs rembg and an OpenAI call inside the request
graceful_timeout = 30
backlog = 2048
max_requests = 5000
max_requests_jitter = 500
accesslog = None
errorlog = "-"
loglevel = "warning"
proc_name = "wardrobe-baseline"
control_socket_disable = True


def post_worker_init(worker):
    worker.wsgi.extensions["baseline"].warm()
