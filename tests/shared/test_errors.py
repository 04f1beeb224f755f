"""Every error is problem+json, FastAPI's own 404/405/422 included."""

from __future__ import annotations

import sqlite3

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from shared.app import instrument_app
from shared.errors import Conflict, ValidationFailed, field_error
from shared.paging import Offset
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


def _edge_app() -> FastAPI:
    app = FastAPI()
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE TABLE t (n INTEGER)")

    @app.get("/items/{number}")
    def by_number(number: int) -> dict[str, int]:
        db.execute("SELECT * FROM t WHERE n = ?", (number,)).fetchall()  # overflows past 2^63 - 1
        return {"number": number}

    @app.get("/page")
    def page(offset: Offset = 0) -> dict[str, int]:
        return {"offset": offset}

    @app.post("/things")
    async def create(body: Body) -> dict[str, int]:
        return {"count": body.count}

    @app.post("/parse")
    async def parse() -> None:
        raise HTTPException(400, "There was an error parsing the body")

    return instrument_app(app, "test", {})


async def test_integers_past_64_bits_are_a_422_naming_the_field_not_a_500() -> None:
    async with asgi_client(_edge_app()) as client:
        ok = await client.get("/items/9223372036854775807")
        assert ok.status_code == 200
        resp = await client.get("/items/9223372036854775808")
        assert resp.status_code == 422, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in resp.json()["errors"]] == ["path.number"]
        paged = await client.get("/page", params={"offset": str(2**64)})
        assert paged.status_code == 422 and paged.json()["errors"][0]["field"] == "query.offset"


async def test_control_characters_in_a_path_are_a_400() -> None:
    async with asgi_client(_edge_app()) as client:
        for path in ("/items/1%00", "/items/a%0Ab", "/nope%7F"):
            resp = await client.get(path)
            assert resp.status_code == 400, (path, resp.text)
            body = resp.json()
            assert body["title"] == "Bad request" and body["errors"][0]["field"] == "path"


async def test_a_malformed_json_body_is_named_body_and_titled_properly() -> None:
    async with asgi_client(_edge_app()) as client:
        resp = await client.post("/things", content=b"{not json", headers={"content-type": "application/json"})
        assert resp.status_code == 422
        body = resp.json()
        assert body["title"] == "Validation failed"
        assert [e["field"] for e in body["errors"]] == ["body"] and "not valid JSON" in body["errors"][0]["message"]
        parse = await client.post("/parse")
        assert parse.status_code == 400
        assert parse.json()["title"] == "Bad request" and parse.json()["errors"][0]["field"] == "body"
