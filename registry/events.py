"""Change events the registry publishes over Redis pub/sub (gateways invalidate their caches on them)."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI

from shared.redis import EVENTS_CHANNEL

log = logging.getLogger(__name__)


async def publish_event(app: FastAPI, kind: str, name: str, **fields: object) -> None:
    redis = getattr(app.state, "redis", None)
    if redis is None:
        return
    try:
        await redis.publish(EVENTS_CHANNEL, orjson.dumps({"kind": kind, "name": name, **fields}))
    except Exception:
        # Subscribers also expire their caches on a timer; a lost event only delays them.
        log.warning("could not publish %s event for %s", kind, name, exc_info=True)
