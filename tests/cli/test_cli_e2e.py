"""The `modelserve` command against a real `modelserve up`: every call is a subprocess over real HTTP."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.client.conftest import IRIS_CSV
from tests.e2e.conftest import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_push_deploy_predict_from_csv(cli: Cli, example_models: Path, tmp_path: Path) -> None:
    pushed = cli.ok("models", "push", str(example_models / "iris.onnx"), "--name", "iris", "--json").json()
    assert pushed["model"] == "iris" and pushed["version"] == 1 and pushed["function_type"] == "classification"
    assert [i["name"] for i in pushed["inputs"]] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]

    shown = cli.ok("models", "show", "iris")  # a person's view: a table of the inputs
    assert "sepal_length" in shown.stdout and "classification" in shown.stdout
    listed = cli.ok("models", "list", "--json").json()
    assert listed["total"] == 1 and listed["items"][0]["name"] == "iris"
    tested = cli.ok("models", "test", "iris", "--data", json.dumps(SETOSA), "--json").json()
    assert tested["predictions"][0]["label"] == "setosa"

    service = cli.ok("deploy", "iris", "--replicas", "2", "--wait", "--json").json()
    assert service["status"] == "running" and service["ready_replicas"] == 2
    # Right after `deploy --wait`: no 503.
    out = tmp_path / "scored.csv"
    cli.ok("predict", "iris", "--file", str(IRIS_CSV), "--output", str(out))
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    with IRIS_CSV.open() as handle:
        inputs = list(csv.DictReader(handle))
    assert len(rows) == len(inputs)
    assert rows[0]["sepal_length"] == inputs[0]["sepal_length"]  # input columns first, then predictions
    assert [r["label"] for r in rows[:3]] == ["setosa"] * 3 and rows[6]["label"] == "virginica"
    assert float(rows[0]["probability(setosa)"]) == pytest.approx(1.0)

    table = cli.ok("predict", "iris", "--data", json.dumps(SETOSA))
    assert "setosa" in table.stdout
    queued = cli.ok("predict", "iris", "--data", json.dumps([SETOSA, SETOSA]), "--async", "--wait", "--json").json()
    assert [p["label"] for p in queued["predictions"]] == ["setosa", "setosa"]

    services = cli.ok("services", "list", "--json").json()
    assert services["total"] == 1 and services["items"][0]["name"] == "iris"
    assert cli.ok("services", "scale", "iris", "1", "--json").json()["replicas"] == 1
    assert cli.ok("services", "pause", "iris", "--json").json()["status"] == "paused"
    paused = cli("predict", "iris", "--data", json.dumps(SETOSA))
    assert paused.code == 5 and "503" in paused.stderr
    cli.ok("services", "start", "iris")
    assert cli.ok("services", "wait", "iris", "--json").json()["status"] == "running"


def test_errors_are_one_line_with_distinct_exit_codes(cli: Cli, example_models: Path) -> None:
    missing = cli("models", "show", "no-such-model")
    assert missing.code == 4
    assert missing.stderr.strip().count("\n") == 0 and "404" in missing.stderr and "no-such-model" in missing.stderr

    cli.ok("models", "push", str(example_models / "diabetes.onnx"), "--name", "diabetes")
    invalid = cli("models", "test", "diabetes", "--data", '{"age": "old"}')
    assert invalid.code == 4
    line = invalid.stderr.strip()
    assert line.count("\n") == 0 and "422" in line and "inputs[0].age" in line, line
    as_json = cli("models", "test", "diabetes", "--data", '{"age": "old"}', "--json")
    problem = json.loads(as_json.stderr)
    assert as_json.code == 4 and problem["status"] == 422 and problem["errors"]

    assert cli("models", "list", env={"MODELSERVE_API_KEY": "msk_wrong_key"}).code == 3
    assert cli("models", "push").code == 2  # usage: no file, no --name
    assert cli("predict", "x", "--data", "{not json").code == 2
    assert cli("models", "list", env={"MODELSERVE_URL": "http://127.0.0.1:9"}).code == 5


def test_login_stores_the_key_for_later_commands(cli: Cli, shared_platform: Platform) -> None:
    env = {"MODELSERVE_URL": "", "MODELSERVE_API_KEY": ""}
    refused = cli("login", shared_platform.url, "--key", "msk_nope_nope", env=env)
    assert refused.code == 3
    cli.ok("login", shared_platform.url, input=shared_platform.admin_key + "\n", env=env)
    config = Path(cli.env["XDG_CONFIG_HOME"]) / "modelserve" / "config.json"
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": shared_platform.url, "api_key": shared_platform.admin_key}
    assert cli.ok("keys", "list", "--json", env=env).json()["total"] >= 1


def test_keys_create_list_revoke(cli: Cli) -> None:
    created = cli.ok("keys", "create", "app", "--scope", "predict", "--service", "iris", "--json").json()
    assert created["key"].startswith("msk_") and created["services"] == ["iris"]
    listed = cli.ok("keys", "list", "--json").json()
    assert created["id"] in {k["id"] for k in listed["items"]} and "key" not in listed["items"][0]
    assert "app" in cli.ok("keys", "list").stdout
    # The new key may predict but not list keys: 403 is an auth error.
    assert cli("keys", "list", env={"MODELSERVE_API_KEY": created["key"]}).code == 3
    cli.ok("keys", "revoke", created["id"])
    assert created["id"] not in {k["id"] for k in cli.ok("keys", "list", "--json").json()["items"]}


def test_convert_a_joblib_model_and_run_a_batch_job_to_success(cli: Cli, example_models: Path, tmp_path: Path) -> None:
    pushed = cli.ok("models", "push", str(example_models / "iris.joblib"), "--name", "iris-converted",
                    "--convert", "onnx", "--sample", str(IRIS_CSV), "--json")  # fmt: skip
    assert "max |difference|" in pushed.stderr and "tolerance" in pushed.stderr
    assert pushed.json()["format"] == "onnx" and "skl2onnx" in pushed.json()["description"]
    refused = cli("models", "push", str(example_models / "iris.joblib"), "--name", "x", "--convert", "onnx")
    assert refused.code == 2 and "--sample" in refused.stderr

    cli.ok("deploy", "iris-converted", "--name", "scorer", "--wait")
    dataset = cli.ok("datasets", "push", str(IRIS_CSV), "--name", "iris-rows", "--json").json()
    assert dataset["rows"] == 12
    assert "iris-rows" in cli.ok("datasets", "list").stdout
    cli.ok("jobs", "create", "score", "--service", "scorer", "--input", "iris-rows", "--output", "iris-scored")
    watched = cli.ok("jobs", "run", "score", "--watch")
    assert "succeeded" in watched.stdout
    run = cli.ok("runs", "show", "score", "1", "--json").json()
    assert run["status"] == "succeeded" and run["rows_done"] == 12 and run["result_dataset"] == "iris-scored"
    result = tmp_path / "scored.csv"
    cli.ok("runs", "result", "score", "1", "--output", str(result))
    with result.open() as handle:
        scored = list(csv.DictReader(handle))
    assert len(scored) == 12 and scored[0]["label"] == "setosa"
    downloaded = tmp_path / "rows.csv"
    cli.ok("datasets", "download", "iris-rows", "--output", str(downloaded))
    assert downloaded.read_bytes() == IRIS_CSV.read_bytes()
    assert cli.ok("jobs", "list", "--json").json()["items"][0]["last_run"]["status"] == "succeeded"


def test_a_failed_run_exits_non_zero(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sepal_length,sepal_width,petal_length,petal_width\nlong,wide,long,wide\n")
    cli.ok("datasets", "push", str(bad), "--name", "bad-rows")
    cli.ok("jobs", "create", "broken", "--service", "scorer", "--input", "bad-rows", "--output", "never")
    failed = cli("jobs", "run", "broken", "--watch", "--json")
    assert failed.code == 1, failed.stderr
    assert failed.json()["status"] == "failed" and failed.json()["error"]


def test_internal_polling_is_not_logged_at_info(cli: Cli, shared_platform: Platform) -> None:
    cli.ok("models", "list")
    lines = [json.loads(line) for line in shared_platform.log.read_text().splitlines() if line.startswith("{")]
    access = [entry["msg"] for entry in lines if entry.get("logger") == "modelserve.access"]
    assert any("/api/v1/models" in msg for msg in access)  # user traffic is logged
    assert not [msg for msg in access if "/internal/" in msg or "/health/" in msg]


@pytest.mark.timeout(1200)  # importing MLflow alone takes tens of seconds of CPU
def test_import_from_an_mlflow_registry(cli: Cli, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    import mlflow
    import mlflow.sklearn
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    store = f"file://{tmp_path / 'mlruns'}"
    env = {"MLFLOW_TRACKING_URI": store, "MLFLOW_ALLOW_FILE_STORE": "true"}
    os.environ.update(env)  # this process logs the model; the command reads it
    try:
        mlflow.set_tracking_uri(store)
        frame = pd.read_csv(IRIS_CSV)
        labels = ["setosa"] * 3 + ["versicolor"] * 3 + ["virginica"] * 3 + ["setosa", "versicolor", "virginica"]
        with mlflow.start_run() as run:
            model = LogisticRegression(max_iter=500).fit(frame, labels)
            mlflow.log_metric("accuracy", 0.96)
            mlflow.sklearn.log_model(model, name="model", registered_model_name="flowers", input_example=frame.head(3))
        mlflow.tracking.MlflowClient().set_registered_model_alias("flowers", "champion", "1")
    finally:
        for key in env:
            os.environ.pop(key, None)
    imported = cli.ok("models", "import", "models:/flowers@champion", "--json", env=env)
    version = imported.json()
    assert version["model"] == "flowers" and version["format"] == "onnx"
    assert run.info.run_id in version["description"] and "accuracy=0.96" in version["description"]
    assert "max |difference|" in imported.stderr
    answer = cli.ok("models", "test", "flowers", "--file", str(IRIS_CSV), "--json").json()
    assert [p["label"] for p in answer["predictions"]] == list(model.predict(frame))
    missing = cli("models", "import", "models:/flowers/7", env=env)
    assert missing.code == 4 and "flowers" in missing.stderr
