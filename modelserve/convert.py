"""scikit-learn → ONNX on the user's machine (skl2onnx), checked on sample rows before anything is uploaded.

The platform never unpickles: a `.joblib`/`.pkl` file is loaded here, by its owner, and only the ONNX graph
leaves the machine. The converted graph must answer the sample like the original model: the same labels (or
clusters), and probabilities or values within `tolerance` (absolute for probabilities, relative to
max(1, |value|) for regression values); the largest difference is printed with the tolerance.

A model fitted on a DataFrame (with `feature_names_in_`) gets one named input per column, so its requests
and CSV files use the column names; a model fitted on an array gets one tensor input `X`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


class ConversionError(Exception):
    """The model could not be loaded or converted, or the ONNX graph answers the sample differently."""


@dataclass
class Conversion:
    source: str
    path: Path
    rows: int
    kind: str
    max_difference: float
    tolerance: float

    def summary(self) -> str:
        return (
            f"converted {self.source} ({self.kind}) to ONNX with skl2onnx; checked on {self.rows} sample rows: "
            f"{'same labels, ' if self.kind != 'regression' else ''}max |difference| {self.max_difference:.3g}"
            f" <= tolerance {self.tolerance:g}"
        )


def load_sklearn(path: Path) -> Any:
    """A scikit-learn model from `.joblib`/`.pkl` (unpickled: only load your own files) or `.skops`."""
    suffix = path.suffix.lower()
    if suffix == ".skops":
        try:
            import skops.io as sio
        except ImportError as exc:
            raise ConversionError("reading .skops files needs skops: pip install skops") from exc
        untrusted = sio.get_untrusted_types(file=path)
        foreign = [t for t in untrusted if not t.startswith(("sklearn.", "numpy.", "scipy."))]
        if foreign:
            raise ConversionError(f"{path.name} holds types outside scikit-learn/numpy/scipy: {', '.join(foreign)}")
        return sio.load(path, trusted=untrusted)
    if suffix in (".joblib", ".pkl", ".pickle"):
        import joblib

        return joblib.load(path)
    raise ConversionError(f"--convert onnx reads .joblib, .pkl or .skops files, not {path.name}")


def _read_sample(sample: Path) -> Any:
    import pandas as pd

    try:
        frame = pd.read_csv(sample)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read the sample {sample}: {exc}") from exc
    if frame.empty:
        raise ConversionError(f"the sample {sample} has no rows")
    return frame


def _inputs(model: Any, frame: Any) -> tuple[Any, list[tuple[str, Any]], dict[str, Any], Any]:
    """(the model to convert, skl2onnx initial types, the ONNX feed for the sample, the sample for sklearn)."""
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        columns = [str(n) for n in names]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ConversionError(f"the sample lacks the model's columns: {', '.join(missing)}")
        x = frame[columns]
        first = model.steps[0][1] if isinstance(model, Pipeline) else None
        if not isinstance(first, ColumnTransformer):
            # One named input per column: a fitted pass-through in front of the (already fitted) model.
            columns_step = ColumnTransformer([("features", "passthrough", columns)]).fit(x)
            model = Pipeline([("columns", columns_step), ("model", model)])
        types = [(c, FloatTensorType([None, 1])) for c in columns]
        feed = {c: x[[c]].to_numpy(dtype=np.float32) for c in columns}
        return model, types, feed, x
    width = getattr(model, "n_features_in_", None)
    numeric = frame.select_dtypes("number")
    if width is None or numeric.shape[1] != width:
        raise ConversionError(
            f"the model was fitted on an array of {width} features: the sample must have exactly that many numeric "
            f"columns (it has {numeric.shape[1]})"
        )
    x = numeric.to_numpy(dtype=np.float32)
    return model, [("X", FloatTensorType([None, width]))], {"X": x}, x


def convert_to_onnx(source: Path, sample: Path, tolerance: float = 1e-4, out_dir: Path | None = None) -> Conversion:
    """Convert the model in `source`, check it on `sample`'s rows, write `<stem>.onnx`; refuse on a mismatch."""
    model = load_sklearn(source)
    return convert_model(model, source.stem, _read_sample(sample), tolerance, out_dir, source.name)


def convert_model(
    model: Any, stem: str, frame: Any, tolerance: float, out_dir: Path | None = None, source: str | None = None
) -> Conversion:
    try:
        from skl2onnx import to_onnx
    except ImportError as exc:
        raise ConversionError("--convert onnx needs skl2onnx: pip install skl2onnx") from exc
    import onnxruntime as ort

    wrapped, types, feed, x = _inputs(model, frame)
    estimator = wrapped.steps[-1][1] if hasattr(wrapped, "steps") else wrapped
    classifier = hasattr(estimator, "predict_proba")
    options = {id(estimator): {"zipmap": False}} if classifier else None
    try:
        graph = to_onnx(wrapped, initial_types=types, options=options, target_opset=TARGET_OPSET)
    except Exception as exc:  # skl2onnx raises many kinds for an unsupported estimator
        raise ConversionError(f"skl2onnx cannot convert {type(estimator).__name__}: {exc}") from exc
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, feed)
    kind, difference = _compare(model, x, outputs, classifier)
    if difference > tolerance:
        raise ConversionError(
            f"the ONNX graph answers the sample differently: max |difference| {difference:.3g} > tolerance "
            f"{tolerance:g} (raise --tolerance if that is acceptable)"
        )
    directory = out_dir or Path(tempfile.mkdtemp(prefix="modelserve-convert-"))
    path = directory / f"{stem}.onnx"
    path.write_bytes(graph.SerializeToString())
    return Conversion(source or stem, path, len(frame), kind, difference, tolerance)


def _compare(model: Any, x: Any, outputs: list[Any], classifier: bool) -> tuple[str, float]:
    expected = model.predict(x)
    got = np.asarray(outputs[0]).reshape(len(expected), -1)[:, 0] if np.ndim(outputs[0]) > 1 else outputs[0]
    if classifier or _is_clusterer(model):
        mismatched = int(np.sum(np.asarray(got).astype(str) != np.asarray(expected).astype(str)))
        if mismatched:
            raise ConversionError(f"the ONNX graph gives another label on {mismatched} of {len(expected)} sample rows")
        if not classifier:
            return "clustering", 0.0
        probabilities = np.asarray(outputs[1], dtype=np.float64)
        return "classification", float(np.max(np.abs(probabilities - model.predict_proba(x))))
    values = np.asarray(got, dtype=np.float64).reshape(-1)
    wanted = np.asarray(expected, dtype=np.float64).reshape(-1)
    return "regression", float(np.max(np.abs(values - wanted) / np.maximum(1.0, np.abs(wanted))))


def _is_clusterer(model: Any) -> bool:
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    return getattr(estimator, "_estimator_type", None) == "clusterer" or hasattr(estimator, "cluster_centers_")
