"""Every transport over the data plane answers the hot paths alike: REST `/api/v1` over real HTTP, V2 infer over
real HTTP, and the data plane called directly (as the gRPC servicer does). Status, the headers that matter and
the body are compared; errors are the same problem whichever transport carried them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from gateway.dataplane import GatewayDataPlane, Reply
from shared.auth import Principal
from shared.errors import PROBLEM_JSON, ModelServeError
from shared.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.gateway.conftest import FakePlatform, http_client, live_gateway
from tests.gateway.fakes import FEATURES, route

ADMIN = Principal(key_id="admin", name="admin", scopes=["admin"])
RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def v2_body(record: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in record.items()]}


@pytest.fixture
def server(fake_settings: Settings, fake_platform: FakePlatform) -> Iterator[LiveServer]:
    fake_platform.routes["iris"] = route(fake_platform.replicas)
    fake_platform.routes["paused"] = route([], paused=True, status="paused")
    with live_gateway(fake_settings) as live:
        yield live


@pytest.fixture
async def rest(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(server) as client:
        yield client


@pytest.fixture
async def plane(fake_settings: Settings, server: LiveServer) -> AsyncIterator[GatewayDataPlane]:
    dataplane = GatewayDataPlane(fake_settings)
    await dataplane.start()
    await dataplane.routing.refresh()
    try:
        yield dataplane
    finally:
        await dataplane.close()


async def direct(call: Any) -> tuple[int, dict[str, str], Any]:
    """What a transport makes of a data plane call: its reply, or its error as problem+json."""
    try:
        result = await call
    except ModelServeError as err:
        return (
            err.status,
            {"content-type": PROBLEM_JSON, **{k.lower(): v for k, v in err.headers.items()}},
            err.to_problem(),
        )
    if isinstance(result, Reply):
        return result.status, {"content-type": result.media_type}, orjson.loads(result.body)
    return 200, {"content-type": "application/json"}, result


def http(resp: httpx.Response) -> tuple[int, dict[str, str], Any]:
    wanted = ("content-type", "retry-after", "location")
    body = resp.json()
    if isinstance(body, dict):
        body.pop("instance", None)  # the path each transport was called on
    return resp.status_code, {k: resp.headers[k] for k in wanted if k in resp.headers}, body


async def test_predict_ok_and_errors_alike_over_rest_v2_and_the_data_plane(
    rest: httpx.AsyncClient, plane: GatewayDataPlane
) -> None:
    cases = {
        "ok": ("iris", {"inputs": RECORD}, 200),
        "bad field": ("iris", {"inputs": {**RECORD, "petals": 1}}, 422),
        "unknown service": ("nope", {"inputs": RECORD}, 404),
        "paused": ("paused", {"inputs": RECORD}, 503),
    }
    for case, (name, body, status) in cases.items():
        via_rest = http(await rest.post(f"/api/v1/services/{name}/predict", json=body))
        via_plane = await direct(plane.predict(name, orjson.dumps(body), ADMIN))
        assert via_rest == via_plane, case
        assert via_rest[0] == status, case
        expected_type = "application/json" if status == 200 else PROBLEM_JSON
        assert via_rest[1]["content-type"] == expected_type, case

        v2 = await rest.post(f"/v2/models/{name}/infer", json=v2_body(body["inputs"]))
        assert v2.status_code == status, (case, v2.text)
        assert v2.headers["content-type"] == expected_type, case
        assert v2.headers.get("retry-after") == via_rest[1].get("retry-after"), case
        if status == 200:
            assert v2.json()["model_name"] == name
            label = next(o for o in v2.json()["outputs"] if o["datatype"] == "BYTES")
            assert label["data"] == [via_rest[2]["predictions"][0]["label"]]
        elif status != 422:  # a bad field is found by the V2 codec, before the data plane: its own wording
            problem = {k: v for k, v in v2.json().items() if k not in ("instance", "error")}
            assert problem == via_rest[2], case
            assert v2.json()["error"] == via_rest[2]["detail"]
        else:
            assert {e["field"] for e in v2.json()["errors"]} == {"inputs[4].name"}


async def test_file_predict_alike_over_rest_and_the_data_plane(
    rest: httpx.AsyncClient, plane: GatewayDataPlane
) -> None:
    csv = (",".join(FEATURES) + "\n5.1,3.5,1.4,0.2\n6.2,2.9,4.3,1.3\n").encode()
    via_rest = http(await rest.post("/api/v1/services/iris/predict", content=csv, headers={"Content-Type": "text/csv"}))
    via_plane = await direct(plane.predict_file("iris", csv, "text/csv", ADMIN))
    assert via_rest == via_plane and via_rest[0] == 200 and len(via_rest[2]["predictions"]) == 2


async def test_submit_and_read_a_job_alike_over_rest_and_the_data_plane(
    rest: httpx.AsyncClient, plane: GatewayDataPlane
) -> None:
    resp = await rest.post("/api/v1/services/iris/jobs", json={"inputs": RECORD})
    status, headers, accepted = http(resp)
    assert status == 202 and headers["location"] == accepted["url"] == f"/api/v1/jobs/{accepted['id']}"
    assert accepted["status"] == "queued"
    via_plane = await direct(plane.submit("iris", orjson.dumps({"inputs": RECORD}), ADMIN))
    assert set(via_plane[2]) == set(accepted) and via_plane[2]["status"] == "queued"

    for query in ("", "?wait=0.2"):
        read = http(await rest.get(accepted["url"] + query))
        assert read[0] == 200 and read[2]["id"] == accepted["id"]
        assert read == await direct(plane.read_job(accepted["id"], 0, ADMIN))
    for transport in (
        http(await rest.get("/api/v1/jobs/nope")),
        await direct(plane.read_job("nope", 0, ADMIN)),
    ):
        assert transport[0] == 404 and transport[1]["content-type"] == PROBLEM_JSON
    bad_wait = http(await rest.get(accepted["url"] + "?wait=-1"))
    assert bad_wait[0] == 422 and bad_wait[2]["errors"][0]["field"] == "query.wait"
    for case in ("unknown", "paused"):
        name = "nope" if case == "unknown" else "paused"
        assert http(await rest.post(f"/api/v1/services/{name}/jobs", json={"inputs": RECORD})) == await direct(
            plane.submit(name, orjson.dumps({"inputs": RECORD}), ADMIN)
        )


async def test_redis_down_is_503_with_retry_after_on_every_transport(
    fake_settings: Settings, fake_platform: FakePlatform
) -> None:
    fake_platform.routes["iris"] = route(fake_platform.replicas)
    down = fake_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    dataplane = GatewayDataPlane(down)
    await dataplane.start()
    try:
        with live_gateway(down) as live:
            async with http_client(live) as client:
                for method, path, call in (
                    ("POST", "/api/v1/services/iris/jobs", dataplane.submit("iris", b'{"inputs": {}}', ADMIN)),
                    ("GET", "/api/v1/jobs/some-id", dataplane.read_job("some-id", 0, ADMIN)),
                    ("DELETE", "/api/v1/jobs/some-id", dataplane.cancel_job("some-id", ADMIN)),
                ):
                    resp = await client.request(method, path, json={"inputs": {}} if method == "POST" else None)
                    via_rest, via_plane = http(resp), await direct(call)
                    assert via_rest == via_plane, path
                    assert via_rest[0] == 503 and via_rest[1]["retry-after"] == "2", path
    finally:
        await dataplane.close()
