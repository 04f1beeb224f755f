"""The runtime contract: one `Runtime` per model format (load, describe, predict on a batch, unload)."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import numpy as np

    from shared.settings import Settings

FunctionType = Literal[
    "classification",
    "regression",
    "clustering",
    "dimensionality_reduction",
    "association_rules",
    "sequences",
    "time_series",
    "mixed",
    "anomaly_detection",
    "other",
]
"""The four tabular kinds first; the rest are served with their outputs under `raw`."""

ModelFormat = Literal["pmml", "onnx"]


class FieldSpec(BaseModel):
    """One input, output or target of a model."""

    name: str
    data_type: str
    """PMML data type (double, integer, string, boolean…) or ONNX element type (float, int64, string…)."""
    op_type: Literal["continuous", "categorical", "ordinal"] | None = None
    values: list[Any] | None = None
    """Allowed values of a categorical/ordinal field, or the class labels of a classification target."""
    intervals: list[dict[str, Any]] | None = None
    """Allowed numeric ranges: `{"closure": "closedClosed", "left": 0, "right": 10}`."""
    shape: list[int | str | None] | None = None
    """Tensor shape for ONNX (`None`/str for dynamic dimensions)."""
    invalid_value_treatment: str | None = None
    """PMML `invalidValueTreatment` of a mining field (returnInvalid, asIs, asMissing)."""
    missing_values: list[Any] | None = None
    """PMML values that stand for a missing value (`<Value property="missing">`), e.g. "NA"."""
    required: bool = True
    multi_valued: bool = Field(default=False, exclude_if=lambda value: not value)
    """A PMML field that takes a list of values per record (the items of an `AssociationModel` transaction)."""


class EngineInfo(BaseModel):
    name: Literal["pmml", "onnx"]
    version: str
    """Version of the library that evaluates the model."""
    implementation: str | None = None
    """Which library serves it: `onnxruntime`, `jpmml-evaluator` or `pypmml`."""
    cross_check: dict[str, Any] | None = Field(default=None, exclude_if=lambda value: value is None)
    """PMML loaded by both engines: how their answers compared at upload (`agree`, `records`, `differences`).

    Left out of the description when there is none (ONNX, an engine forced by settings)."""


class ModelDescription(BaseModel):
    """What the runtime learnt from a model file; stored by the registry with each version."""

    format: ModelFormat
    engine: EngineInfo
    algorithm: str
    function_type: FunctionType
    inputs: list[FieldSpec]
    outputs: list[FieldSpec] = Field(default_factory=list)
    targets: list[FieldSpec] = Field(default_factory=list)
    class_labels: list[Any] | None = None
    batched: bool = True
    """Records are rows along a leading dynamic dimension shared by every input and output, so a batch of
    records is one engine call and concurrent requests may be coalesced (every PMML model; ONNX graphs that
    declare such an axis). False: the graph declares no batch axis; each record holds whole tensors of the
    declared shapes, runs alone, and its outputs come back exactly as onnxruntime gives them."""


@runtime_checkable
class Runtime(Protocol):
    """A loaded model, ready to predict."""

    description: ModelDescription

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Predict a batch of already-validated records in one engine call.

        Each answer is normalised by function type: classification `label` + `probabilities`
        {class: p}; regression `value`; clustering `cluster` (+ `distances`/`affinities`);
        dimensionality reduction `components` [...]; always the engine's outputs under `raw`.
        """
        ...

    def predict_columns(self, inputs: Mapping[str, Sequence[np.ndarray]]) -> dict[str, np.ndarray] | None:
        """Batch scoring without records: each input as its numeric column(s), the answers as flat columns.

        `inputs` maps a model input to one 1-D array per column (several for an `[N, k]` tensor), all of one
        length and without missing values. Returns the normalised answers as columns named as batch outputs
        are (`label`, `probability_<class>`, `value`, `cluster`, `component_<i>`), the same values `predict`
        gives; or None when this runtime or these inputs take the record path, which the caller then follows
        (validate, `predict`). A runtime without a columnar path returns None for every input.
        """
        ...

    def unload(self) -> None:
        """Free the engine's resources."""
        ...


class RuntimeLoader(Protocol):
    """A format's entry point: `load(path, ...)` returns a ready `Runtime` or raises `InvalidModel`."""

    def __call__(
        self,
        path: Path,
        *,
        function_type: FunctionType | None = None,
        settings: Settings | None = None,
        engine: str | None = None,
    ) -> Runtime: ...


NO_GC_ROWS = 256
"""From this many records, a batch is run and answered with the cyclic GC paused: its thousands of dicts
would trigger collections that traverse the half-built batch again and again (runtimes make no cycles)."""


@contextmanager
def gc_paused_for(rows: int) -> Iterator[None]:
    """Pause the cyclic garbage collector around a batch of at least `NO_GC_ROWS` records."""
    if rows < NO_GC_ROWS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
