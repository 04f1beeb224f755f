"""The generated scoring script, run as a user would against the live platform: download, predict, upload."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Platform
from tests.e2e.test_services_e2e import running, upload, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_csv(n: int) -> bytes:
    species = [(5.0, 3.4, 1.5, 0.2), (5.9, 2.8, 4.3, 1.3), (6.6, 3.0, 5.6, 2.1)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", *FEATURES, "note"])
    for i in range(n):
        base = species[i % 3]
        writer.writerow([i, *(round(v + (i % 5) * 0.05, 2) for v in base), f"row {i}"])
    return out.getvalue().encode()


def test_generated_script_scores_a_dataset(
    platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    upload(admin, "iris", onnx_models["random_forest"])
    created = admin.post("/api/v1/services", json={"name": "iris", "model": "iris"})
    assert created.status_code == 201, created.text
    wait_for(lambda: running(admin, "iris"), what="service running")
    data = iris_csv(50)
    resp = admin.post("/api/v1/datasets", data={"name": "flowers"}, files={"file": ("flowers.csv", data, "text/csv")})
    assert resp.status_code == 201, resp.text

    key = admin.post("/api/v1/keys", json={"name": "script", "scopes": ["admin"]}).json()["key"]
    resp = admin.post(
        "/api/v1/batch-jobs/generate-script",
        json={
            "input_dataset": "flowers",
            "output_dataset": "flowers-scored",
            "service": "iris",
            "batch_size": 20,
        },  # no base_url: the script points at the platform's public URL
    )
    assert resp.status_code == 200, resp.text
    code = resp.json()["code"]
    assert f"BASE_URL = {platform.url!r}" in code
    assert key not in code and platform.admin_key not in code
    missing = admin.post(
        "/api/v1/batch-jobs/generate-script",
        json={"input_dataset": "nope", "output_dataset": "x", "service": "iris"},
    )
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "input_dataset"

    script = tmp_path / "score.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
    without_key = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert without_key.returncode == 2 and "MODELSERVE_API_KEY" in without_key.stderr
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**env, "MODELSERVE_API_KEY": key},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "scored 50 rows" in done.stdout and "X" in done.stdout

    described = admin.get("/api/v1/datasets/flowers-scored").json()
    assert described["rows"] == 50 and described["source"] == "local"
    names = [c["name"] for c in described["columns"]]
    assert names[:6] == ["id", *FEATURES, "note"] and "label" in names
    assert {"probability_0", "probability_1", "probability_2"} <= set(names)

    rows = list(csv.DictReader(io.StringIO(admin.get("/api/v1/datasets/flowers-scored/download").text)))
    assert [int(r["id"]) for r in rows] == list(range(50))
    records = [{"X": [float(r[f]) for f in FEATURES]} for r in rows]
    expected = admin.post("/api/v1/services/iris/predict", json={"inputs": records}).json()["predictions"]
    assert [int(r["label"]) for r in rows] == [p["label"] for p in expected]
    assert {int(r["label"]) for r in rows} == {0, 1, 2}

    again = subprocess.run(
        [sys.executable, str(script)],
        env={**env, "MODELSERVE_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 1 and "already exists" in again.stderr  # the output name is taken now
