"""ONNX runtime: onnxruntime sessions, one `session.run` per batch, answers normalised by function type.

The parts live beside it: `onnx_schema` (what a graph is), `onnx_graph` (ZipMap pruning), `onnx_inputs`
(feeds), `onnx_answers` / `onnx_columns` (the answer paths), `onnx_limits` (size limits of a graph).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from inference.runtimes.base import NO_GC_ROWS, EngineInfo, FunctionType, ModelDescription, gc_paused_for
from inference.runtimes.onnx_answers import Answers, whole_answer
from inference.runtimes.onnx_columns import flat_columns
from inference.runtimes.onnx_graph import ZipMapSource, without_zipmaps, zipmap_column, zipmap_sources
from inference.runtimes.onnx_inputs import InputPlan
from inference.runtimes.onnx_inputs import numpy_dtype as numpy_dtype
from inference.runtimes.onnx_limits import check_output_bytes, refuse_huge_tensors
from inference.runtimes.onnx_schema import (
    OutputRoles,
    algorithm_and_function,
    class_labels,
    has_batch_axis,
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


class OnnxRuntime:
    """A loaded ONNX model on an onnxruntime `InferenceSession`."""

    def __init__(
        self,
        description: ModelDescription,
        session: ort.InferenceSession,
        roles: OutputRoles,
        zipmaps: dict[str, ZipMapSource] | None = None,
        full_session: Callable[[], ort.InferenceSession] | None = None,
        max_output_bytes: int = 0,
    ) -> None:
        self.description = description
        self._session: ort.InferenceSession | None = session
        # `session` may lack the ZipMap nodes (answered from their tensors here): the original graph, built on
        # first need, for the rare tensor that is not the [N, C] floats expected.
        self._full_session_factory = full_session
        self._full_session: ort.InferenceSession | None = None
        self._max_output_bytes = max_output_bytes
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
        self._inputs = InputPlan(description.inputs)
        self._answers = Answers(description, roles, self._output_names, self._zipmap_sources)

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Stack the records into one tensor per input, run the session once, normalise each row.

        A graph without a batch axis runs once per record, each record holding whole tensors.
        """
        if self._session is None:
            raise ModelServeError("The model was unloaded")
        if not records:
            return []
        if not self.description.batched:
            return [self._predict_whole(record, i) for i, record in enumerate(records)]
        if len(records) < NO_GC_ROWS:  # the common small call skips the context manager's cost
            return self._predict(records)
        with gc_paused_for(len(records)):
            return self._predict(records)

    def _predict_whole(self, record: dict[str, Any], index: int) -> dict[str, Any]:
        feeds = self._inputs.whole_feeds(record, index)
        if not self._zipmap_sources:
            return whole_answer(self._output_names, self._session_run(self._output_names, feeds))
        return whole_answer(self._output_names, self._session_run(self._output_names, feeds, self._zipping_session()))

    def _predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        size = len(records)
        if self._answers.classify_plan is not None and size > 1:
            outputs = self._session_run(self._fetch, self._inputs.feeds(records))
            answers = self._answers.classify(dict(zip(self._output_names, outputs, strict=True)), size)
            if answers is not None:
                return answers
        outputs, converted = self._run(records)
        return self._answers.predictions(dict(zip(self._output_names, outputs, strict=True)), size, converted)

    def _run(self, records: list[dict[str, Any]]) -> tuple[list[Any], frozenset[str]]:
        """The session's outputs in `_output_names` order, and which of them are ZipMaps already converted."""
        feeds = self._inputs.feeds(records)
        if not self._zipmap_sources:
            return self._session_run(self._output_names, feeds), frozenset()
        outputs = self._session_run(self._fetch, feeds)
        size = len(records)
        for i, source in self._zipmap_positions:
            column = zipmap_column(source, outputs[i], size)
            if column is None:  # not the [N, C] floats expected: let onnxruntime zip them
                return self._session_run(self._output_names, feeds, self._zipping_session()), frozenset()
            outputs[i] = column
        return outputs, self._zipmap_names

    def predict_columns(self, inputs: Mapping[str, Sequence[np.ndarray]]) -> dict[str, np.ndarray] | None:
        """Batch scoring without records: each input as its numeric column(s), the answers as flat columns.

        `inputs` maps a model input to one 1-D array (a scalar input, or an `[N, 1]` one) or several (the
        columns of an `[N, k]` tensor such as skl2onnx's `X`), all of one length and without missing values.
        Returns the normalised answers as columns named as batch outputs are: `label` and
        `probability_<class>`, `value`, `cluster`, or `component_<i>`, the same values `predict` gives.
        None when this model or these inputs need the record path (non-numeric or integer-from-float inputs,
        a graph without a batch axis, outputs not one per row): that path validates and answers record by record.
        """
        if self._session is None:
            raise ModelServeError("The model was unloaded")
        if not self.description.batched:
            return None
        fed = self._inputs.column_feeds({name: list(arrays) for name, arrays in inputs.items()})
        if fed is None:
            return None
        feeds, size = fed
        with gc_paused_for(size):
            outputs = self._session_run(self._fetch, feeds)
        return flat_columns(self._answers, dict(zip(self._output_names, outputs, strict=True)), size)

    def _session_run(
        self, names: list[str], feeds: dict[str, Any], session: ort.InferenceSession | None = None
    ) -> list[Any]:
        session = session or self._session
        assert session is not None
        try:
            outputs = list(session.run(names, feeds))
        except (InvalidArgument, ValueError) as exc:
            raise ValidationFailed(
                f"onnxruntime refused the inputs: {exc}", errors=[field_error("inputs", str(exc))]
            ) from None
        except Exception as exc:
            raise ModelServeError(f"onnxruntime failed: {exc}") from None
        check_output_bytes(names, outputs, self._max_output_bytes)
        return outputs

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
    refuse_huge_tensors(model, settings.onnx_max_tensor_bytes)
    roles = output_roles(model)
    algorithm, inferred = algorithm_and_function(model, roles)
    resolved = resolve_function_type(inferred, function_type, roles)
    try:
        zipmaps = zipmap_sources(model)
        session = None
        if zipmaps:
            try:
                pruned = without_zipmaps(model, zipmaps)
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
        batched=has_batch_axis(model),
    )
    logger.debug("loaded ONNX %s: %s/%s on %s", path.name, algorithm, resolved, session.get_providers())
    return OnnxRuntime(
        description, session, roles, zipmaps, full_session if zipmaps else None, settings.onnx_max_output_bytes
    )
