"""Model runtimes: detect a file's format from its content and load it with that format's runtime.

A new format is one module with a loader (see `base.RuntimeLoader`) and one entry in `LOADERS`.
"""

from __future__ import annotations

from pathlib import Path

from inference.runtimes.base import (
    EngineInfo,
    FieldSpec,
    FunctionType,
    ModelDescription,
    ModelFormat,
    Runtime,
    RuntimeLoader,
)
from inference.runtimes.xml_limits import check_xml_limits
from shared.errors import InvalidModel
from shared.settings import Settings

__all__ = [
    "LOADERS",
    "EngineInfo",
    "FieldSpec",
    "FunctionType",
    "ModelDescription",
    "ModelFormat",
    "Runtime",
    "detect_format",
    "load_runtime",
]

_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _load_pmml(path: Path, **kwargs: object) -> Runtime:
    # Imported on use: the PMML side pulls in JPype, the ONNX side onnxruntime; a process needs one or both.
    from inference.runtimes.pmml import load_pmml

    return load_pmml(path, **kwargs)  # type: ignore[arg-type]


def _load_onnx(path: Path, **kwargs: object) -> Runtime:
    from inference.runtimes.onnx import load_onnx

    return load_onnx(path, **kwargs)  # type: ignore[arg-type]


LOADERS: dict[ModelFormat, RuntimeLoader] = {"pmml": _load_pmml, "onnx": _load_onnx}  # type: ignore[dict-item]
"""Format -> loader."""


def _looks_like_xml(head: bytes) -> bool:
    for bom in _BOMS:
        if head.startswith(bom):
            return True
    return head.lstrip().startswith(b"<")


def detect_format(path: Path) -> ModelFormat:
    """The model format of a file, sniffed from its content (never its name). Raises `InvalidModel`."""
    data = path.read_bytes()
    if not data.strip():
        raise InvalidModel("Empty file")
    if _looks_like_xml(data[:1024]):
        from inference.runtimes.pmml_schema import xml_root_name

        root = xml_root_name(data)  # refuses a DOCTYPE before anything else reads the file
        if root != "PMML":
            raise InvalidModel(f"XML root is <{root}>, expected <PMML>")
        return "pmml"
    from inference.runtimes.onnx_schema import parse_onnx

    try:
        parse_onnx(data)
    except InvalidModel as exc:
        if data[:1] == b"\x08":  # field 1 (ir_version) opens every ONNX file: a damaged one, say so
            raise
        raise InvalidModel(
            f"Unrecognised model format: neither PMML (XML) nor ONNX (protobuf) ({exc.detail})"
        ) from None
    return "onnx"


def load_runtime(
    path: Path,
    settings: Settings,
    *,
    function_type: FunctionType | None = None,
    engine: str | None = None,
) -> Runtime:
    """Detect the format of `path` and load it.

    `function_type` is the uploader's override (422 naming `function_type` when the file contradicts it);
    `engine` forces a PMML engine (`jpmml`/`pypmml`), else `settings.pmml_engine` decides.
    Raises `InvalidModel` (422) for a file no engine can load, `PayloadTooLarge` (413) for XML past the
    depth or element limits.
    """
    model_format = detect_format(path)
    if model_format == "pmml":  # bounded before an engine builds the whole document in memory
        check_xml_limits(path, max_depth=settings.pmml_max_xml_depth, max_elements=settings.pmml_max_xml_elements)
    return LOADERS[model_format](path, function_type=function_type, settings=settings, engine=engine)
