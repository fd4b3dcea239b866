"""Whether this process runs under gevent: true once gevent has patched sockets (gunicorn's gevent worker does
it before the app is imported; the ai consumer at start). Plain WSGI servers, tests and the images workers are not.
"""

from __future__ import annotations


def gevent_active() -> bool:
    from gevent import monkey

    return monkey.is_module_patched("socket")
