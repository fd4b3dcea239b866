"""Gunicorn settings for bench/floor.py: one worker, set up as conf/gunicorn.conf.py sets the API's (the worker
class comes from the command line)."""

wsgi_app = "bench.floorapp:app"
workers = 1
worker_class = "gevent"
worker_connections = 4000
keepalive = 75
accesslog = None
errorlog = "-"
loglevel = "warning"
control_socket_disable = True


def post_fork(server, worker):
    from wardrobe.ops.serverio import send_head_with_body, snapshot_settings

    send_head_with_body()  # as the API does: one send per response
    snapshot_settings(worker.cfg)  # a request reads a dozen settings: plain attributes, not __getattr__
