"""The Huey instances — one per queue, because the work differs: `images` (CPU-bound background removal, process
workers) and `ai` (IO-bound OpenAI calls, greenlet workers). Built per process; nothing connects until used.
"""

from __future__ import annotations

import redis
from huey import RedisHuey

QUEUES = ("images", "ai")
# Which queue runs each stage of a job.
STAGE_QUEUE = {"cutout": "images", "analyze": "ai", "capsule": "ai"}


def build(client: redis.Redis) -> dict[str, RedisHuey]:
    # results=False: job outcomes live in Postgres; Huey's result store would grow without bound.
    return {
        name: RedisHuey(f"wardrobe-{name}", connection_pool=client.connection_pool, results=False, utc=True)
        for name in QUEUES
    }
