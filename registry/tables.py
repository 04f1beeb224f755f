"""SQLModel tables of the registry (the families `XBase`/`XCreate`/`X(table=True)`/`XPublic` live beside each)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator
from sqlalchemy import JSON, BigInteger, Column, DateTime, ForeignKey, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from shared.auth import Scope


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    # SQLite keeps no zone: every stored time is UTC, so say so in responses.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


def _ts(nullable: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(DateTime(timezone=True), nullable=nullable)


class ApiKeyBase(SQLModel):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(default_factory=lambda: ["predict"], sa_column=Column(JSON, nullable=False))
    services: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    """Limit a `predict` key to these services (all when null)."""


class ApiKeyCreate(ApiKeyBase):
    pass


class ApiKey(ApiKeyBase, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)
    key_hash: str = Field(max_length=64, unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    bootstrap: bool = False
    """The admin key from MODELSERVE_ADMIN_KEY or generated at first start."""


class ApiKeyPublic(ApiKeyBase):
    id: str
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None
    bootstrap: bool


class ApiKeyCreated(ApiKeyPublic):
    key: str
    """The secret, shown this once only."""


class RegisteredModel(SQLModel, table=True):
    """A model name; its files are its versions."""

    __tablename__ = "models"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class ModelVersion(SQLModel, table=True):
    """One immutable uploaded file of a model and what the runtime learnt from it."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(sa_column=Column(ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True))
    version: int
    sha256: str = Field(max_length=64, index=True)
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    format: str = Field(max_length=16)
    filename: str | None = Field(default=None, max_length=255)
    algorithm: str = Field(max_length=64)
    function_type: str = Field(max_length=32)
    engine: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    signature: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    """inputs, outputs, targets and class_labels as the runtime described them."""
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class ModelAlias(SQLModel, table=True):
    """A movable name (e.g. `production`) for one version of a model."""

    __tablename__ = "model_aliases"

    model_id: int = Field(sa_column=Column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True))
    alias: str = Field(sa_column=Column(String(64), primary_key=True))
    version_id: int = Field(sa_column=Column(ForeignKey("model_versions.id", ondelete="CASCADE"), nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Service(SQLModel, table=True):
    """Desired state of a deployed service; a deployment backend makes it real."""

    __tablename__ = "services"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True, index=True)
    model_id: int = Field(sa_column=Column(ForeignKey("models.id", ondelete="RESTRICT"), nullable=False, index=True))
    version_id: int | None = Field(
        default=None, sa_column=Column(ForeignKey("model_versions.id", ondelete="RESTRICT"), nullable=True)
    )
    """The pinned version; null when the service follows `alias`."""
    alias: str | None = Field(default=None, max_length=64)
    replicas: int = 1
    cpu_reserve: float | None = None
    memory_reserve: int | None = None
    """MiB."""
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    paused: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


DatasetFormat = Literal["csv", "jsonl", "parquet"]
DatasetSource = Literal["local", "remote", "job"]
DatasetStatus = Literal["ready", "fetching", "failed"]


class DatasetColumn(SQLModel):
    """One column of a dataset: its name and its Arrow type name (`int64`, `double`, `string`, `bool`, …)."""

    name: str
    type: str


class Dataset(SQLModel, table=True):
    """A tabular file (CSV, JSON lines or Parquet) in the dataset store, with what inspecting it found."""

    __tablename__ = "datasets"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    format: str | None = Field(default=None, max_length=16)
    """Null until a remote file has arrived."""
    sha256: str | None = Field(default=None, max_length=64, index=True)
    size_bytes: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    rows: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    columns: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    preview: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    """The first rows, JSON-safe, kept so describing a dataset never reopens its file."""
    source: str = Field(max_length=16)
    source_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    status: str = Field(default="ready", max_length=16)
    status_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class DatasetPublic(SQLModel):
    """A dataset as the list shows it."""

    name: str
    description: str
    format: DatasetFormat | None
    size_bytes: int | None
    rows: int | None
    columns: list[DatasetColumn]
    sha256: str | None
    source: DatasetSource
    source_url: str | None
    status: DatasetStatus
    status_reason: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class DatasetDetail(DatasetPublic):
    """A dataset with its first rows."""

    preview: list[dict[str, Any]]
