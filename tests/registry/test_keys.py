"""API keys: bootstrap, verification, CRUD and revocation, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging

import pytest
from sqlmodel import Session, select

from registry.app import create_app
from registry.bootstrap import bootstrap
from registry.tables import ApiKey
from shared.auth import hash_key
from shared.db import create_db_engine
from shared.settings import Settings
from tests.conftest import asgi_client


def test_generated_admin_key_is_returned_once_and_stored_only_as_hash(db_settings: Settings) -> None:
    settings = db_settings.model_copy(update={"admin_key": None})
    key = bootstrap(settings)
    assert key is not None and key.startswith("msk_")
    assert bootstrap(settings) is None  # second start: nothing new to print
    engine = create_db_engine(settings.effective_database_url)
    with Session(engine) as session:
        rows = session.exec(select(ApiKey)).all()
        assert [r.key_hash for r in rows] == [hash_key(key)]
        assert all(key not in str(r.model_dump()) for r in rows)
    engine.dispose()


def test_admin_key_from_environment_wins_and_rotates(db_settings: Settings) -> None:
    settings = db_settings
    assert bootstrap(settings) is None
    rotated = settings.model_copy(update={"admin_key": "msk_rotated_" + "b" * 40})
    bootstrap(rotated)
    engine = create_db_engine(settings.effective_database_url)
    with Session(engine) as session:
        admin = session.get(ApiKey, "admin")
        assert admin is not None and admin.key_hash == hash_key("msk_rotated_" + "b" * 40)
    engine.dispose()


async def test_create_list_verify_revoke(db_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with asgi_client(create_app(db_settings)) as client:
        created = await client.post("/api/v1/keys", json={"name": "app", "scopes": ["predict"], "services": ["iris"]})
        assert created.status_code == 201
        body = created.json()
        secret = body["key"]
        assert created.headers["location"] == f"/api/v1/keys/{body['id']}"
        assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")

        page = (await client.get("/api/v1/keys")).json()
        assert page["total"] == 2 and page["limit"] == 50 and page["offset"] == 0
        listed = page["items"]
        assert {k["name"] for k in listed} == {"admin", "app"}
        assert "key" not in listed[0] and secret not in (await client.get("/api/v1/keys")).text

        principal = (await client.post("/internal/keys/verify", json={"key": secret})).json()
        assert principal == {"key_id": body["id"], "name": "app", "scopes": ["predict"], "services": ["iris"]}

        assert (await client.delete(f"/api/v1/keys/{body['id']}")).status_code == 204
        refused = await client.post("/internal/keys/verify", json={"key": secret})
        assert refused.status_code == 401
        assert (await client.delete(f"/api/v1/keys/{body['id']}")).status_code == 404
        assert (await client.get("/api/v1/keys", params={"include_revoked": True})).json()["total"] == 2
        assert (await client.get("/api/v1/keys")).json()["total"] == 1
        second_page = (
            await client.get("/api/v1/keys", params={"include_revoked": True, "limit": 1, "offset": 1})
        ).json()
        assert second_page["total"] == 2 and [k["name"] for k in second_page["items"]] == ["app"]
    assert secret not in caplog.text


async def test_bad_key_request_names_the_field(settings: Settings) -> None:
    async with asgi_client(create_app(settings)) as client:
        resp = await client.post("/api/v1/keys", json={"name": "x", "scopes": ["root"]})
        assert resp.status_code == 422
        assert resp.json()["errors"][0]["field"].startswith("body.scopes")
