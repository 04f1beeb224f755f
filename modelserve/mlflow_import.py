"""`modelserve models import models:/<name>/<version>` (or `models:/<name>@<alias>`): a scikit-learn model from an
MLflow registry (`MLFLOW_TRACKING_URI`), converted to ONNX here and checked (see `modelserve.convert`).

The version's description keeps where it came from: the MLflow model URI, version, run id and the run's metrics.
Needs `pip install mlflow-skinny` (or `mlflow`); nothing else of MLflow runs on the platform.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelserve.convert import Conversion, ConversionError, convert_model

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_.-]+))$")


class NotInMlflow(ConversionError):
    """The registry has no such model, version or alias."""


@dataclass
class Imported:
    name: str
    version: str
    run_id: str | None
    metrics: dict[str, float]
    conversion: Conversion

    @property
    def description(self) -> str:
        metrics = ", ".join(f"{k}={v:.6g}" for k, v in sorted(self.metrics.items()))
        return (
            f"Imported from MLflow models:/{self.name}/{self.version} (run {self.run_id or '-'}"
            + (f"; metrics {metrics}" if metrics else "")
            + f"). {self.conversion.summary()}"
        )


def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    match = _URI.match(uri)
    if match is None:
        raise ConversionError(
            f"not an MLflow model URI: {uri!r} (expected models:/<name>/<version> or models:/<name>@<alias>)"
        )
    return match["name"], match["version"], match["alias"]


def fetch_mlflow_model(uri: str, sample: Path | None, tolerance: float) -> Imported:
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ConversionError("models import needs MLflow: pip install mlflow-skinny") from exc
    name, version, alias = parse_uri(uri)
    client = MlflowClient()
    try:
        found = (
            client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
        )
    except mlflow.exceptions.MlflowException as exc:
        raise NotInMlflow(f"MLflow has no {uri}: {exc.message}") from exc
    run_id = found.run_id
    metrics: dict[str, float] = {}
    if run_id:
        try:
            metrics = dict(client.get_run(run_id).data.metrics)
        except mlflow.exceptions.MlflowException:
            metrics = {}
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{found.version}"))
    model = mlflow.sklearn.load_model(str(local))
    frame = _sample(local, sample)
    conversion = convert_model(model, f"{name}-v{found.version}", frame, tolerance, source=uri)
    return Imported(name, str(found.version), run_id, metrics, conversion)


def _sample(local: Path, sample: Path | None) -> Any:
    import pandas as pd

    if sample is not None:
        return pd.read_csv(sample)
    from mlflow.models import Model

    example = Model.load(str(local)).load_input_example(str(local))
    if example is None:
        raise ConversionError("the MLflow model has no input example: give --sample rows.csv to check the conversion")
    return example if isinstance(example, pd.DataFrame) else pd.DataFrame(example)
