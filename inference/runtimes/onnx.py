"""ONNX runtime: onnxruntime sessions, one `session.run` per batch, answers normalised by function type."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from operator import setitem
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from inference.runtimes.base import NO_GC_ROWS, EngineInfo, FieldSpec, FunctionType, ModelDescription, gc_paused_for
from inference.runtimes.onnx_schema import (
    OutputRoles,
    algorithm_and_function,
    class_labels,
    inputs_of,
    output_roles,
    outputs_of,
    parse_onnx,
    refuse_external_data,
    resolve_function_type,
)
from shared.errors import InvalidModel, ModelServeError, ValidationFailed, field_error
from shared.settings import Settings

logger = logging.getLogger("modelserve.runtimes.onnx")

_OPTIMISATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_ENGINE_CHOICES = (None, "auto", "onnx", "onnxruntime")


def numpy_dtype(data_type: str) -> np.dtype[Any]:
    """numpy dtype of an ONNX element type name (`string` -> object, as onnxruntime wants)."""
    if data_type == "string":
        return np.dtype(object)
    return np.dtype(helper.tensor_dtype_to_np_dtype(getattr(TensorProto, data_type.upper())))


def providers(settings: Settings) -> list[str]:
    """Configured execution providers that this onnxruntime build has, CUDA first, CPU always last."""
    available = set(ort.get_available_providers())
    chosen = [p for p in settings.onnx_providers if p in available]
    if "CUDAExecutionProvider" in chosen:
        chosen.remove("CUDAExecutionProvider")
        chosen.insert(0, "CUDAExecutionProvider")
    if "CPUExecutionProvider" in chosen:
        chosen.remove("CPUExecutionProvider")
    return [*chosen, "CPUExecutionProvider"]


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.onnx_intra_op_threads
    options.inter_op_num_threads = settings.onnx_inter_op_threads
    options.graph_optimization_level = _OPTIMISATION[settings.onnx_graph_optimization]
    return options


def _jsonable(value: Any) -> Any:
    """An onnxruntime result as plain JSON-ready Python (lists, floats, ints, strs)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _scalar(value: Any) -> Any:
    return _unwrap(_jsonable(value))


def _unwrap(item: Any) -> Any:
    while isinstance(item, list) and len(item) == 1:
        item = item[0]
    return item


_ZIPMAP_TYPES = frozenset({"seq(map(int64,float))", "seq(map(string,float))"})
"""A ZipMap's output: onnxruntime gives a list of dicts {int|str: float}."""
_FAST_INPUT_ROWS = 64
"""From this many records, a float [N, k] input is filled with `np.fromiter` (≈2× faster than `np.asarray`)."""


def _fill(dicts: list[dict[str, Any]], key: str, values: Any) -> None:
    """`dicts[i][key] = values[i]` for every i, looped in C."""
    deque(map(setitem, dicts, repeat(key), values), maxlen=0)


def _column(value: Any, size: int, keys: dict[Any, str] | None) -> list[Any] | None:
    """One output as its per-record JSON-ready values (what `_jsonable(_row(value, i, size))` gives for each i).

    `keys`: for a ZipMap output (`seq(map(int64|string, float))`), its keys as strings, filled on first use.
    None when the output is not one entry per record (a constant output): the caller answers row by row.
    """
    if type(value) is np.ndarray:
        if value.ndim == 0 or value.shape[0] != size:
            return None
        if value.dtype.kind in "biuf":
            return value.tolist()  # type: ignore[no-any-return]
        return [_jsonable(v) for v in value]
    if type(value) is list and len(value) == size:
        if keys is not None:
            # ZipMap: int or str keys (str(k) is what _jsonable makes of them), float values kept as they are.
            try:
                return [{keys[k]: v for k, v in d.items()} for d in value]
            except KeyError:
                for d in value:
                    keys.update((k, str(k)) for k in d if k not in keys and type(k) in (int, str))
                try:
                    return [{keys[k]: v for k, v in d.items()} for d in value]
                except KeyError:
                    pass
        return [_jsonable(v) for v in value]
    return None


class OnnxRuntime:
    """A loaded ONNX model on an onnxruntime `InferenceSession`."""

    def __init__(
        self,
        description: ModelDescription,
        session: ort.InferenceSession,
        roles: OutputRoles,
        zipmaps: dict[str, _ZipMapSource] | None = None,
        full_session: Callable[[], ort.InferenceSession] | None = None,
    ) -> None:
        self.description = description
        self._session: ort.InferenceSession | None = session
        # `session` may lack the ZipMap nodes (answered from their tensors here): the original graph, built on
        # first need, for the rare tensor that is not the [N, C] floats expected.
        self._full_session_factory = full_session
        self._full_session: ort.InferenceSession | None = None
        self._roles = roles
        # The model's own outputs (a session built with ZipMap tensors exposed has those after them).
        self._output_names = [o.name for o in description.outputs] or [o.name for o in session.get_outputs()]
        self._zipmap_sources = zipmaps or {}
        """ZipMap outputs answered from their input tensor: onnxruntime's dicts cost more than the model."""
        self._zipmap_names = frozenset(self._zipmap_sources)
        self._zipmap_positions = [
            (i, self._zipmap_sources[name]) for i, name in enumerate(self._output_names) if name in self._zipmap_sources
        ]
        self._fetch = [
            self._zipmap_sources[name].tensor if name in self._zipmap_sources else name for name in self._output_names
        ]
        self._inputs = description.inputs
        self._fixed_batch = any(spec.shape and spec.shape[0] == 1 for spec in self._inputs)
        self._input_names = [spec.name for spec in self._inputs]
        # (spec, numpy dtype or None for sequence/map inputs, row width when a float [N, k] input)
        self._input_plan: list[tuple[FieldSpec, np.dtype[Any] | None, int | None]] = []
        for spec in self._inputs:
            dtype = None if _non_tensor(spec) else numpy_dtype(spec.data_type)
            width = None
            if dtype is not None and dtype.kind == "f" and spec.shape is not None and len(spec.shape) == 2:
                width = spec.shape[1] if isinstance(spec.shape[1], int) and spec.shape[1] > 0 else None
            self._input_plan.append((spec, dtype, width))
        labels = description.class_labels
        self._class_keys = [str(label) for label in labels] if labels else None
        self._zipmaps = zipmap_outputs = {o.name for o in description.outputs if o.data_type in _ZIPMAP_TYPES}
        # Output name -> its ZipMap keys as strings (filled on first use), None for other outputs.
        self._key_maps: list[tuple[str, dict[Any, str] | None]] = [
            (name, {} if name in zipmap_outputs else None) for name in self._output_names
        ]
        self._classify = self._classification_plan()

    def _tensor(
        self, spec: FieldSpec, values: list[Any], dtype: np.dtype[Any] | None = None, width: int | None = None
    ) -> np.ndarray:
        if dtype is None:
            dtype = numpy_dtype(spec.data_type)
        size = len(values)
        if size >= _FAST_INPUT_ROWS and width is not None and set(map(type, values)) <= {list, tuple}:
            # Every record a flat list of `width` numbers: one C loop over all of them (same values as asarray).
            try:
                if set(map(len, values)) == {width}:
                    return np.fromiter(chain.from_iterable(values), dtype, count=size * width).reshape(size, width)
            except (TypeError, ValueError):
                pass  # nested or non-numeric values: asarray below says what is wrong
        rank = len(spec.shape) if spec.shape is not None else None
        try:  # fast path: every record already has the per-record shape
            array = np.asarray(values, dtype=dtype)
            if rank is None or array.ndim == rank:
                return array
            if array.ndim == rank - 1 and spec.shape and spec.shape[-1] in (1, None):
                return array.reshape(*array.shape, 1)  # scalars for an [N, 1] input
        except (TypeError, ValueError):
            pass
        rows = []
        for i, value in enumerate(values):
            try:
                row = np.asarray(value, dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise _input_error(i, spec, f"not a {spec.data_type} tensor: {exc}") from None
            if rank is not None and row.ndim == rank - 2:
                row = row.reshape(*row.shape, 1)  # a scalar for an [N, 1] input
            rows.append(row)
        for i, row in enumerate(rows):
            if (rank is not None and row.ndim != rank - 1) or row.shape != rows[0].shape:
                raise _input_error(
                    i, spec, f"wrong shape {list(row.shape)}, expected {spec.shape[1:] if spec.shape else '?'}"
                )
        return np.stack(rows)

    def _run(self, records: list[dict[str, Any]]) -> tuple[list[Any], frozenset[str]]:
        """The session's outputs in `_output_names` order, and which of them are ZipMaps already converted."""
        session = self._session
        assert session is not None
        feeds = self._feeds(records)
        try:
            if not self._zipmap_sources:
                return list(session.run(self._output_names, feeds)), frozenset()
            outputs = list(session.run(self._fetch, feeds))
            size = len(records)
            for i, source in self._zipmap_positions:
                column = _zipmap_column(source, outputs[i], size)
                if column is None:  # not the [N, C] floats expected: let onnxruntime zip them
                    return list(self._zipping_session().run(self._output_names, feeds)), frozenset()
                outputs[i] = column
            return outputs, self._zipmap_names
        except (InvalidArgument, ValueError) as exc:
            raise ValidationFailed(
                f"onnxruntime refused the inputs: {exc}", errors=[field_error("inputs", str(exc))]
            ) from None
        except Exception as exc:
            raise ModelServeError(f"onnxruntime failed: {exc}") from None

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Stack the records into one tensor per input, run the session once, normalise each row."""
        if self._session is None:
            raise ModelServeError("The model was unloaded")
        if not records:
            return []
        if self._fixed_batch and len(records) > 1:
            # A graph exported with batch size 1 cannot take a stacked batch: run it record by record.
            return [answer for record in records for answer in self.predict([record])]
        if len(records) < NO_GC_ROWS:  # the common small call skips the context manager's cost
            return self._predict(records)
        with gc_paused_for(len(records)):
            return self._predict(records)

    def _classification_plan(self) -> tuple[list[int], Callable[..., list[dict[str, Any]]]] | None:
        """For a classifier answering label + class probabilities (the usual skl2onnx graph), the tensor column
        of each class key and a compiled builder making every answer in one pass; None for other graphs."""
        roles = self._roles
        if self.description.function_type != "classification" or roles.label is None or not roles.probabilities:
            return None
        if set(self._output_names) != {roles.label, roles.probabilities} or len(self._output_names) != 2:
            return None
        source = self._zipmap_sources.get(roles.probabilities)
        if source is not None:
            keys, columns = source.keys, source.columns
        elif roles.probabilities not in self._zipmaps and self._class_keys:
            keys, columns = self._class_keys, list(range(len(self._class_keys)))
        else:
            return None
        if not keys or len(set(keys)) != len(keys) or len(keys) > 64:
            return None
        # A ZipMap's raw output is its dict (the same object as `probabilities`); a tensor's is its row.
        return columns, _answer_builder(self._output_names, roles.label, keys, raw_row=source is None)

    def _classify_batch(self, records: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """A classifier's batch answered straight from its label and probability tensors (same answers as
        `_answers`, built in one pass without the intermediate ZipMap dicts); None when the outputs differ."""
        assert self._classify is not None and self._roles.label is not None and self._roles.probabilities
        columns, build = self._classify
        feeds = self._feeds(records)
        outputs = dict(zip(self._output_names, self._session_run(self._fetch, feeds), strict=True))
        labels, scores = outputs[self._roles.label], outputs[self._roles.probabilities]
        size = len(records)
        if not (type(labels) is np.ndarray and labels.shape == (size,) and labels.dtype.kind in "biu"):
            return None
        if not (type(scores) is np.ndarray and scores.ndim == 2 and scores.shape[0] == size):
            return None
        if scores.dtype != np.float32 or scores.shape[1] <= max(columns):
            return None
        if self._roles.probabilities not in self._zipmap_sources and scores.shape[1] != len(columns):
            return None  # the raw row would be more than the classes' columns
        by_column = scores.T.tolist()
        return build(labels.tolist(), *(by_column[j] for j in columns))

    def _feeds(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """One tensor per input from the records (sequence/map inputs such as DictVectorizer's go as they are)."""
        try:
            if len(self._input_names) == 1:
                name = self._input_names[0]
                columns = [[r[name] for r in records]]
            else:
                columns = [[r[name] for r in records] for name in self._input_names]
        except KeyError:
            missing = sorted({name for name in self._input_names for r in records if name not in r})
            if not missing:
                raise
            errors = [field_error(f"inputs.{name}", "missing required input") for name in missing]
            raise ValidationFailed(f"Missing input(s): {', '.join(missing)}", errors=errors) from None
        feeds: dict[str, Any] = {}
        for (spec, dtype, width), values in zip(self._input_plan, columns, strict=True):
            feeds[spec.name] = values if dtype is None else self._tensor(spec, values, dtype, width)
        return feeds

    def _predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._classify is not None and len(records) > 1:
            answers = self._classify_batch(records)
            if answers is not None:
                return answers
        outputs, converted = self._run(records)
        results = dict(zip(self._output_names, outputs, strict=True))
        size = len(records)
        if size == 1:
            answer = self._answer_one(results, converted)
            if answer is not None:
                return [answer]
        answers = self._answers(results, size, converted)
        if answers is not None:
            return answers
        return [self._answer({name: _row(value, i, size) for name, value in results.items()}) for i in range(size)]

    def predict_columns(self, inputs: Mapping[str, Sequence[np.ndarray]]) -> dict[str, np.ndarray] | None:
        """Batch scoring without records: each input as its numeric column(s), the answers as flat columns.

        `inputs` maps a model input to one 1-D array (a scalar input, or an `[N, 1]` one) or several (the
        columns of an `[N, k]` tensor such as skl2onnx's `X`), all of one length and without missing values.
        Returns the normalised answers as columns named as batch outputs are: `label` and
        `probability_<class>`, `value`, `cluster`, or `component_<i>`, the same values `predict` gives.
        None when this model or these inputs need the record path (non-numeric or integer-from-float inputs,
        a batch-size-1 graph, outputs not one per row): that path validates and answers record by record.
        """
        if self._session is None:
            raise ModelServeError("The model was unloaded")
        if self._fixed_batch or set(inputs) != set(self._input_names):
            return None
        feeds: dict[str, np.ndarray] = {}
        size: int | None = None
        for spec, dtype, _width in self._input_plan:
            if dtype is None or dtype.kind not in "fiu":
                return None
            tensor = _stack_columns(spec, list(inputs[spec.name]), dtype)
            if tensor is None or (size is not None and tensor.shape[0] != size):
                return None
            size = tensor.shape[0]
            feeds[spec.name] = tensor
        if not size:
            return None
        with gc_paused_for(size):
            outputs = self._session_run(self._fetch, feeds)
        return self._flat_columns(dict(zip(self._output_names, outputs, strict=True)), size)

    def _session_run(self, names: list[str], feeds: dict[str, Any]) -> list[Any]:
        session = self._session
        assert session is not None
        try:
            return list(session.run(names, feeds))
        except (InvalidArgument, ValueError) as exc:
            raise ValidationFailed(
                f"onnxruntime refused the inputs: {exc}", errors=[field_error("inputs", str(exc))]
            ) from None
        except Exception as exc:
            raise ModelServeError(f"onnxruntime failed: {exc}") from None

    def _flat_columns(self, results: dict[str, Any], size: int) -> dict[str, np.ndarray] | None:
        """The normalised answers as columns, from outputs fetched with `_fetch` (ZipMaps as their tensors)."""
        roles, function_type = self._roles, self.description.function_type
        out: dict[str, np.ndarray] = {}
        if function_type in ("classification", "clustering"):
            if roles.label is None or (labels := _per_row(results[roles.label], size)) is None:
                return None
            out["label" if function_type == "classification" else "cluster"] = labels
            if function_type == "classification":
                probabilities = self._probability_columns(results, size)
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

    def _probability_columns(self, results: dict[str, Any], size: int) -> dict[str, np.ndarray] | None:
        name = self._roles.probabilities
        if name is None:
            return None  # the record path decides what an answer without probabilities flattens to
        value = results[name]
        if not (isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[0] == size):
            return None
        if value.dtype.kind != "f":
            return None
        source = self._zipmap_sources.get(name)
        if source is not None:
            if value.shape[1] != len(source.keys):
                return None
            index = dict(source.pairs)  # class key -> tensor column
            keys = source.keys
        else:
            keys = self._class_keys or [str(i) for i in range(value.shape[1])]
            index = {key: i for i, key in enumerate(keys[: value.shape[1]])}
        classes = self.description.class_labels or keys
        columns: dict[str, np.ndarray] = {}
        for cls in classes:
            j = index.get(str(cls))
            if j is None:
                return None
            columns[f"probability_{cls}"] = value[:, j].astype(np.float64)
        return columns

    def _answer_one(self, results: dict[str, Any], converted: frozenset[str]) -> dict[str, Any] | None:
        """One record's answer for the usual graphs (numeric tensors, ZipMap), with as few calls as possible.

        The same answer as `_answers` gives; None for anything else (it then answers).
        """
        raw: dict[str, Any] = {}
        for name, keys in self._key_maps:
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
        roles, function_type = self._roles, self.description.function_type
        if function_type == "classification" and roles.label is not None:
            label = raw[roles.label]
            if type(label) is list:
                return None
            if roles.probabilities is None:
                return {"label": label, "probabilities": {}, "raw": raw}
            if roles.probabilities in self._zipmaps:
                return {"label": label, "probabilities": raw[roles.probabilities], "raw": raw}
            return None
        if function_type == "regression" and roles.value is not None:
            value = raw[roles.value]
            if type(value) is list and len(value) == 1:
                value = value[0]
            if type(value) is float:
                return {"value": value, "raw": raw}
        return None

    def _answers(self, results: dict[str, Any], size: int, converted: frozenset[str]) -> list[dict[str, Any]] | None:
        """The batch's answers built column by column (one `tolist()` per output, no per-row numpy).

        Same answers as `_answer` row by row; `raw` and the normalised fields share objects where their
        values are equal (a ZipMap dict is both `raw[...]` and `probabilities`). None for outputs this
        path does not handle (constant outputs, unusual shapes): the caller answers row by row.
        """
        columns: dict[str, list[Any]] = {}
        for name, keys in self._key_maps:
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
                _fill(raws, name, column)
        roles, function_type = self._roles, self.description.function_type
        if function_type == "classification":
            assert roles.label is not None
            labels = self._labels(results[roles.label], columns[roles.label])
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
            clusters = self._labels(results[roles.label], columns[roles.label])
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

    @staticmethod
    def _labels(value: Any, column: list[Any]) -> list[Any]:
        """`_scalar` of each row: a 1-D numeric tensor's values as they are, else single-item lists unwrapped."""
        if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "biuf":
            return column
        return [_unwrap(v) for v in column]

    def _probability_column(
        self, results: dict[str, Any], columns: dict[str, list[Any]], size: int
    ) -> list[dict[str, float]] | None:
        """`_probabilities` of each row, sharing the raw ZipMap dicts; None when only the row path knows."""
        name = self._roles.probabilities
        if name is None:
            return [{} for _ in range(size)]
        value, column = results[name], columns[name]
        if type(value) is list:
            if name in self._zipmaps:
                return column  # ZipMap: {str(class): float} already, the same object as in raw
            return None
        if not (type(value) is np.ndarray and value.ndim == 2 and value.dtype.kind == "f"):
            return None
        keys = self._class_keys or [str(i) for i in range(value.shape[1])]
        if value.shape[1] == 0 or not keys:
            return [{} for _ in range(size)]
        probabilities: list[dict[str, float]] = [{} for _ in range(size)]
        for key, scores in zip(keys, value.T.tolist(), strict=False):
            _fill(probabilities, key, scores)
        return probabilities

    def _answer(self, row: dict[str, Any]) -> dict[str, Any]:
        raw = {name: _jsonable(value) for name, value in row.items()}
        roles, function_type = self._roles, self.description.function_type
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
        name = self._roles.probabilities
        if name is None:
            return {}
        value = row[name]
        if isinstance(value, dict):  # ZipMap
            return {str(k): float(v) for k, v in value.items()}
        scores = np.asarray(value, dtype=np.float64).ravel()
        labels = self.description.class_labels or list(range(len(scores)))
        return {str(label): float(p) for label, p in zip(labels, scores, strict=False)}

    def _zipping_session(self) -> ort.InferenceSession:
        if self._full_session_factory is None:
            assert self._session is not None
            return self._session
        if self._full_session is None:
            self._full_session = self._full_session_factory()
        return self._full_session

    def unload(self) -> None:
        """Drop the sessions (onnxruntime frees each with its last reference)."""
        self._session = None
        self._full_session = None


@dataclass(frozen=True)
class _ZipMapSource:
    """A ZipMap graph output rebuilt from the float tensor it zips (that tensor exposed as an extra output).

    onnxruntime builds the ZipMap's dicts with its keys in sorted order (a `std::map`), one float per class;
    `keys` are those keys as strings in that order and `columns` the tensor column of each.
    """

    tensor: str
    keys: list[str]
    columns: list[int]
    pairs: tuple[tuple[str, int], ...]
    """(key, column) in key order."""


def _zipmap_sources(model: onnx.ModelProto) -> dict[str, _ZipMapSource]:
    """Graph outputs made by a ZipMap of a computed float tensor, by output name (unique class labels only)."""
    outputs = {o.name for o in model.graph.output}
    graph_inputs = {i.name for i in model.graph.input}
    found: dict[str, _ZipMapSource] = {}
    for node in model.graph.node:
        if node.op_type != "ZipMap" or node.domain != "ai.onnx.ml" or len(node.input) != 1 or len(node.output) != 1:
            continue
        if node.output[0] not in outputs or node.input[0] in outputs or node.input[0] in graph_inputs:
            continue
        attributes = {a.name: a for a in node.attribute}
        labels: list[Any]
        if "classlabels_int64s" in attributes and attributes["classlabels_int64s"].ints:
            labels = [int(v) for v in attributes["classlabels_int64s"].ints]
            order = sorted(range(len(labels)), key=lambda j: labels[j])
        elif "classlabels_strings" in attributes and attributes["classlabels_strings"].strings:
            labels = [v.decode("utf-8") for v in attributes["classlabels_strings"].strings]
            order = sorted(range(len(labels)), key=lambda j: labels[j].encode("utf-8"))
        else:
            continue
        if len(set(labels)) != len(labels):
            continue
        keys = [str(labels[j]) for j in order]
        found[node.output[0]] = _ZipMapSource(node.input[0], keys, order, tuple(zip(keys, order, strict=True)))
    return found


def _without_zipmaps(model: onnx.ModelProto, zipmaps: dict[str, _ZipMapSource]) -> bytes:
    """The model, serialised, with each ZipMap's float tensor as a graph output in place of its maps.

    onnxruntime runs every node of the graph whatever is fetched, and its ZipMap builds one map per row: for
    10,000 rows that cost as much as the rest of a random forest, for a logistic regression four times more.
    The answers are built from the tensor anyway. A ZipMap whose maps feed another node is kept.
    """
    consumed = {name for node in model.graph.node for name in node.input}
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    graph = pruned.graph
    drop = {name for name in zipmaps if name not in consumed}
    kept_nodes = [n for n in graph.node if not (n.op_type == "ZipMap" and n.output and n.output[0] in drop)]
    kept_outputs = [o for o in graph.output if o.name not in drop]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.output[:]
    graph.output.extend(kept_outputs)
    for source in zipmaps.values():
        graph.output.append(helper.make_tensor_value_info(source.tensor, TensorProto.FLOAT, None))
    return pruned.SerializeToString()  # type: ignore[no-any-return]


def _zipmap_column(source: _ZipMapSource, tensor: Any, size: int) -> list[dict[str, float]] | None:
    """What onnxruntime's ZipMap would give for `tensor`, keys already strings; None when it is not [size, C]."""
    if (
        type(tensor) is not np.ndarray
        or tensor.ndim != 2
        or tensor.shape != (size, len(source.keys))
        or tensor.dtype != np.float32
    ):
        return None
    if size == 1:
        row = tensor[0].tolist()
        return [{key: row[j] for key, j in source.pairs}]
    columns = tensor.T.tolist()
    maps: list[dict[str, float]] = [{} for _ in range(size)]
    for key, j in source.pairs:
        _fill(maps, key, columns[j])
    return maps


def _stack_columns(spec: FieldSpec, columns: list[np.ndarray], dtype: np.dtype[Any]) -> np.ndarray | None:
    """The input tensor from its column(s), or None when they do not fit its declared shape and type."""
    if not columns or any(c.ndim != 1 or c.dtype.kind not in "biuf" for c in columns):
        return None
    if dtype.kind in "iu" and any(c.dtype.kind == "f" for c in columns):
        return None  # floats into an integer input: the record path says which values do not fit
    size = columns[0].shape[0]
    if any(c.shape[0] != size for c in columns):
        return None
    shape = spec.shape
    rank = len(shape) if shape is not None else 2
    if rank == 1 and len(columns) == 1:
        return columns[0].astype(dtype, copy=False)
    if rank != 2:
        return None
    width = shape[1] if shape is not None else None
    if isinstance(width, int) and width > 0 and width != len(columns):
        return None
    tensor = np.empty((size, len(columns)), dtype=dtype)
    for j, column in enumerate(columns):
        tensor[:, j] = column
    return tensor


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


def _answer_builder(
    output_names: list[str], label: str, keys: list[str], *, raw_row: bool
) -> Callable[..., list[dict[str, Any]]]:
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


def _non_tensor(spec: FieldSpec) -> bool:
    return spec.data_type.startswith(("seq(", "map("))


def _input_error(i: int, spec: FieldSpec, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"Invalid input {spec.name!r} in record {i}", errors=[field_error(f"inputs[{i}].{spec.name}", message)]
    )


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


def _row(value: Any, i: int, size: int) -> Any:
    # Batch outputs hold one entry per record; anything else (a constant output) is shared by all rows.
    if isinstance(value, list) and len(value) == size:
        return value[i]
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == size:
        return value[i]
    return value


def load_onnx(
    path: Path,
    *,
    function_type: FunctionType | None = None,
    settings: Settings | None = None,
    engine: str | None = None,
) -> OnnxRuntime:
    """Load an ONNX file (external data refused). Raises `InvalidModel` or `ValidationFailed`."""
    if engine not in _ENGINE_CHOICES:
        raise ValidationFailed(
            "engine applies to PMML models only",
            errors=[
                field_error("engine", "ONNX models are served by onnxruntime", expected="onnxruntime", received=engine)
            ],
        )
    settings = settings or Settings()
    data = path.read_bytes()
    model = parse_onnx(data)  # bytes, so no external data is ever read
    refuse_external_data(model)
    roles = output_roles(model)
    algorithm, inferred = algorithm_and_function(model, roles)
    resolved = resolve_function_type(inferred, function_type, roles)
    try:
        zipmaps = _zipmap_sources(model)
        session = None
        if zipmaps:
            try:
                pruned = _without_zipmaps(model, zipmaps)
                session = ort.InferenceSession(
                    pruned, sess_options=session_options(settings), providers=providers(settings)
                )
            except Exception:  # an unusual graph the pruning does not suit: serve it as it is, ZipMaps included
                logger.debug("ONNX %s: the graph without its ZipMaps does not load; serving it whole", path.name)
                zipmaps = {}
        if session is None:
            session = ort.InferenceSession(data, sess_options=session_options(settings), providers=providers(settings))
    except Exception as exc:  # onnxruntime raises Fail/InvalidGraph/NotImplemented… for bad graphs
        raise InvalidModel(f"onnxruntime cannot load the model: {exc}") from None

    def full_session() -> ort.InferenceSession:
        # From the file again rather than keeping its bytes in memory for a path that is rarely taken.
        try:
            original = path.read_bytes()
            return ort.InferenceSession(original, sess_options=session_options(settings), providers=providers(settings))
        except Exception as exc:
            raise ModelServeError(f"onnxruntime cannot load the model's original graph: {exc}") from None

    description = ModelDescription(
        format="onnx",
        engine=EngineInfo(name="onnx", version=ort.__version__, implementation="onnxruntime"),
        algorithm=algorithm,
        function_type=resolved,
        inputs=inputs_of(model),
        outputs=outputs_of(model),
        class_labels=class_labels(model) if resolved == "classification" else None,
    )
    logger.debug("loaded ONNX %s: %s/%s on %s", path.name, algorithm, resolved, session.get_providers())
    return OnnxRuntime(description, session, roles, zipmaps, full_session if zipmaps else None)
