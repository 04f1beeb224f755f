"""Heartbeats live in one hash, read with one HGETALL: no key scan on a readiness probe."""

from __future__ import annotations

import time

import redis
import redis.asyncio as aioredis

from shared.heartbeat import HEARTBEATS, Heartbeat, is_alive, live_roles, roles_alive


async def test_live_roles_come_from_one_hash(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    worker = Heartbeat(client, "worker", "w1").start()
    scheduler = Heartbeat(client, "scheduler", "s1").start()
    assert set(client.hkeys(HEARTBEATS)) == {b"worker:w1", b"scheduler:s1"}
    async_client = aioredis.Redis.from_url(redis_url)
    try:
        for legacy in client.keys("modelserve:heartbeat:*"):  # liveness is read from the hash alone
            client.delete(legacy)
        assert await live_roles(async_client) == {"worker", "scheduler"}
        scheduler.stop()
        assert await live_roles(async_client) == {"worker"}
        assert is_alive(client, "worker") and not is_alive(client, "scheduler")
        worker.stop()
        assert await live_roles(async_client) == set()
    finally:
        await async_client.aclose()


def test_a_beat_that_ran_out_is_not_alive(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hset(HEARTBEATS, "worker:killed", f"{time.time() - 1:.3f}")  # killed -9: never removed its field
    assert not is_alive(client, "worker")
    assert roles_alive({b"worker:a": b"100", b"scheduler:b": b"300", b"bad:c": b"x"}, at=200) == {"scheduler"}
