"""Redis connections: a bounded pool that waits instead of failing (redis-py#2517), plain or via Sentinel.

URLs: `redis://host:port/db` (or rediss://), or `redis+sentinel://h1:26379,h2:26379/<master-name>/<db>` for the
fleet's Sentinel-managed master. Build once per process: `master_for` makes a new pool per call (redis-py#3433).
"""

from __future__ import annotations

import urllib.parse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel


def connect(url: str, *, pool_size: int = 50, timeout: float = 0.5) -> redis.Redis:
    # One quick retry at most: callers decide what a Redis outage means (503, fail open, reaper later).
    retry = Retry(NoBackoff(), 1)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "redis+sentinel":
        hosts = []
        for node in parsed.netloc.split("@")[-1].split(","):
            host, _, port = node.rpartition(":")
            hosts.append((host or node, int(port or 26379)))
        parts = [p for p in parsed.path.split("/") if p]
        service = parts[0] if parts else "mymaster"
        db = int(parts[1]) if len(parts) > 1 else 0
        sentinel = Sentinel(
            hosts,
            socket_timeout=timeout,
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            password=parsed.password,
        )
        return sentinel.master_for(
            service,
            db=db,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=retry,
            max_connections=pool_size,
        )
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=timeout,  # how long to wait for a free connection
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=retry,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)
