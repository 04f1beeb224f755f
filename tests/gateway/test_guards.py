"""What the gateway refuses before routing, driven over real sockets: traversal to the registry's internal
routes (paths sent as is, no client-side normalisation), bodies over their route's limit, load over a
service's in-flight limit, and what a predict key may learn about the internal network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from shared.settings import Settings
from tests.conftest import ADMIN_KEY, LiveServer
from tests.gateway.conftest import FakePlatform, http_client, live_gateway
from tests.gateway.fakes import PREDICT_KEY, Seen, replica, route

IRIS = {"inputs": {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}}
TRAVERSALS = [
    "/api/v1/../../internal/secret",
    "/api/v1/../internal/secret",
    "/api/v1/%2e%2e/%2e%2e/internal/secret",
    "/api/v1/%2E%2E/%2E%2E/internal/secret",
    "/api/v1/..%2f..%2finternal/secret",
    "/api/v1/keys%2f..%2f..%2finternal%2fsecret",
    "/api/v1/services/..%5c..%5cinternal%5csecret",
    "/api/v1/./keys",
    "/api/v1/services/a%00b/predict",
]


async def raw_request(
    url: str, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with the target exactly as given (clients normalise dot-segments away)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), parsed, body


@pytest.fixture
def gateway_server(fake_settings: Settings) -> AsyncIterator[LiveServer]:
    with live_gateway(fake_settings) as server:
        yield server


@pytest.mark.parametrize("target", TRAVERSALS)
async def test_traversal_never_reaches_internal_routes(
    gateway_server: LiveServer, fake_platform: FakePlatform, target: str
) -> None:
    for method in ("GET", "POST"):
        status, headers, body = await raw_request(
            gateway_server.url, method, target, {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Length": "0"}
        )
        assert status == 400, (method, target, body)
        assert headers["content-type"] == "application/problem+json"
        assert orjson.loads(body)["errors"][0]["field"] == "path"
    assert not [p for p in fake_platform.seen.registry_paths if p.startswith("/internal/secret")]


async def test_plain_paths_still_pass(gateway_server: LiveServer, fake_platform: FakePlatform) -> None:
    fake_platform.routes["iris"] = route(fake_platform.replicas)
    status, _, body = await raw_request(
        gateway_server.url, "GET", "/api/v1/services/iris", {"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert status == 200 and orjson.loads(body)["name"] == "iris"


@pytest.fixture
def small_limits(fake_settings: Settings) -> Settings:
    limits = {"gateway_max_predict_bytes": 2000, "gateway_max_json_bytes": 1000, "gateway_max_job_bytes": 2000}
    limits |= {"gateway_max_infer_bytes": 2000, "gateway_max_test_bytes": 2000}
    # Model test goes to the pool-mode inference process: here the fake registry stands in (nothing is read).
    return fake_settings.model_copy(update=limits | {"inference_url": fake_settings.registry_url})


async def _chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


async def test_bodies_over_their_routes_limit_answer_413(small_limits: Settings, fake_platform: FakePlatform) -> None:
    fake_platform.routes["iris"] = route(fake_platform.replicas)
    big = orjson.dumps({"inputs": {"sepal_length": 1.0}, "pad": "x" * 3000})
    with live_gateway(small_limits) as server:
        async with http_client(server) as client:
            routes = ("/api/v1/services/iris/predict", "/api/v1/services/iris/jobs", "/v2/models/iris/infer")
            for path in (*routes, "/api/v1/models/iris/versions/1/test", "/api/v1/keys"):
                declared = await client.post(path, content=big, headers={"Content-Type": "application/json"})
                assert declared.status_code == 413, path
                assert declared.headers["content-type"] == "application/problem+json"
                assert declared.json()["errors"][0]["field"] == "body"
                chunked = await client.post(path, content=_chunks(5000), headers={"Content-Type": "application/json"})
                assert chunked.status_code == 413, (path, chunked.text)
            # Within the limits, chunked or not, nothing changes.
            ok = await client.post("/api/v1/services/iris/predict", content=orjson.dumps(IRIS))
            assert ok.status_code == 200
            small = await client.post(
                "/api/v1/keys", content=_chunks(500), headers={"Content-Type": "application/json"}
            )
            assert small.status_code == 200 and small.json() == {"received": 500}


async def test_admission_sheds_load_with_429_and_retry_after(
    fake_settings: Settings, fake_platform: FakePlatform
) -> None:
    slow_seen = Seen()
    with LiveServer(replica(slow_seen, "slow", delay=0.5)) as slow:
        fake_platform.routes["iris"] = route([slow.url])
        with live_gateway(fake_settings.model_copy(update={"gateway_service_max_in_flight": 3})) as server:
            async with http_client(server) as client:
                answers = await asyncio.gather(
                    *(client.post("/api/v1/services/iris/predict", json=IRIS) for _ in range(24))
                )
    statuses = sorted({a.status_code for a in answers})
    assert statuses == [200, 429], statuses  # no 5xx: shed, not broken
    shed = [a for a in answers if a.status_code == 429]
    assert all(
        a.headers["retry-after"] == "1" and a.headers["content-type"] == "application/problem+json" for a in shed
    )


async def test_predict_keys_learn_nothing_of_the_internal_network(
    gateway_server: LiveServer, fake_platform: FakePlatform
) -> None:
    fake_platform.routes["iris"] = route(fake_platform.replicas)
    fake_platform.routes["dead"] = route(["http://127.0.0.1:9"])
    async with http_client(gateway_server, PREDICT_KEY) as app, http_client(gateway_server) as admin:
        view = (await app.get("/api/v1/services/iris")).json()
        assert view["replica_list"] and all(not {"pid", "url", "host"} & set(r) for r in view["replica_list"]), view
        assert "pid" in (await admin.get("/api/v1/services/iris")).json()["replica_list"][0]

        down = await app.post("/api/v1/services/dead/predict", json=IRIS)
        assert down.status_code == 503 and "127.0.0.1" not in down.text and down.headers["retry-after"]
        fake_platform.routes["dead"] = route(["http://127.0.0.1:9"])
        assert "127.0.0.1:9" in (await admin.post("/api/v1/services/dead/predict", json=IRIS)).json()["detail"]

        for i in range(20):  # made-up names must not grow the metrics
            assert (await app.post(f"/api/v1/services/made-up-{i}/predict", json=IRIS)).status_code == 404
        metrics = (await app.get("/metrics")).text
    assert 'service="made-up-' not in metrics
    assert 'modelserve_service_requests_total{service="_unknown",status="404"}' in metrics
