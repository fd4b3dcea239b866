"""Gunicorn's response writer for the API: the status line, the headers and the body leave in one send.

Gunicorn writes the head of every response in one `sendall` and its body in another. On a keep-alive
connection that is two syscalls, two TCP segments and two wake-ups of the client for each small JSON answer:
about a tenth of an API worker's CPU went into `send` at 1,000 users (py-spy). When the first body write
finds the head unsent, this sends both together. Everything else (HEAD and 304 without a body, chunked bodies,
a Content-Length shorter than the body, file responses) takes gunicorn's own path.

And the collector: a worker's startup heap (modules, the app, its clients) is about 115,000 tracked objects
that live as long as the process. Every full collection walked them again: 76-165 ms with the worker stopped,
for every request in flight on it, about once a minute at 1,000 users. `freeze_startup_heap` takes them out of
the collector's reach once the worker is up.

And gunicorn's settings: every `cfg.name` is a `Config.__getattr__` that looks the setting up and calls its
`get()`, and a request reads a dozen of them (the parser's checks, `is_ssl`, the forwarded-header policy, the
keep-alive timeout): about 3 % of a worker's CPU on the session mix (py-spy). A worker's settings never change
after the fork, so `snapshot_settings` stores each value on the config object, where plain attribute lookup finds
it first.
"""

from __future__ import annotations

import gc
from typing import Any

from gunicorn.http import wsgi

_gunicorn_write = wsgi.Response.write


def _head(resp: wsgi.Response) -> bytes:
    """The status line and headers exactly as gunicorn's `send_headers` builds them."""
    lines = resp.default_headers()
    lines.extend([f"{name}: {value}\r\n" for name, value in resp.headers])
    return ("".join(lines) + "\r\n").encode("latin-1")


def _write(self: wsgi.Response, arg: bytes) -> None:
    if (
        self.headers_sent
        or self.chunked
        or self._omits_body
        or type(arg) is not bytes
        or (self.response_length is not None and len(arg) > self.response_length)
    ):
        _gunicorn_write(self, arg)
        return
    head = _head(self)
    self.headers_sent = True
    self.sent += len(arg)
    self.sock.sendall(head + arg)


def send_head_with_body() -> None:
    """Install the one-send writer in this process (gunicorn's `post_fork`)."""
    wsgi.Response.write = _write


def snapshot_settings(cfg: Any) -> None:
    """Store every gunicorn setting's current value on `cfg` itself (gunicorn's `post_fork`, in the worker).

    Names that the Config class defines as properties (`worker_class`, `proc_name`, ...) are left alone: a
    property wins over the instance's dict, so they go on computing themselves as before.
    """
    for name, setting in cfg.settings.items():
        if not isinstance(getattr(type(cfg), name, None), property):
            # Config.__setattr__ refuses setting names; the instance's dict does not ask it.
            vars(cfg)[name] = setting.get()


def freeze_startup_heap() -> None:
    """Collect once, then move every object that exists now to the permanent generation (gunicorn's
    `post_worker_init`, after the app and its services are built). What requests create is collected as before.
    """
    gc.collect()
    gc.freeze()
