"""Every error is problem+json, FastAPI's own 404/405/422 included."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from shared.app import instrument_app
from shared.errors import Conflict, ValidationFailed, field_error
from tests.conftest import asgi_client


class Body(BaseModel):
    count: int


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/things")
    async def create(body: Body) -> dict[str, int]:
        return {"count": body.count}

    @app.get("/conflict")
    async def conflict() -> None:
        raise Conflict("already there", errors=[field_error("name", "taken", received="x")])

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/invalid")
    async def invalid() -> None:
        raise ValidationFailed("bad", errors=[field_error(["inputs", 3, "x"], "too big", expected="<= 1", received=5)])

    return instrument_app(app, "test", {})


async def test_fastapi_404_405_422_are_problem_json() -> None:
    async with asgi_client(_app()) as client:
        missing = await client.get("/nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["type"].endswith("/not-found")
        wrong = await client.delete("/things")
        assert wrong.status_code == 405 and wrong.json()["status"] == 405
        bad = await client.post("/things", json={"count": "many"})
        assert bad.status_code == 422
        body = bad.json()
        assert body["errors"][0]["field"] == "body.count" and body["errors"][0]["received"] == "many"
        assert "body.count" in body["detail"]


async def test_own_errors_carry_status_fields_and_request_id() -> None:
    async with asgi_client(_app()) as client:
        resp = await client.get("/conflict", headers={"X-Request-ID": "abc-123"})
        assert resp.status_code == 409
        assert resp.headers["x-request-id"] == "abc-123"
        assert resp.json()["errors"] == [{"field": "name", "message": "taken", "received": "x"}]
        invalid = (await client.get("/invalid")).json()
        assert invalid["errors"][0]["field"] == "inputs.3.x" and invalid["errors"][0]["expected"] == "<= 1"


async def test_unexpected_error_is_a_500_problem_without_internals() -> None:
    async with asgi_client(_app()) as client:
        resp = await client.get("/boom")
        assert resp.status_code == 500
        assert resp.headers["content-type"] == "application/problem+json"
        assert "secret internals" not in resp.text


async def test_request_id_generated_when_absent_or_unsafe() -> None:
    async with asgi_client(_app()) as client:
        generated = (await client.post("/things", json={"count": 1})).headers["x-request-id"]
        assert len(generated) == 32
        unsafe = (await client.post("/things", json={"count": 1}, headers={"X-Request-ID": "x" * 500})).headers
        assert unsafe["x-request-id"] != "x" * 500
