"""Datasets through the registry's HTTP API: upload, describe, page, download, delete, refuse bad files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rq import Queue
from rq.serializers import JSONSerializer
from sqlmodel import Session

from registry.app import create_app
from registry.datasets import DatasetCatalog, inspect_dataset
from shared.artifacts import LocalArtifactStore
from shared.db import create_db_engine
from shared.redis import BATCH_QUEUE, sync_redis
from shared.settings import Settings
from tests.conftest import asgi_client

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]


def iris_rows(n: int) -> list[dict[str, Any]]:
    species = ["setosa", "versicolor", "virginica"]
    return [
        {"sepal_length": 5.0 + i % 10 / 10, "sepal_width": 3.5, "petal_length": float(i % 7), "petal_width": 0.2,
         "species": species[i % 3], "id": i}
        for i in range(n)
    ]  # fmt: skip


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    return path


async def upload(client: httpx.AsyncClient, path: Path, name: str = "d", **fields: str) -> httpx.Response:
    return await client.post(
        "/api/v1/datasets",
        data={"name": name, **fields},
        files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
    )


def stored_files(settings: Settings) -> list[Path]:
    return [p for p in settings.datasets_dir.rglob("*") if p.is_file()]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_upload_describe_download(
    registry: httpx.AsyncClient, db_settings: Settings, tmp_path: Path, fmt: str
) -> None:
    writer = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}[fmt]
    path = writer(tmp_path / f"iris.{fmt}", iris_rows(130))
    resp = await upload(registry, path, "iris", description="flowers")
    assert resp.status_code == 201, resp.text
    assert resp.headers["location"] == "/api/v1/datasets/iris"
    body = resp.json()
    assert body["format"] == fmt and body["rows"] == 130 and body["size_bytes"] == path.stat().st_size
    assert body["source"] == "local" and body["status"] == "ready" and body["description"] == "flowers"
    assert body["columns"] == [
        {"name": "sepal_length", "type": "double"},
        {"name": "sepal_width", "type": "double"},
        {"name": "petal_length", "type": "double"},
        {"name": "petal_width", "type": "double"},
        {"name": "species", "type": "string"},
        {"name": "id", "type": "int64"},
    ]

    detail = (await registry.get("/api/v1/datasets/iris")).json()
    assert detail["columns"] == body["columns"]
    assert detail["preview"] == iris_rows(20)

    download = await registry.get("/api/v1/datasets/iris/download")
    assert download.status_code == 200 and download.content == path.read_bytes()
    assert download.headers["x-content-sha256"] == body["sha256"]
    assert f'filename="iris.{fmt}"' in download.headers["content-disposition"]
    assert len(stored_files(db_settings)) == 1


async def test_list_pages_by_name(registry: httpx.AsyncClient, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "small.csv", iris_rows(3))
    for name in ("c", "a", "b"):
        assert (await upload(registry, path, name)).status_code == 201
    first = (await registry.get("/api/v1/datasets", params={"limit": 2})).json()
    assert first["total"] == 3 and [d["name"] for d in first["items"]] == ["a", "b"]
    item = first["items"][0]
    assert {"name", "format", "size_bytes", "rows", "columns", "source", "status", "created_at"} <= set(item)
    assert "preview" not in item
    second = (await registry.get("/api/v1/datasets", params={"limit": 2, "offset": 2})).json()
    assert [d["name"] for d in second["items"]] == ["c"]
    assert (await registry.get("/api/v1/datasets", params={"limit": 0})).status_code == 422


def _bad_files(directory: Path) -> dict[str, tuple[Path, str]]:
    """Each bad file and a word its refusal must mention."""
    parquet = write_parquet(directory / "good.parquet", iris_rows(200)).read_bytes()
    files = {
        "empty.csv": (b"", "empty"),
        "junk.csv": (bytes(range(256)) * 40, "binary"),
        "latin1.csv": ("name,city\nJosé,Zürich\n".encode("latin-1"), "UTF-8"),
        "ragged.csv": (b"a,b,c\n1,2,3\n4,5\n", "Expected 3 columns"),
        "dupes.csv": (b"a,a\n1,2\n", "repeats"),
        "array.jsonl": (b'{"a": 1}\n[1, 2]\n', "line 2"),
        "broken.jsonl": (b'{"a": 1}\n{"a": \n', "line 2"),
        "array.json": (b'[{"a": 1}]', "JSON array"),
        "truncated.parquet": (parquet[: len(parquet) // 2], "Parquet"),
        "footer-only.parquet": (b"PAR1" + b"\0" * 100 + parquet[-8:], "Parquet"),
    }
    out = {}
    for name, (content, word) in files.items():
        (directory / name).write_bytes(content)
        out[name] = (directory / name, word)
    return out


async def test_bad_files_are_refused_naming_file_and_nothing_is_stored(
    sqlite_registry: httpx.AsyncClient, sqlite_settings: Settings, tmp_path: Path
) -> None:
    for name, (path, word) in _bad_files(tmp_path).items():
        resp = await upload(sqlite_registry, path, "bad")
        assert resp.status_code == 422, (name, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        problem = resp.json()
        assert problem["errors"][0]["field"] == "file", name
        assert word in problem["errors"][0]["message"], (name, problem)
    assert (await sqlite_registry.get("/api/v1/datasets")).json()["total"] == 0
    assert stored_files(sqlite_settings) == []


async def test_csv_types_widen_past_the_first_block(tmp_path: Path) -> None:
    # pyarrow infers from its first 1 MiB block; later values that do not fit widen the column instead of failing.
    path = tmp_path / "late.csv"
    with path.open("w") as fh:
        fh.write("n,m,s\n")
        for i in range(150_000):
            fh.write(f"{i},{i},x\n")
        fh.write("1.5,oops,y\n")
    info = inspect_dataset(path)
    assert info.rows == 150_001
    assert info.columns == [
        {"name": "n", "type": "double"},
        {"name": "m", "type": "string"},
        {"name": "s", "type": "string"},
    ]


async def test_jsonl_types_and_preview_are_json_safe(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"a": 1, "b": "x"}\n\n{"a": 2.5, "b": 3, "c": null, "d": {"k": [1]}}\n{"a": NaN}\n')
    info = inspect_dataset(path)
    assert info.rows == 3
    assert info.columns == [
        {"name": "a", "type": "double"},
        {"name": "b", "type": "mixed"},
        {"name": "c", "type": "null"},
        {"name": "d", "type": "struct"},
    ]
    assert info.preview[2] == {"a": None}


async def test_size_limit_answers_413_and_leaves_nothing(sqlite_settings: Settings, tmp_path: Path) -> None:
    small = sqlite_settings.model_copy(update={"max_upload_bytes": 500})
    path = write_csv(tmp_path / "big.csv", iris_rows(100))
    async with asgi_client(create_app(small)) as client:
        resp = await upload(client, path, "big")
        assert resp.status_code == 413, resp.text
        assert (await client.get("/api/v1/datasets")).json()["total"] == 0
    assert stored_files(small) == []


async def test_duplicate_name_is_409_and_keeps_the_first(registry: httpx.AsyncClient, tmp_path: Path) -> None:
    first = write_csv(tmp_path / "one.csv", iris_rows(5))
    other = write_jsonl(tmp_path / "two.jsonl", iris_rows(7))
    assert (await upload(registry, first, "dup")).status_code == 201
    again = await upload(registry, other, "dup")
    assert again.status_code == 409, again.text
    assert (await registry.get("/api/v1/datasets/dup")).json()["rows"] == 5
    remote = await registry.post("/api/v1/datasets", json={"name": "dup", "source_url": "https://example.com/x.csv"})
    assert remote.status_code == 409


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "bad\x01name", "-lead", "x" * 129, ""])
async def test_bad_names_are_refused(sqlite_registry: httpx.AsyncClient, tmp_path: Path, name: str) -> None:
    resp = await upload(sqlite_registry, write_csv(tmp_path / "x.csv", iris_rows(2)), name)
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "name"


async def test_upload_without_file_or_form(sqlite_registry: httpx.AsyncClient) -> None:
    missing = await sqlite_registry.post("/api/v1/datasets", data={"name": "x"}, files={"other": ("a", b"1")})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "file"
    text = await sqlite_registry.post("/api/v1/datasets", content=b"a,b\n", headers={"content-type": "text/csv"})
    assert text.status_code == 415


async def test_delete_removes_the_file_unless_shared(
    registry: httpx.AsyncClient, db_settings: Settings, tmp_path: Path
) -> None:
    path = write_parquet(tmp_path / "p.parquet", iris_rows(10))
    await upload(registry, path, "one")
    await upload(registry, path, "two")  # same bytes: one stored file
    assert len(stored_files(db_settings)) == 1
    assert (await registry.delete("/api/v1/datasets/one")).status_code == 204
    assert (await registry.get("/api/v1/datasets/one")).status_code == 404
    assert len(stored_files(db_settings)) == 1
    assert (await registry.delete("/api/v1/datasets/two")).status_code == 204
    assert stored_files(db_settings) == []
    assert (await registry.delete("/api/v1/datasets/two")).status_code == 404
    assert (await registry.get("/api/v1/datasets/two/download")).status_code == 404


async def test_delete_is_409_while_a_job_uses_it(sqlite_settings: Settings, tmp_path: Path) -> None:
    app = create_app(sqlite_settings)
    app.state.dataset_usage = lambda _session, dataset: ["nightly"] if dataset.name == "used" else []
    async with asgi_client(app) as client:
        await upload(client, write_csv(tmp_path / "u.csv", iris_rows(3)), "used")
        resp = await client.delete("/api/v1/datasets/used")
        assert resp.status_code == 409 and resp.json()["jobs"] == ["nightly"]
        assert (await client.get("/api/v1/datasets/used")).status_code == 200


async def test_remote_request_enqueues_a_fetch(registry: httpx.AsyncClient, db_settings: Settings) -> None:
    url = "https://data.example.com/iris.csv"
    resp = await registry.post("/api/v1/datasets", json={"name": "far", "source_url": url, "description": "d"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert (body["status"], body["source"], body["source_url"], body["format"]) == ("fetching", "remote", url, None)
    assert resp.headers["location"] == "/api/v1/datasets/far"
    queue = Queue(BATCH_QUEUE, connection=sync_redis(db_settings), serializer=JSONSerializer)
    [job] = queue.get_jobs()
    assert (job.func_name, job.args) == ("jobs.fetch.fetch_remote_dataset", ["far", url])
    # Not ready yet: nothing to download.
    assert (await registry.get("/api/v1/datasets/far/download")).status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "source_url": "file:///etc/passwd"}, "source_url"),
        ({"name": "x", "source_url": "ftp://example.com/a.csv"}, "source_url"),
        ({"name": "x", "source_url": "http:///nohost"}, "source_url"),
        ({"name": "x"}, "source_url"),
        ({"name": "a/b", "source_url": "https://example.com/a.csv"}, "name"),
    ],
)
async def test_remote_request_is_checked(sqlite_registry: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    resp = await sqlite_registry.post("/api/v1/datasets", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == field


async def test_internal_content_finalises_or_fails_a_fetch(
    sqlite_registry: httpx.AsyncClient, sqlite_settings: Settings, tmp_path: Path
) -> None:
    url = "https://example.com/a.csv"
    for name in ("good", "bad"):
        await sqlite_registry.post("/api/v1/datasets", json={"name": name, "source_url": url})
    content = write_csv(tmp_path / "a.csv", iris_rows(4)).read_bytes()
    other_url = await sqlite_registry.put(
        "/internal/datasets/good/content", params={"source_url": "https://elsewhere/"}, content=content
    )
    assert other_url.status_code == 409
    ok = await sqlite_registry.put("/internal/datasets/good/content", params={"source_url": url}, content=content)
    assert ok.status_code == 200 and ok.json()["status"] == "ready" and ok.json()["rows"] == 4
    assert (await sqlite_registry.get("/api/v1/datasets/good/download")).content == content

    refused = await sqlite_registry.put("/internal/datasets/bad/content", content=b"\x00\x01\x02junk")
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "file"
    failed = (await sqlite_registry.get("/api/v1/datasets/bad")).json()
    assert failed["status"] == "failed" and "binary" in failed["status_reason"]
    assert len(stored_files(sqlite_settings)) == 1

    job = await sqlite_registry.put("/internal/datasets/scores/content", params={"source": "job"}, content=content)
    assert job.status_code == 200, job.text
    assert job.json()["source"] == "job"


def test_register_job_output(sqlite_settings: Settings, tmp_path: Path) -> None:
    from registry.database import migrate

    engine = create_db_engine(sqlite_settings.effective_database_url)
    migrate(engine)
    store = LocalArtifactStore(sqlite_settings.datasets_dir)
    output = write_parquet(tmp_path / "out.parquet", iris_rows(60))
    with Session(engine) as session:
        row = DatasetCatalog(session, store).register_job_output("scored", output, max_bytes=10**6)
        assert (row.source, row.status, row.format, row.rows) == ("job", "ready", "parquet", 60)
        assert store.local_path(row.sha256 or "").read_bytes() == output.read_bytes()
    assert output.exists()  # the job's own file is left where it was
    engine.dispose()


# --- Idempotency-Key and the inspection time limit ---------------------------------------------------------


async def _keyed(client: httpx.AsyncClient, path: Path, key: str, name: str = "d", **fields: str) -> httpx.Response:
    return await client.post(
        "/api/v1/datasets",
        data={"name": name, **fields},
        files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
        headers={"Idempotency-Key": key},
    )


async def test_a_retried_upload_with_its_key_answers_the_same_dataset(
    registry: httpx.AsyncClient, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "iris.csv", iris_rows(30))
    first = await _keyed(registry, path, "upload-1")
    assert first.status_code == 201, first.text
    again = await _keyed(registry, path, "upload-1")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["location"] == "/api/v1/datasets/d"
    assert (await registry.get("/api/v1/datasets")).json()["total"] == 1
    # The same key with another file, or other fields: refused, naming the header.
    other = write_csv(tmp_path / "other.csv", iris_rows(31))
    for resp in (await _keyed(registry, other, "upload-1"), await _keyed(registry, path, "upload-1", description="x")):
        assert resp.status_code == 422, resp.text
        assert resp.json()["errors"][0]["field"] == "header.Idempotency-Key"
    # Without a key a second upload of the name is still a conflict.
    assert (await upload(registry, path)).status_code == 409
    bad = await _keyed(registry, path, "\x01")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "header.Idempotency-Key"


async def test_a_retry_sent_while_the_first_upload_is_inspected_stores_one_copy(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import time

    from registry import datasets_api

    original = datasets_api.inspect_dataset
    calls: list[int] = []

    def slow(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.5)  # the first upload outlasts the client's patience; its retry comes meanwhile
        return original(*args, **kwargs)

    monkeypatch.setattr(datasets_api, "inspect_dataset", slow)
    path = write_csv(tmp_path / "iris.csv", iris_rows(30))
    async with asgi_client(create_app(settings)) as client:
        first = asyncio.create_task(_keyed(client, path, "retry-me"))
        await asyncio.sleep(0.5)
        second = await _keyed(client, path, "retry-me")
        answers = [await first, second]
        assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
        assert answers[0].json() == answers[1].json()
        assert (await client.get("/api/v1/datasets")).json()["total"] == 1


async def test_a_key_whose_dataset_was_deleted_uploads_anew(registry: httpx.AsyncClient, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "iris.csv", iris_rows(30))
    first = await _keyed(registry, path, "k")
    assert (await registry.delete("/api/v1/datasets/d")).status_code == 204
    again = await _keyed(registry, path, "k")
    assert again.status_code == 201 and again.json()["created_at"] != first.json()["created_at"]


async def test_an_inspection_past_its_time_limit_is_refused_not_left_running(
    settings: Settings, tmp_path: Path
) -> None:
    quick = settings.model_copy(update={"upload_inspection_timeout_seconds": 1e-9})
    path = write_csv(tmp_path / "iris.csv", iris_rows(300))
    async with asgi_client(create_app(quick)) as client:
        resp = await upload(client, path)
        assert resp.status_code == 422, resp.text
        assert resp.json()["title"] == "Inspection timed out" and resp.json()["errors"][0]["field"] == "file"
        assert (await client.get("/api/v1/datasets")).json()["total"] == 0


def test_the_gateways_upload_timeout_outlasts_the_inspection_limit() -> None:
    with pytest.raises(ValueError, match="UPLOAD_TIMEOUT_SECONDS"):
        Settings(upload_timeout_seconds=60, upload_inspection_timeout_seconds=120)
    defaults = Settings()
    assert defaults.upload_timeout_seconds >= defaults.upload_inspection_timeout_seconds


def test_json_lines_with_a_bom_and_nan_read_back_as_inspected(tmp_path: Path) -> None:
    from shared.tabular import iter_chunks

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1, "b": "x"}\n{"a": NaN, "b": null}\n\n{"a": 2.5, "b": "y"}\n')
    info = inspect_dataset(path)
    assert info.rows == 3 and info.columns == [{"name": "a", "type": "double"}, {"name": "b", "type": "string"}]
    [table] = list(iter_chunks(path, info.format, info.columns, 10))
    assert table.column("a").to_pylist() == [1.0, None, 2.5] and table.column("b").to_pylist() == ["x", None, "y"]
