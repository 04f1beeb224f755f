"""The gateway's data plane called directly, without HTTP in front of it (what a gRPC servicer would do); the
registry and replicas it calls are fakes served for real on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.auth import KeyCache
from gateway.dataplane import GatewayDataPlane
from shared.auth import Principal
from shared.errors import NotFound, ServiceUnavailable, ValidationFailed
from shared.settings import Settings
from tests.gateway.conftest import FakePlatform
from tests.gateway.fakes import route

ADMIN = Principal(key_id="admin", name="admin", scopes=["admin"])
APP = Principal(key_id="p1", name="app", scopes=["predict"])
IRIS = {"inputs": {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}}


@pytest.fixture
async def plane(fake_settings: Settings) -> AsyncIterator[GatewayDataPlane]:
    dataplane = GatewayDataPlane(fake_settings)
    await dataplane.start()
    try:
        yield dataplane
    finally:
        await dataplane.close()


async def test_predict_answers_and_refuses_without_any_transport(
    plane: GatewayDataPlane, fake_platform: FakePlatform
) -> None:
    fake_platform.routes["iris"] = route(fake_platform.replicas[:1])
    fake_platform.routes["paused"] = route([], paused=True, status="paused")
    await plane.routing.refresh()

    ok = await plane.predict("iris", orjson.dumps(IRIS), APP)
    assert ok.status == 200 and ok.media_type == "application/json"
    assert orjson.loads(ok.body)["predictions"][0]["label"] == "setosa"
    bad = await plane.predict("iris", b'{"inputs": {"petals": 1}}', APP)
    assert bad.status == 422 and bad.media_type == "application/problem+json"
    assert orjson.loads(bad.body)["errors"][0]["field"] == "inputs.petals"
    with pytest.raises(ValidationFailed):
        await plane.predict("iris", b"{nope", APP)
    with pytest.raises(NotFound):
        await plane.predict("nope", orjson.dumps(IRIS), APP)
    with pytest.raises(ServiceUnavailable) as paused:
        await plane.predict("paused", orjson.dumps(IRIS), APP)
    assert paused.value.headers["Retry-After"] == "5"

    answer = await plane.infer("iris", "1", [IRIS["inputs"]], APP)
    assert answer["version"] == 1 and len(answer["predictions"]) == 1
    with pytest.raises(NotFound):
        await plane.infer("iris", "7", [IRIS["inputs"]], APP)  # serves version 1
    assert (await plane.metadata("iris")).signature is not None


async def test_coalesced_batches_carry_each_callers_request_id_and_no_callers_principal(
    plane: GatewayDataPlane, fake_platform: FakePlatform
) -> None:
    fake_platform.routes["iris"] = route(fake_platform.replicas[:1])  # one replica: batches form
    await plane.routing.refresh()
    ids = [f"caller-{i}" for i in range(40)]
    principals = [ADMIN if i % 2 else APP for i in range(40)]
    answers = await asyncio.gather(
        *(plane.predict("iris", orjson.dumps(IRIS), p, request_id=rid) for rid, p in zip(ids, principals, strict=True))
    )
    assert all(a.status == 200 for a in answers)
    batches = [c for c in fake_platform.seen.replica_calls if c["path"] == "/predict-many"]
    assert len(batches) < 40 and any(len(b["request_ids"]) > 1 for b in batches)  # coalesced
    assert sorted(rid for b in batches for rid in b["request_ids"]) == sorted(ids)  # each request, its own id
    for batch in batches:
        assert batch["principal"] is None  # a batch acts for no single caller
        assert batch["request_id"] not in ids and batch["request_id"].startswith("batch-")


async def test_replica_addresses_only_for_admin_keys(plane: GatewayDataPlane, fake_platform: FakePlatform) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing answers
    fake_platform.routes["iris"] = route([dead])
    await plane.routing.refresh()
    with pytest.raises(ServiceUnavailable) as as_app:
        await plane.predict("iris", orjson.dumps(IRIS), APP)
    assert "127.0.0.1" not in json.dumps(as_app.value.to_problem()) and as_app.value.headers["Retry-After"]
    fake_platform.routes["iris"] = route([dead])
    with pytest.raises(ServiceUnavailable) as as_admin:
        await plane.predict("iris", orjson.dumps(IRIS), ADMIN)
    assert "127.0.0.1:9" in as_admin.value.detail


async def test_a_verification_in_flight_during_a_clear_is_not_cached() -> None:
    verifications: list[str] = []
    release = asyncio.Event()

    async def verify(key: str) -> Principal:
        verifications.append(key)
        await release.wait()
        return APP

    cache = KeyCache(verify)
    first = asyncio.create_task(cache.principal("msk_k"))
    await asyncio.sleep(0.01)  # the verification is in flight
    cache.clear()  # e.g. the key was revoked meanwhile
    release.set()
    assert await first == APP  # its own caller gets the answer it waited for
    await cache.principal("msk_k")
    assert verifications == ["msk_k", "msk_k"]  # not served from a cache filled by the stale verification
