"""Redis connections: a bounded pool that waits instead of failing (redis-py#2517), plain or via Sentinel.

URLs: `redis://host:port/db` (or rediss://), or `redis+sentinel://[:password@]h1:26379,h2:26379/<master-name>/<db>`
for the fleet's Sentinel-managed master. The password is percent-encoded in the URL (the Ansible env template
encodes it) and authenticates to the Redis servers; Sentinels that require one of their own (requirepass in
sentinel.conf, as ansible/roles/redis_sentinel configures them) get it from `?sentinel_password=`. Build once per
process: `master_for` makes a new pool per call (redis-py#3433).
"""

from __future__ import annotations

import urllib.parse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool


class BlockingSentinelConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The master's address from Sentinel, and a wait (up to `timeout`) for a free connection.

    redis-py's SentinelConnectionPool raises "Too many connections" once `max_connections` are in use, so a burst
    beyond the pool size would fail open rate limits and leave enqueues to the reaper; the plain path waits.
    """


def connect(url: str, *, pool_size: int = 50, timeout: float = 0.5) -> redis.Redis:
    # The same bounded, waiting pool whichever way the master is found; one quick retry at most: callers decide
    # what a Redis outage means (503, fail open, reaper later).
    pooling = {
        "max_connections": pool_size,
        "timeout": timeout,  # how long to wait for a free connection
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 30,
    }
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "redis+sentinel":
        # rpartition: the netloc holds several host:port pairs, which urlsplit's hostname/port cannot read.
        userinfo, _, nodes = parsed.netloc.rpartition("@")
        username, _, password = userinfo.partition(":")
        hosts = []
        for node in nodes.split(","):
            host, _, port = node.rpartition(":")
            hosts.append((host or node, int(port or 26379)))
        parts = [p for p in parsed.path.split("/") if p]
        service = parts[0] if parts else "mymaster"
        db = int(parts[1]) if len(parts) > 1 else 0
        # Only when asked for: AUTH to a Sentinel that has no requirepass is an error, not a no-op.
        sentinel_password = urllib.parse.parse_qs(parsed.query).get("sentinel_password", [""])[0]
        sentinel = Sentinel(
            hosts,
            socket_timeout=timeout,
            sentinel_kwargs={
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                **({"password": sentinel_password} if sentinel_password else {}),
            },
            username=urllib.parse.unquote(username) or None,
            password=urllib.parse.unquote(password) or None,
        )
        return sentinel.master_for(
            service, connection_pool_class=BlockingSentinelConnectionPool, db=db, **pooling
        )
    return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, **pooling))
