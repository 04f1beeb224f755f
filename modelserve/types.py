"""Typed results: the platform's response bodies as pydantic models.

Each model names the fields a user reads; unknown fields are kept (`extra="allow"`) so a newer server never
breaks an older client. `tests/client/test_client_e2e.py` checks every declared field against the server's
OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Page(_Body, Generic[T]):
    """One page of a list: every list endpoint answers `{items, total, limit, offset}`."""

    items: list[T]
    total: int
    limit: int
    offset: int


class FieldSpec(_Body):
    name: str
    data_type: str | None = None
    shape: list[Any] | None = None


class ModelVersion(_Body):
    """One uploaded version: what it is and what it expects."""

    model: str
    version: int
    format: str
    engine: dict[str, Any]
    algorithm: str
    function_type: str
    inputs: list[FieldSpec]
    outputs: list[FieldSpec]
    targets: list[FieldSpec] = []
    class_labels: list[Any] | None = None
    sha256: str
    size_bytes: int
    description: str = ""
    aliases: list[str] = []
    created_at: datetime


class ModelSummary(_Body):
    name: str
    description: str = ""
    latest_version: int | None = None
    function_type: str | None = None
    format: str | None = None
    algorithm: str | None = None
    created_at: datetime
    updated_at: datetime


class ModelDetail(ModelSummary):
    versions: list[int] = []
    aliases: dict[str, int] = {}
    latest: ModelVersion | None = None


class Alias(_Body):
    model: str
    alias: str
    version: int


class Replica(_Body):
    id: str
    status: str


class Service(_Body):
    name: str
    model: str
    version: int | None = None
    alias: str | None = None
    status: str
    reason: str | None = None
    replicas: int
    ready_replicas: int
    rest_url: str
    v2_url: str
    created_at: datetime
    updated_at: datetime
    replica_list: list[Replica] = []


class Predictions(_Body):
    """A predict or test answer: one normalised prediction per input record."""

    predictions: list[dict[str, Any]]

    def rows(self) -> list[dict[str, Any]]:
        """Flat rows: `label`/`value`/`cluster` as they are, each `probabilities` entry as `probability(<class>)`
        (and `distances` as `distance(<cluster>)`); `raw` (the engine's own outputs) is left out."""
        rows = []
        for prediction in self.predictions:
            row: dict[str, Any] = {}
            for key, value in prediction.items():
                if key == "raw":
                    continue
                if isinstance(value, dict):
                    singular = key[:-3] + "y" if key.endswith("ies") else key.removesuffix("s")
                    row.update({f"{singular}({k})": v for k, v in value.items()})
                else:
                    row[key] = value
            rows.append(row)
        return rows

    def to_pandas(self) -> Any:
        """The predictions as a pandas DataFrame (`rows()`), one row per input record, in order."""
        import pandas as pd

        return pd.DataFrame(self.rows())


class AsyncJob(_Body):
    """An async (queued) prediction: `status` queued → running → succeeded | failed | cancelled."""

    id: str
    status: str
    url: str | None = None
    service: str | None = None
    predictions: list[dict[str, Any]] | None = None
    error: Any = None

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class Column(_Body):
    name: str
    type: str


class Dataset(_Body):
    name: str
    status: str | None = None
    format: str | None = None
    rows: int | None = None
    columns: list[Column] | None = None
    size_bytes: int | None = None
    created_at: datetime | None = None


class DatasetDetail(Dataset):
    preview: list[dict[str, Any]] | None = None


class Run(_Body):
    """One run of a batch job; `number` is its id within the job."""

    number: int
    job: str
    status: str
    rows_done: int = 0
    rows_total: int | None = None
    progress: float | None = None
    log_tail: list[str] = []
    result_dataset: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "stopped")


class BatchJob(_Body):
    name: str
    kind: str
    dispatch: str
    params: dict[str, Any]
    next_run_at: datetime | None = None
    last_run: Run | None = None


class ApiKey(_Body):
    id: str
    name: str
    scopes: list[str]
    services: list[str] | None = None
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    key: str
    """The secret: shown once."""
