"""ONNX answers: onnxruntime's outputs normalised by function type, the same answers on every path.

`predict` answers go through the fastest path that fits the outputs, each giving exactly what the general
row-by-row `answer` gives: a compiled one-pass builder for the usual label + probabilities classifier, a
single-record path, a column-by-column batch path. Graphs without a batch axis answer their tensors as
onnxruntime gives them (`whole_answer`): shapes kept, scalars as scalars.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from inference.runtimes.base import NO_GC_ROWS, ModelDescription
from inference.runtimes.onnx_graph import ZIPMAP_TYPES, ZipMapSource, fill
from inference.runtimes.onnx_schema import OutputRoles

Builder = Callable[..., list[dict[str, Any]]]


def jsonable(value: Any) -> Any:
    """An onnxruntime result as plain JSON-ready Python (lists, floats, ints, strs); a 0-d tensor a scalar."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _unwrap(item: Any) -> Any:
    while isinstance(item, list) and len(item) == 1:
        item = item[0]
    return item


def _scalar(value: Any) -> Any:
    return _unwrap(jsonable(value))


def row_of(value: Any, i: int, size: int) -> Any:
    """Row `i` of a batch output; anything else (a constant output) is shared by all rows."""
    if isinstance(value, list) and len(value) == size:
        return value[i]
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == size:
        return value[i]
    return value


def _column(value: Any, size: int, keys: dict[Any, str] | None) -> list[Any] | None:
    """One output as its per-record JSON-ready values (what `jsonable(row_of(value, i, size))` gives for each i).

    `keys`: for a ZipMap output (`seq(map(int64|string, float))`), its keys as strings, filled on first use.
    None when the output is not one entry per record (a constant output): the caller answers row by row.
    """
    if type(value) is np.ndarray:
        if value.ndim == 0 or value.shape[0] != size:
            return None
        if value.dtype.kind in "biuf":
            return value.tolist()  # type: ignore[no-any-return]
        return [jsonable(v) for v in value]
    if type(value) is list and len(value) == size:
        if keys is not None:
            # ZipMap: int or str keys (str(k) is what jsonable makes of them), float values kept as they are.
            try:
                return [{keys[k]: v for k, v in d.items()} for d in value]
            except KeyError:
                for d in value:
                    keys.update((k, str(k)) for k in d if k not in keys and type(k) in (int, str))
                try:
                    return [{keys[k]: v for k, v in d.items()} for d in value]
                except KeyError:
                    pass
        return [jsonable(v) for v in value]
    return None


def _first_floats(value: Any, size: int) -> list[float] | None:
    """`float(ravel(row)[0])` of each row of a batch tensor, None when it is not one."""
    if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != size or value.dtype.kind not in "biuf":
        return None
    if value.ndim == 1:
        return value.astype(np.float64, copy=False).tolist()  # type: ignore[no-any-return]
    flat = value.reshape(size, -1)
    if flat.shape[1] == 0:
        return None
    return flat[:, 0].astype(np.float64).tolist()  # type: ignore[no-any-return]


def _float_rows(value: Any, column: list[Any]) -> list[list[float]] | None:
    """`[float(v) for v in ravel(row)]` of each row; a 2-D float tensor's rows are its raw lists, shared."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        return None
    if value.ndim == 2 and value.dtype.kind == "f":
        return column
    return [[float(v) for v in row] for row in value.reshape(value.shape[0], -1).tolist()]


def _labels(value: Any, column: list[Any]) -> list[Any]:
    """`_scalar` of each row: a 1-D numeric tensor's values as they are, else single-item lists unwrapped."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "biuf":
        return column
    return [_unwrap(v) for v in column]


def answer_builder(output_names: list[str], label: str, keys: list[str], *, raw_row: bool) -> Builder:
    """`build(labels, *probability_columns)` -> every answer `{label, probabilities, raw}` in one comprehension.

    Compiled for the model's class keys (as dataclasses compiles its methods): the dict displays are built
    by the interpreter directly, about twice as fast as filling dicts key by key. Keys and output names enter
    the source only through `repr` of `str`, so they are literals whatever they contain.
    """
    names = [f"p{j}" for j in range(len(keys))]
    probabilities = "{" + ", ".join(f"{key!r}: {name}" for key, name in zip(keys, names, strict=True)) + "}"
    row = "[" + ", ".join(names) + "]" if raw_row else "p"
    raw = "{" + ", ".join(f"{n!r}: {'l' if n == label else row}" for n in output_names) + "}"
    source = (
        f"lambda labels, {', '.join(names)}: [{{'label': l, 'probabilities': (p := {probabilities}), 'raw': {raw}}}"
        f" for l, {', '.join(names)} in zip(labels, {', '.join(names)})]"
    )
    return eval(source, {"__builtins__": {"zip": zip}})  # type: ignore[no-any-return]  # noqa: S307


def whole_answer(output_names: list[str], outputs: list[Any]) -> dict[str, Any]:
    """A graph without a batch axis: its outputs under `raw`, each exactly as onnxruntime gives it."""
    return {"raw": {name: jsonable(value) for name, value in zip(output_names, outputs, strict=True)}}


class Answers:
    """Normalised answers of one graph from its outputs (by output name, ZipMaps possibly already maps)."""

    def __init__(
        self,
        description: ModelDescription,
        roles: OutputRoles,
        output_names: list[str],
        zipmap_sources: dict[str, ZipMapSource],
    ) -> None:
        self.description = description
        self.roles = roles
        self.output_names = output_names
        self.zipmap_sources = zipmap_sources
        labels = description.class_labels
        self.class_keys = [str(label) for label in labels] if labels else None
        self.zipmaps = zipmap_outputs = {o.name for o in description.outputs if o.data_type in ZIPMAP_TYPES}
        # Output name -> its ZipMap keys as strings (filled on first use), None for other outputs.
        self.key_maps: list[tuple[str, dict[Any, str] | None]] = [
            (name, {} if name in zipmap_outputs else None) for name in output_names
        ]
        self.classify_plan = self._classification_plan()

    def _classification_plan(self) -> tuple[list[int], Builder] | None:
        """For a classifier answering label + class probabilities (the usual skl2onnx graph), the tensor column
        of each class key and a compiled builder making every answer in one pass; None for other graphs."""
        roles, names = self.roles, self.output_names
        if self.description.function_type != "classification" or roles.label is None or not roles.probabilities:
            return None
        if set(names) != {roles.label, roles.probabilities} or len(names) != 2:
            return None
        source = self.zipmap_sources.get(roles.probabilities)
        if source is not None:
            keys, columns = source.keys, source.columns
        elif roles.probabilities not in self.zipmaps and self.class_keys:
            keys, columns = self.class_keys, list(range(len(self.class_keys)))
        else:
            return None
        if not keys or len(set(keys)) != len(keys) or len(keys) > 64:
            return None
        # A ZipMap's raw output is its dict (the same object as `probabilities`); a tensor's is its row.
        return columns, answer_builder(names, roles.label, keys, raw_row=source is None)

    def classify(self, outputs: dict[str, Any], size: int) -> list[dict[str, Any]] | None:
        """A classifier's batch answered straight from its label and probability tensors (fetched with the
        ZipMaps' tensors); the same answers as `batch`, in one pass. None when the outputs differ."""
        assert self.classify_plan is not None and self.roles.label is not None and self.roles.probabilities
        columns, build = self.classify_plan
        labels, scores = outputs[self.roles.label], outputs[self.roles.probabilities]
        if not (type(labels) is np.ndarray and labels.shape == (size,) and labels.dtype.kind in "biu"):
            return None
        if not (type(scores) is np.ndarray and scores.ndim == 2 and scores.shape[0] == size):
            return None
        if scores.dtype != np.float32 or scores.shape[1] <= max(columns):
            return None
        if self.roles.probabilities not in self.zipmap_sources and scores.shape[1] != len(columns):
            return None  # the raw row would be more than the classes' columns
        by_column = scores.T.tolist()
        return build(labels.tolist(), *(by_column[j] for j in columns))

    def predictions(self, results: dict[str, Any], size: int, converted: frozenset[str]) -> list[dict[str, Any]]:
        """Every record's answer, by the fastest path that fits the outputs."""
        if size == 1:
            answer = self.one(results, converted)
            if answer is not None:
                return [answer]
        answers = self.batch(results, size, converted)
        if answers is not None:
            return answers
        return [self.answer({name: row_of(value, i, size) for name, value in results.items()}) for i in range(size)]

    def one(self, results: dict[str, Any], converted: frozenset[str]) -> dict[str, Any] | None:
        """One record's answer for the usual graphs (numeric tensors, ZipMap), with as few calls as possible.

        The same answer as `batch` gives; None for anything else (it then answers).
        """
        raw: dict[str, Any] = {}
        for name, keys in self.key_maps:
            value = results[name]
            if name in converted:
                raw[name] = value[0]
            elif type(value) is np.ndarray and value.ndim and value.shape[0] == 1 and value.dtype.kind in "biuf":
                raw[name] = value.tolist()[0]
            elif keys is not None and type(value) is list and len(value) == 1 and type(value[0]) is dict:
                try:
                    raw[name] = {keys[k]: v for k, v in value[0].items()}
                except KeyError:
                    return None
            else:
                return None
        roles, function_type = self.roles, self.description.function_type
        if function_type == "classification" and roles.label is not None:
            label = raw[roles.label]
            if type(label) is list:
                return None
            if roles.probabilities is None:
                return {"label": label, "probabilities": {}, "raw": raw}
            if roles.probabilities in self.zipmaps:
                return {"label": label, "probabilities": raw[roles.probabilities], "raw": raw}
            return None
        if function_type == "regression" and roles.value is not None:
            value = raw[roles.value]
            if type(value) is list and len(value) == 1:
                value = value[0]
            if type(value) is float:
                return {"value": value, "raw": raw}
        return None

    def batch(self, results: dict[str, Any], size: int, converted: frozenset[str]) -> list[dict[str, Any]] | None:
        """The batch's answers built column by column (one `tolist()` per output, no per-row numpy).

        Same answers as `answer` row by row; `raw` and the normalised fields share objects where their
        values are equal (a ZipMap dict is both `raw[...]` and `probabilities`). None for outputs this
        path does not handle (constant outputs, unusual shapes): the caller answers row by row.
        """
        columns: dict[str, list[Any]] = {}
        for name, keys in self.key_maps:
            column = results[name] if name in converted else _column(results[name], size, keys)
            if column is None:
                return None
            columns[name] = column
        if len(columns) == 2:  # the usual label + probabilities (or label + scores)
            (first, first_values), (second, second_values) = columns.items()
            raws = [{first: a, second: b} for a, b in zip(first_values, second_values, strict=True)]
        elif size < NO_GC_ROWS:
            names = list(columns)
            raws = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        else:
            raws = [{} for _ in range(size)]
            for name, column in columns.items():
                fill(raws, name, column)
        roles, function_type = self.roles, self.description.function_type
        if function_type == "classification":
            assert roles.label is not None
            labels = _labels(results[roles.label], columns[roles.label])
            probabilities = self._probability_column(results, columns, size)
            if probabilities is None:
                return None
            return [
                {"label": label, "probabilities": p, "raw": raw}
                for label, p, raw in zip(labels, probabilities, raws, strict=True)
            ]
        if function_type == "regression":
            assert roles.value is not None
            values = _first_floats(results[roles.value], size)
            if values is None:
                return None
            return [{"value": v, "raw": raw} for v, raw in zip(values, raws, strict=True)]
        if function_type == "clustering":
            assert roles.label is not None
            clusters = _labels(results[roles.label], columns[roles.label])
            if roles.scores is None:
                return [{"cluster": c, "raw": raw} for c, raw in zip(clusters, raws, strict=True)]
            distances = _float_rows(results[roles.scores], columns[roles.scores])
            if distances is None:
                return None
            return [
                {"cluster": c, "distances": d, "raw": raw} for c, d, raw in zip(clusters, distances, raws, strict=True)
            ]
        if function_type == "dimensionality_reduction":
            assert roles.components is not None
            components = _float_rows(results[roles.components], columns[roles.components])
            if components is None:
                return None
            return [{"components": c, "raw": raw} for c, raw in zip(components, raws, strict=True)]
        return [{"raw": raw} for raw in raws]

    def _probability_column(
        self, results: dict[str, Any], columns: dict[str, list[Any]], size: int
    ) -> list[dict[str, float]] | None:
        """`_probabilities` of each row, sharing the raw ZipMap dicts; None when only the row path knows."""
        name = self.roles.probabilities
        if name is None:
            return [{} for _ in range(size)]
        value, column = results[name], columns[name]
        if type(value) is list:
            if name in self.zipmaps:
                return column  # ZipMap: {str(class): float} already, the same object as in raw
            return None
        if not (type(value) is np.ndarray and value.ndim == 2 and value.dtype.kind == "f"):
            return None
        keys = self.class_keys or [str(i) for i in range(value.shape[1])]
        if value.shape[1] == 0 or not keys:
            return [{} for _ in range(size)]
        probabilities: list[dict[str, float]] = [{} for _ in range(size)]
        for key, scores in zip(keys, value.T.tolist(), strict=False):
            fill(probabilities, key, scores)
        return probabilities

    def answer(self, row: dict[str, Any]) -> dict[str, Any]:
        """One record's answer from its row of every output (the general path the others equal)."""
        raw = {name: jsonable(value) for name, value in row.items()}
        roles, function_type = self.roles, self.description.function_type
        if function_type == "classification":
            assert roles.label is not None
            return {"label": _scalar(row[roles.label]), "probabilities": self._probabilities(row), "raw": raw}
        if function_type == "regression":
            assert roles.value is not None
            return {"value": float(np.asarray(row[roles.value]).ravel()[0]), "raw": raw}
        if function_type == "clustering":
            assert roles.label is not None
            answer: dict[str, Any] = {"cluster": _scalar(row[roles.label])}
            if roles.scores is not None:
                answer["distances"] = [float(v) for v in np.asarray(row[roles.scores]).ravel()]
            answer["raw"] = raw
            return answer
        if function_type == "dimensionality_reduction":
            assert roles.components is not None
            return {"components": [float(v) for v in np.asarray(row[roles.components]).ravel()], "raw": raw}
        return {"raw": raw}

    def _probabilities(self, row: dict[str, Any]) -> dict[str, float]:
        name = self.roles.probabilities
        if name is None:
            return {}
        value = row[name]
        if isinstance(value, dict):  # ZipMap
            return {str(k): float(v) for k, v in value.items()}
        scores = np.asarray(value, dtype=np.float64).ravel()
        labels = self.description.class_labels or list(range(len(scores)))
        return {str(label): float(p) for label, p in zip(labels, scores, strict=False)}
