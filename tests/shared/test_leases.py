"""The one lease primitive: only its owner extends or releases it, and every lock of the platform uses it."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from jobs import janitor, run_recovery
from shared.leases import Lease


def test_only_the_owner_extends_or_releases(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    mine = Lease(client, "test:lease", 5)
    assert mine.acquire()
    other = Lease(client, "test:lease", 5)
    assert not other.acquire()
    assert not other.release() and mine.owned()  # another owner's release changes nothing
    assert not other.extend()
    assert client.get("test:lease") == mine.token.encode()
    assert mine.extend() and mine.release()
    assert client.get("test:lease") is None


def test_an_expired_owner_cannot_free_its_successors_lease(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    slow = Lease(client, "test:lease", 0.3)
    assert slow.acquire()
    deadline = time.monotonic() + 10
    while client.get("test:lease") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    successor = Lease(client, "test:lease", 30)
    assert successor.acquire()
    assert not slow.release() and not slow.extend()  # the old owner comes back late: nothing changes
    assert successor.owned()


def test_keep_alive_holds_the_lease_past_its_time_and_stops_on_release(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    lease = Lease(client, "test:lease", 0.6).keep_alive()
    assert lease.acquire()
    time.sleep(1.5)
    assert lease.owned()
    assert lease.release()
    assert client.get("test:lease") is None


def test_a_lost_lease_is_reported_to_its_keeper(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    lost = threading.Event()
    lease = Lease(client, "test:lease", 0.6)
    assert lease.acquire()
    client.set("test:lease", "someone-else")  # taken over (e.g. after a pause longer than the lease)
    lease.keep_alive(on_lost=lost)
    assert lost.wait(10)
    assert client.get("test:lease") == b"someone-else"
    lease.stop_keeping_alive()


def test_sweeps_never_release_another_schedulers_lock(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import Settings

    client = redis.Redis.from_url(redis_url)
    settings = Settings(redis_url=redis_url)
    for lock in (janitor.LOCK, run_recovery.LOCK):
        client.set(lock, "another-scheduler", ex=30)
    assert janitor.sweep(client, settings) == {}
    assert run_recovery.recover_runs(client, settings) == 0
    client.delete(janitor.LOCK, run_recovery.LOCK)

    def slower_than_the_lock(lock: str) -> Any:
        def sweep(*_args: Any) -> int:
            client.set(lock, "another-scheduler", ex=30)  # ours ran out meanwhile and another scheduler took it
            return 0

        return sweep

    monkeypatch.setattr(janitor, "_batch_orphans", slower_than_the_lock(janitor.LOCK))
    monkeypatch.setattr(run_recovery, "_recover", slower_than_the_lock(run_recovery.LOCK))
    assert janitor.sweep(client, settings)["batched"] == 0
    assert run_recovery.recover_runs(client, settings) == 0
    assert client.get(janitor.LOCK) == b"another-scheduler"  # the late sweep left the new holder's lock alone
    assert client.get(run_recovery.LOCK) == b"another-scheduler"
    client.delete(janitor.LOCK, run_recovery.LOCK)
    monkeypatch.undo()
    assert janitor.sweep(client, settings) == {"batched": 0, "requeued": 0}
    assert client.get(janitor.LOCK) is None  # its own lock, released


def test_a_run_lease_taken_over_is_not_freed_by_its_old_worker(redis_url: str) -> None:
    from jobs.batch_runs import RUN_LEASES, RUN_OWNER, _RunLease, run_info_key

    client = redis.Redis.from_url(redis_url)
    old = _RunLease(client, 7, 30)
    assert old.acquire("rq-old")
    client.set(RUN_OWNER.format(run_id=7), "new-worker", ex=30)  # the run was recovered and taken by another
    old.released = True
    old.close()
    assert client.get(RUN_OWNER.format(run_id=7)) == b"new-worker"
    assert client.zscore(RUN_LEASES, "7") is not None and client.hget(run_info_key(7), "rq_job") == b"rq-old"
