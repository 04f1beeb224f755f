"""Public response and request bodies of the registry's model API."""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from inference.runtimes.base import EngineInfo, FieldSpec
from registry.tables import UtcDatetime

T = TypeVar("T")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
RESERVED_ALIASES = {"latest"}


def valid_name(name: str) -> bool:
    # No '/', no '..', no control characters: names end up in URLs, never in paths.
    return bool(_NAME.match(name)) and ".." not in name


def valid_alias(alias: str) -> bool:
    return bool(_ALIAS.match(alias)) and alias not in RESERVED_ALIASES


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class ModelVersionPublic(BaseModel):
    """One version of a model: the file's identity and what it expects and returns."""

    model: str
    version: int
    format: str
    engine: EngineInfo
    algorithm: str
    function_type: str
    inputs: list[FieldSpec]
    outputs: list[FieldSpec]
    targets: list[FieldSpec]
    class_labels: list[Any] | None = None
    batched: bool = True
    """Records are rows along a leading batch axis (coalescing allowed); False for an ONNX graph served with
    whole tensors as it declares them (see `ModelDescription.batched`)."""
    sha256: str
    size_bytes: int
    filename: str | None = None
    description: str
    aliases: list[str]
    created_at: UtcDatetime


class ModelSummary(BaseModel):
    name: str
    description: str
    latest_version: int | None
    function_type: str | None
    format: str | None
    engine: EngineInfo | None
    algorithm: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ModelDetail(ModelSummary):
    versions: list[int]
    aliases: dict[str, int]
    latest: ModelVersionPublic | None


class ModelPatch(BaseModel):
    description: str = Field(max_length=10_000)


class AliasTarget(BaseModel):
    version: int = Field(ge=1)


class AliasPublic(BaseModel):
    model: str
    alias: str
    version: int
