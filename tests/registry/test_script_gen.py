"""`POST /api/v1/batch-jobs/generate-script`: 422 naming the field, the mapping it writes, no secret in the code."""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from registry import script_template
from registry.app import create_app
from registry.script_gen import ScriptRequest, auto_mapping, public_url, render
from registry.tables import ModelVersion, RegisteredModel, Service
from shared.auth import INTERNAL_TOKEN_HEADER
from shared.settings import Settings
from tests.conftest import ADMIN_KEY, asgi_client

ROWS = (
    "id,sepal_length,sepal_width,petal_length,petal_width,species\n"
    "1,5.1,3.5,1.4,0.2,setosa\n"
    "2,6.7,3.0,5.2,2.3,virginica\n"
)
CALLER_KEY = "msk_callerkey_" + "b" * 40
INTERNAL = "internal-token-" + "c" * 30


@pytest.fixture
async def client(sqlite_settings: Settings, onnx_models: dict[str, Path]) -> AsyncIterator[httpx.AsyncClient]:
    """A registry with the iris random forest (ONNX), a service row pinned to it, and an iris CSV dataset."""
    settings = sqlite_settings.model_copy(update={"internal_token": INTERNAL})
    app = create_app(settings)
    headers = {INTERNAL_TOKEN_HEADER: INTERNAL, "Authorization": f"Bearer {CALLER_KEY}"}
    async with asgi_client(app, **headers) as registry:
        path = onnx_models["random_forest"]
        resp = await registry.post(
            "/api/v1/models", data={"name": "iris"}, files={"file": (path.name, path.read_bytes())}
        )
        assert resp.status_code == 201, resp.text
        resp = await registry.post(
            "/api/v1/datasets", data={"name": "flowers"}, files={"file": ("flowers.csv", ROWS.encode(), "text/csv")}
        )
        assert resp.status_code == 201, resp.text
        with Session(app.state.engine) as session:
            model = session.exec(select(RegisteredModel).where(RegisteredModel.name == "iris")).one()
            version = session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id)).one()
            assert model.id is not None and version.id is not None
            # Rows only: the backend would start replica processes, and generating a script needs none.
            session.add(Service(name="iris", model_id=model.id, version_id=version.id))
            session.add(Service(name="dangling", model_id=model.id, alias="production"))
            session.commit()
        yield registry


def body(**kw: Any) -> dict[str, Any]:
    return {"input_dataset": "flowers", "output_dataset": "scored", "service": "iris", **kw}


async def test_generates_a_script_without_secrets(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/v1/batch-jobs/generate-script", json=body(batch_size=25))
    assert resp.status_code == 200, resp.text
    assert list(resp.json()) == ["code"]
    code = resp.json()["code"]
    tree = ast.parse(code)
    assert ast.get_docstring(tree) and "MODELSERVE_API_KEY" in ast.get_docstring(tree)  # type: ignore[operator]
    for secret in (ADMIN_KEY, CALLER_KEY, INTERNAL, "msk_"):
        assert secret not in code
    namespace: dict[str, Any] = {"__name__": "generated"}
    exec(compile(code, "score.py", "exec"), namespace)  # defines, runs nothing (not __main__)
    assert namespace["MAPPING"] == {"X": ["sepal_length", "sepal_width", "petal_length", "petal_width"]}
    assert namespace["INPUT_DATASET"] == "flowers" and namespace["OUTPUT_DATASET"] == "scored"
    assert namespace["SERVICE"] == "iris" and namespace["BATCH_SIZE"] == 25
    assert namespace["BASE_URL"] == "http://127.0.0.1:8000"
    assert namespace["API_KEY_ENV"] == "MODELSERVE_API_KEY"
    assert "pyarrow" in code and "/api/v1/services/" in code and "/download" in code


async def test_user_strings_are_literals(client: httpx.AsyncClient) -> None:
    url = "https://example.com/x'\"\"\";__import__('os')\\"
    resp = await client.post("/api/v1/batch-jobs/generate-script", json=body(base_url=url))
    assert resp.status_code == 200, resp.text
    namespace: dict[str, Any] = {"__name__": "generated"}
    exec(compile(resp.json()["code"], "score.py", "exec"), namespace)
    assert namespace["BASE_URL"] == url


async def test_a_value_holding_a_later_marker_stays_data(client: httpx.AsyncClient, tmp_path: Path) -> None:
    """The issue's exploit: successive replacements turned `y__BASE_URL__` plus a crafted URL into code."""
    marker = tmp_path / "pwned"
    url = f"http://h/'+str(__import__('pathlib').Path('{marker}').touch())+'"
    resp = await client.post(
        "/api/v1/batch-jobs/generate-script", json=body(output_dataset="y__BASE_URL__", base_url=url)
    )
    assert resp.status_code == 200, resp.text
    namespace: dict[str, Any] = {"__name__": "generated"}
    exec(compile(resp.json()["code"], "score.py", "exec"), namespace)
    assert not marker.exists()
    assert namespace["OUTPUT_DATASET"] == "y__BASE_URL__" and namespace["BASE_URL"] == url


HOSTILE = [
    "__BASE_URL__", "__SERVICE__", "__MAPPING__", "__DOC_INPUT__", '"""', "'''", "\\", "\\'", "x'\nimport os\n'",
    "a\nb", "a\rb", "a\x0cb", "a\u2028b", "a\u2029b", "\u202eevil", "ünïcødé ☃", "#", "\x00", "{}", "%s",
    '"""; import os; """', "')\n__import__('os').system('id')\n('",
]  # fmt: skip


def _template_statements() -> tuple[list[str], set[str]]:
    tree = ast.parse(Path(script_template.__file__).read_text())
    names = {"BASE_URL", "INPUT_DATASET", "OUTPUT_DATASET", "SERVICE", "BATCH_SIZE", "API_KEY_ENV", "MAPPING"}
    return [ast.dump(node) for node in tree.body[1:] if _target(node) not in names], names


def _target(node: ast.stmt) -> str | None:
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def _only_literals(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Dict):
        return all(k is not None and _only_literals(k) for k in node.keys) and all(map(_only_literals, node.values))
    if isinstance(node, ast.List):
        return all(map(_only_literals, node.elts))
    return False


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_are_only_literals_in_the_script(hostile: str) -> None:
    request = ScriptRequest(input_dataset=hostile, output_dataset=hostile + "2", service=hostile + "3",
                            base_url=f"http://h/{hostile}", batch_size=7)  # fmt: skip
    mapping = {hostile: [hostile, "b"], "plain": hostile}
    inputs = [
        {"name": hostile, "data_type": hostile, "shape": [None, 2]},
        {"name": "plain", "data_type": hostile},
        {"name": hostile + "-unmapped", "data_type": hostile},
    ]
    code = render(request, mapping, inputs, hostile, 3)
    tree = ast.parse(code)
    rest, names = _template_statements()
    values: dict[str, Any] = {}
    for node in tree.body[1:]:
        name = _target(node)
        if name in names:
            assert isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
            assert _only_literals(node.value), ast.dump(node)
            assert name not in values
            values[name] = ast.literal_eval(node.value)
    assert values == {
        "BASE_URL": f"http://h/{hostile}", "INPUT_DATASET": hostile, "OUTPUT_DATASET": hostile + "2",
        "SERVICE": hostile + "3", "BATCH_SIZE": 7, "API_KEY_ENV": "MODELSERVE_API_KEY", "MAPPING": mapping,
    }  # fmt: skip
    # Everything else is the template's code, statement for statement: nothing was added or changed.
    assert [ast.dump(n) for n in tree.body[1:] if _target(n) not in names] == rest
    docstring = ast.get_docstring(tree, clean=False) or ""
    assert isinstance(tree.body[0], ast.Expr) and repr(hostile) in docstring


def test_the_default_base_url_is_the_platforms_public_url(sqlite_settings: Settings) -> None:
    assert public_url(sqlite_settings.model_copy(update={"host": "127.0.0.1", "port": 9123})) == "http://127.0.0.1:9123"
    assert public_url(sqlite_settings.model_copy(update={"host": "0.0.0.0", "port": 80})) == "http://127.0.0.1:80"
    proxied = sqlite_settings.model_copy(update={"public_url": "https://models.example.com/"})
    assert public_url(proxied) == "https://models.example.com"


async def test_generated_mapping_is_checked_at_run_time(client: httpx.AsyncClient) -> None:
    code = (await client.post("/api/v1/batch-jobs/generate-script", json=body())).json()["code"]
    ns: dict[str, Any] = {"__name__": "generated"}
    exec(compile(code, "score.py", "exec"), ns)
    inputs = [{"name": "X", "data_type": "float", "shape": [None, 4]}]
    columns = [{"name": n, "type": "double"} for n in ("id", "a", "b", "c", "d")]
    with pytest.raises(ns["Failed"], match="names columns the dataset does not have"):
        ns["resolve_mapping"](inputs, columns)  # the generated MAPPING names the iris columns
    ns["MAPPING"] = {}
    assert ns["resolve_mapping"](inputs, columns) == {"X": ["a", "b", "c", "d"]}
    with pytest.raises(ns["Failed"], match="takes 4 values per row"):
        ns["resolve_mapping"](inputs, [*columns, {"name": "target", "type": "int64"}])
    ns["MAPPING"] = {"nope": "a"}
    with pytest.raises(ns["Failed"], match="does not have"):
        ns["resolve_mapping"](inputs, columns)
    ns["MAPPING"] = {}
    with pytest.raises(ns["Failed"], match="no column for the input 'age'"):
        ns["resolve_mapping"]([{"name": "age", "data_type": "double"}], columns)


def test_auto_mapping() -> None:
    columns = [
        {"name": "ID", "type": "int64"},
        {"name": "Sepal_Length", "type": "double"},
        {"name": "width", "type": "float"},
        {"name": "species", "type": "string"},
        {"name": "count", "type": "int32"},
    ]
    per_field = [{"name": "sepal_length", "data_type": "double"}, {"name": "species", "data_type": "string"}]
    assert auto_mapping(per_field, columns) == {"sepal_length": "Sepal_Length", "species": "species"}
    tensor: list[dict[str, Any]] = [
        {"name": "X", "data_type": "float", "shape": [None, 2]},
        {"name": "species", "data_type": "string"},
    ]
    assert auto_mapping(tensor, columns) == {"species": "species", "X": ["Sepal_Length", "width", "count"]}
    assert auto_mapping([{"name": "age", "data_type": "double"}], columns) == {}


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"input_dataset": "missing"}, "input_dataset", "does not exist"),
        ({"input_dataset": "../etc"}, "input_dataset", "letters"),
        ({"service": "nope"}, "service", "does not exist"),
        ({"service": "dangling"}, "service", "points at no version"),
        ({"output_dataset": "flowers"}, "output_dataset", "already exists"),
        ({"output_dataset": "bad/name"}, "output_dataset", "letters"),
        ({"base_url": "ftp://example.com"}, "base_url", "http(s)"),
        ({"base_url": "http://"}, "base_url", "http(s)"),
    ],
)
async def test_refusals_name_the_field(
    client: httpx.AsyncClient, changes: dict[str, Any], field: str, message: str
) -> None:
    resp = await client.post("/api/v1/batch-jobs/generate-script", json=body(**changes))
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    errors = resp.json()["errors"]
    assert [e["field"] for e in errors] == [field]
    assert message in errors[0]["message"]


async def test_every_bad_field_at_once(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/api/v1/batch-jobs/generate-script",
        json={"input_dataset": "missing", "output_dataset": "flowers", "service": "nope"},
    )
    assert resp.status_code == 422
    assert [e["field"] for e in resp.json()["errors"]] == ["input_dataset", "output_dataset", "service"]
    missing = await client.post("/api/v1/batch-jobs/generate-script", json={"input_dataset": "flowers"})
    assert missing.status_code == 422
    assert {e["field"] for e in missing.json()["errors"]} == {"body.output_dataset", "body.service"}


@pytest.fixture
async def script(client: httpx.AsyncClient) -> dict[str, Any]:
    """The generated script's functions (nothing runs: it is not `__main__`)."""
    code = (await client.post("/api/v1/batch-jobs/generate-script", json=body(batch_size=2))).json()["code"]
    namespace: dict[str, Any] = {"__name__": "generated"}
    exec(compile(code, "score.py", "exec"), namespace)
    return namespace


def test_script_reads_csv_jsonl_and_parquet(script: dict[str, Any], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("a,b\n1,x\n,y\n")
    (tmp_path / "d.jsonl").write_text('{"a": 1, "b": "x"}\n\n{"a": null, "b": "y"}\n')
    pq.write_table(pa.Table.from_pylist([{"a": 1, "b": "x"}, {"a": None, "b": "y"}]), tmp_path / "d.parquet")
    assert list(script["read_rows"](str(tmp_path / "d.csv"), "csv")) == [{"a": "1", "b": "x"}, {"a": "", "b": "y"}]
    expected = [{"a": 1, "b": "x"}, {"a": None, "b": "y"}]
    assert list(script["read_rows"](str(tmp_path / "d.jsonl"), "jsonl")) == expected
    assert list(script["read_rows"](str(tmp_path / "d.parquet"), "parquet")) == expected
    assert script["record"]({"a": "", "b": "y", "c": "2"}, {"X": ["a", "c"], "b": "b", "a": "a"}) == {
        "X": [None, "2"],
        "b": "y",
    }


def test_script_writes_prediction_columns_and_names_bad_rows(script: dict[str, Any], tmp_path: Path) -> None:
    calls: list[list[dict[str, Any]]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        records = json.loads(request.content)["inputs"]
        calls.append(records)
        if any(r.get("X") == ["bad"] for r in records):
            problem = {"detail": "Invalid input", "errors": [{"field": "inputs[1].X", "message": "not a number"}]}
            return httpx.Response(422, json=problem)
        predictions = [
            {
                "label": "b",
                "probabilities": {"a": 0.25, "b": 0.75},
                "value": 1.5,
                "cluster": 2,
                "components": [0.1, 0.2],
            }
            for _ in records
        ]
        return httpx.Response(200, json={"predictions": predictions})

    rows = [{"id": i, "label": f"true{i}", "X": [i], "extra": {"k": i}} for i in range(5)]
    out = tmp_path / "out.csv"
    with httpx.Client(transport=httpx.MockTransport(answer), base_url="http://test") as fake:
        done = script["score"](fake, iter(rows), ["id", "label", "extra"], {"X": "X"}, str(out))
        assert done == 5 and [len(c) for c in calls] == [2, 2, 1]
        written = list(csv.DictReader(out.open()))
        assert list(written[0]) == [
            "id", "label", "extra", "prediction_label", "probability_a", "probability_b", "value", "cluster",
            "component_0", "component_1",
        ]  # fmt: skip
        assert written[4] == {
            "id": "4", "label": "true4", "extra": '{"k": 4}', "prediction_label": "b", "probability_a": "0.25",
            "probability_b": "0.75", "value": "1.5", "cluster": "2", "component_0": "0.1", "component_1": "0.2",
        }  # fmt: skip
        rows[3]["X"] = ["bad"]
        with pytest.raises(script["Failed"], match=r"row 4\.X: not a number"):
            script["score"](fake, iter(rows), ["id"], {"X": "X"}, str(out))
