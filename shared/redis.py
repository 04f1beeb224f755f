"""Redis connections and the channel/key names processes share."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from shared.settings import Settings

EVENTS_CHANNEL = "modelserve:events"
"""Pub/sub channel of registry change events (`{"kind": "service"|"key"|"model", "name": ...}`)."""

"""A process's heartbeat; expires when the process stops beating."""


def redis_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise RuntimeError("MODELSERVE_REDIS_URL is not set (modelserve up sets it for its children)")
    return settings.redis_url


def sync_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        redis_url(settings), socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )


def async_redis(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(redis_url(settings), socket_connect_timeout=5, health_check_interval=30)


PREDICT_QUEUE = "modelserve-predict"
"""RQ queue of async ("wait return") predictions."""
BATCH_QUEUE = "modelserve-batch"
"""RQ queue of batch-scoring and script runs."""
QUEUES = (PREDICT_QUEUE, BATCH_QUEUE)
