"""The least a database read can cost under the API's server (`make bench-api`): Falcon in gunicorn's gevent worker,
psycopg2 made cooperative by psycogreen, one user's row read per request. No auth, cache, metrics or logging.

gunicorn builds it in the worker, after gevent has patched: `gunicorn 'bench.minimal_app:create_app("DSN")'`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import falcon
import psycopg2


class Connections:
    """A fixed set of autocommit connections that the worker's greenlets take turns on (a full set blocks, as the
    API's pool does, rather than failing)."""

    def __init__(self, dsn: str, size: int) -> None:
        import gevent.queue

        self._dsn = dsn
        self._idle = gevent.queue.LifoQueue()
        for _ in range(size):
            self._idle.put(self._connect())

    def _connect(self):
        conn = psycopg2.connect(self._dsn)
        conn.autocommit = True
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator:
        conn = self._idle.get()
        try:
            yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            # The server went away (a restart on a shared machine): this request fails, the next gets a new one.
            conn.close()
            conn = self._connect()
            raise
        finally:
            self._idle.put(conn)


class User:
    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: int) -> None:
        with self._connections.connection() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT id, display_name, username, profile, wardrobe_version FROM users WHERE id = %s",
                (user_id,),
            )
            row = cur.fetchone()
        if row is None:
            raise falcon.HTTPNotFound()
        resp.media = dict(
            zip(("id", "display_name", "username", "profile", "wardrobe_version"), row, strict=True)
        )


def create_app(dsn: str, pool_size: int = 20) -> falcon.App:
    """The app with its connections open; `pool_size` is the API's default WARDROBE_DB_POOL_SIZE."""
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()  # before the first connection, so a query yields to other greenlets
    app = falcon.App()
    app.add_route("/users/{user_id:int}", User(Connections(dsn, pool_size)))
    return app
