"""ONNX answers as flat columns for batch scoring: `label`, `probability_<class>`, `value`, `cluster`,
`component_<i>`, the same values `predict` gives, without building one dict per row."""

from __future__ import annotations

from typing import Any

import numpy as np

from inference.runtimes.onnx_answers import Answers


def _per_row(value: Any, size: int) -> np.ndarray | None:
    """A label-like output as one value per row (`[N]` or `[N, 1]`), None for anything else."""
    if not isinstance(value, np.ndarray) or value.ndim not in (1, 2) or value.shape[0] != size:
        return None
    if value.ndim == 2:
        if value.shape[1] != 1:
            return None
        value = value[:, 0]
    if value.dtype.kind not in "biuO":
        return None
    return value


def flat_columns(answers: Answers, results: dict[str, Any], size: int) -> dict[str, np.ndarray] | None:
    """The normalised answers as columns, from outputs fetched with the ZipMaps' tensors; None when only the
    record path knows how to answer these outputs."""
    roles, function_type = answers.roles, answers.description.function_type
    out: dict[str, np.ndarray] = {}
    if function_type in ("classification", "clustering"):
        if roles.label is None or (labels := _per_row(results[roles.label], size)) is None:
            return None
        out["label" if function_type == "classification" else "cluster"] = labels
        if function_type == "classification":
            probabilities = _probability_columns(answers, results, size)
            if probabilities is None:
                return None
            out.update(probabilities)
        return out
    if function_type == "regression" and roles.value is not None:
        value = results[roles.value]
        if not (isinstance(value, np.ndarray) and value.ndim and value.shape[0] == size and value.size):
            return None
        if value.dtype.kind not in "biuf":
            return None
        out["value"] = value.reshape(size, -1)[:, 0].astype(np.float64)
        return out
    if function_type == "dimensionality_reduction" and roles.components is not None:
        value = results[roles.components]
        if not (isinstance(value, np.ndarray) and value.ndim and value.shape[0] == size):
            return None
        if value.dtype.kind not in "biuf":
            return None
        flat = value.reshape(size, -1)
        for i in range(flat.shape[1]):
            out[f"component_{i}"] = flat[:, i].astype(np.float64)
        return out
    return None


def _probability_columns(answers: Answers, results: dict[str, Any], size: int) -> dict[str, np.ndarray] | None:
    name = answers.roles.probabilities
    if name is None:
        return None  # the record path decides what an answer without probabilities flattens to
    value = results[name]
    if not (isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[0] == size):
        return None
    if value.dtype.kind != "f":
        return None
    source = answers.zipmap_sources.get(name)
    if source is not None:
        if value.shape[1] != len(source.keys):
            return None
        index = dict(source.pairs)  # class key -> tensor column
        keys = source.keys
    else:
        keys = answers.class_keys or [str(i) for i in range(value.shape[1])]
        index = {key: i for i, key in enumerate(keys[: value.shape[1]])}
    classes = answers.description.class_labels or keys
    columns: dict[str, np.ndarray] = {}
    for cls in classes:
        j = index.get(str(cls))
        if j is None:
            return None
        columns[f"probability_{cls}"] = value[:, j].astype(np.float64)
    return columns
