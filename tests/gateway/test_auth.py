"""API keys at the edge: 401 without, 403 with the wrong scope, revocation honoured at once, keys never logged."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from gateway.auth import required_scope
from tests.conftest import ADMIN_KEY


async def _new_key(gateway: httpx.AsyncClient, admin: dict[str, str], **body: object) -> dict[str, str]:
    resp = await gateway.post("/api/v1/keys", json={"name": "k", **body}, headers=admin)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_open_paths_need_no_key(gateway: httpx.AsyncClient) -> None:
    for path in ("/health/live", "/metrics", "/openapi.json", "/docs"):
        assert (await gateway.get(path)).status_code == 200, path


async def test_api_needs_a_key_and_the_right_scope(gateway: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    missing = await gateway.get("/api/v1/keys")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.headers["content-type"] == "application/problem+json"
    wrong = await gateway.get("/api/v1/keys", headers={"Authorization": "Bearer msk_nope_nope"})
    assert wrong.status_code == 401
    predict = await _new_key(gateway, admin_headers, scopes=["predict"])
    forbidden = await gateway.get("/api/v1/keys", headers={"Authorization": f"Bearer {predict['key']}"})
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["detail"]
    assert (await gateway.get("/api/v1/keys", headers=admin_headers)).status_code == 200


async def test_service_limited_key(gateway: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    limited = await _new_key(gateway, admin_headers, scopes=["predict"], services=["iris"])
    headers = {"Authorization": f"Bearer {limited['key']}"}
    # Allowed through auth (the registry then says whether the service exists); another service is refused.
    assert (await gateway.get("/api/v1/services/iris", headers=headers)).status_code != 403
    assert (await gateway.get("/api/v1/services/wine", headers=headers)).status_code == 403


async def test_revocation_takes_effect_without_waiting_for_cache(
    gateway: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    key = await _new_key(gateway, admin_headers, scopes=["admin"])
    headers = {"Authorization": f"Bearer {key['key']}"}
    assert (await gateway.get("/api/v1/keys", headers=headers)).status_code == 200  # now cached
    assert (await gateway.delete(f"/api/v1/keys/{key['id']}", headers=admin_headers)).status_code == 204
    for _ in range(50):
        if (await gateway.get("/api/v1/keys", headers=headers)).status_code == 401:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("revoked key still accepted")


async def test_request_id_propagates_and_keys_never_logged(
    gateway: httpx.AsyncClient, admin_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    resp = await gateway.get("/api/v1/keys", headers={**admin_headers, "X-Request-ID": "trace-42"})
    assert resp.headers["x-request-id"] == "trace-42"
    registry_lines = [r for r in caplog.records if r.name == "modelserve.access" and r.request_id == "trace-42"]
    assert len(registry_lines) >= 2  # the gateway's line and the registry's
    created = await _new_key(gateway, admin_headers, scopes=["predict"])
    assert ADMIN_KEY not in caplog.text and created["key"] not in caplog.text


async def test_openapi_merges_registry_paths_with_bearer_security(gateway: httpx.AsyncClient) -> None:
    doc = (await gateway.get("/openapi.json")).json()
    assert "/api/v1/keys" in doc["paths"]
    assert doc["paths"]["/api/v1/keys"]["get"]["security"] == [{"bearer": []}]
    assert "/internal/keys/verify" not in doc["paths"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_scope_rules() -> None:
    assert required_scope("POST", "/api/v1/services/iris/predict") == ("predict", "iris", True)
    assert required_scope("DELETE", "/api/v1/services/iris") == ("admin", None, True)
    assert required_scope("GET", "/v2/health/ready")[2] is False
    assert required_scope("POST", "/v2/models/iris/versions/3/infer") == ("predict", "iris", True)
    assert required_scope("GET", "/metrics")[2] is False


async def test_gateway_metrics_count_rejections(gateway: httpx.AsyncClient) -> None:
    await gateway.get("/api/v1/keys")
    text = (await gateway.get("/metrics")).text
    assert 'status="401"' in text and "modelserve_queue_depth" in text


async def test_the_last_active_admin_key_cannot_be_revoked(
    gateway: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    refused = await gateway.delete("/api/v1/keys/admin", headers=admin_headers)
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    assert "last active admin key" in refused.json()["detail"]
    assert (await gateway.get("/api/v1/keys", headers=admin_headers)).status_code == 200  # still in
    other = await _new_key(gateway, admin_headers, scopes=["admin"])
    other_headers = {"Authorization": f"Bearer {other['key']}"}
    assert (await gateway.delete("/api/v1/keys/admin", headers=other_headers)).status_code == 204
    assert (await gateway.delete(f"/api/v1/keys/{other['id']}", headers=other_headers)).status_code == 409


async def test_forwarded_requests_are_counted_under_the_registrys_route_and_probes_not_at_all(
    gateway: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    created = await _new_key(gateway, admin_headers, scopes=["predict"])
    assert (await gateway.get(f"/api/v1/keys/{created['id']}", headers=admin_headers)).status_code == 200
    for path in ("/health/live", "/health/ready", "/metrics"):
        await gateway.get(path)
    text = (await gateway.get("/metrics")).text
    gateway_samples = [line for line in text.splitlines() if 'process="gateway"' in line]
    assert any('route="/api/v1/keys/{key_id}"' in line and 'status="200"' in line for line in gateway_samples)
    assert any('route="/api/v1/keys"' in line and 'method="POST"' in line for line in gateway_samples)
    assert not [line for line in gateway_samples if 'route="/api/v1/{path:path}"' in line]
    assert not [line for line in text.splitlines() if 'route="/health/' in line or 'route="/metrics"' in line]
    assert "x-modelserve-route" not in (await gateway.get("/api/v1/keys", headers=admin_headers)).headers
