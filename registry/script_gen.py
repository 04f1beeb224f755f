"""`POST /api/v1/batch-jobs/generate-script`: a runnable Python script that scores a dataset through a service.

The script is what the console's "generate script" shows: self-contained (the standard library and `httpx`;
`pyarrow` only for a Parquet input), it talks to the public REST API like any client and reads its API key from
the environment, so the code can be stored, shared or run as a `script` batch job without holding a secret.

The script is `registry/script_template.py`, a real (linted, tested) module. Generating it replaces the module's
docstring and its constant assignments (`BASE_URL`, `SERVICE`, `MAPPING`...) with new ones whose values are
Python literals built by `repr` (comments are escaped to one line), never by pasting text into code, and the
result is parsed again to check that every value went in as the literal it should be: whatever a user names a
dataset, a service or a URL, it stays data.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from registry import script_template
from registry.catalog import check_name
from registry.datasets_api import DatasetsDep
from registry.script_template import auto_mapping
from registry.services_api import ManagerDep
from registry.tables import RegisteredModel
from shared.errors import ModelServeError, ValidationFailed, field_error
from shared.settings import Settings

router = APIRouter(prefix="/api/v1/batch-jobs", tags=["batch jobs"])

API_KEY_ENV = "MODELSERVE_API_KEY"
"""The environment variable the generated script reads its API key from."""


class ScriptRequest(BaseModel):
    input_dataset: str = Field(description="The dataset to score")
    output_dataset: str = Field(description="The dataset the script creates with the scored rows (must not exist)")
    service: str = Field(description="The service that scores the rows (its REST predict endpoint)")
    base_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Where the script reaches modelserve's gateway (default: the platform's public URL)",
    )
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Rows per predict call")


class GeneratedScript(BaseModel):
    code: str
    """A Python script: run it with `MODELSERVE_API_KEY=<an admin key> python score.py`."""


@router.post(
    "/generate-script",
    response_model=GeneratedScript,
    summary="Generate a Python script that scores a dataset through a service's REST API",
)
def generate_script(
    body: ScriptRequest, request: Request, datasets: DatasetsDep, services: ManagerDep
) -> GeneratedScript:
    errors: list[dict[str, Any]] = []
    base_url = body.base_url or public_url(request.app.state.settings)
    columns: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    model = version = None

    try:
        dataset = datasets.get(check_name(body.input_dataset, "input_dataset"))
    except ModelServeError as exc:
        errors.append(_named("input_dataset", exc, body.input_dataset))
    else:
        if dataset.status != "ready":
            errors.append(field_error("input_dataset", f"not ready (status {dataset.status})", expected="ready"))
        columns = list(dataset.columns)

    try:
        check_name(body.output_dataset, "output_dataset")
        if datasets.exists(body.output_dataset):
            errors.append(
                field_error("output_dataset", "already exists: the script creates it", received=body.output_dataset)
            )
    except ModelServeError as exc:
        errors.append(_named("output_dataset", exc, body.output_dataset))

    try:
        service = services.get_row(body.service)
    except ModelServeError as exc:
        errors.append(_named("service", exc, body.service))
    else:
        current = services.current_version(service)
        if current is None:
            errors.append(field_error("service", f"follows alias '{service.alias}', which points at no version"))
        else:
            registered = services.session.get(RegisteredModel, service.model_id)
            model = registered.name if registered else None
            version = current.version
            inputs = list(current.signature.get("inputs") or [])

    if not _valid_base_url(base_url):
        errors.append(field_error("base_url", "expected an http(s) URL with a host", received=base_url[:200]))
    if errors:
        fields = ", ".join(e["field"] for e in errors)
        raise ValidationFailed(f"Cannot generate the script: {fields}", errors=errors)
    mapping = auto_mapping(inputs, columns)
    return GeneratedScript(code=render(body.model_copy(update={"base_url": base_url}), mapping, inputs, model, version))


def public_url(settings: Settings) -> str:
    """The URL clients reach the gateway at: `public_url`, else the gateway's own address."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{'[' + host + ']' if ':' in host else host}:{settings.port}"


def _named(field: str, exc: ModelServeError, received: str) -> dict[str, Any]:
    """A not-found (or invalid name) error as the request field it comes from."""
    if exc.errors:
        return exc.errors[0]
    message = "does not exist" if exc.status == 404 else exc.detail
    return field_error(field, message, received=received[:200])


def _valid_base_url(url: str) -> bool:
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment


# --- rendering: the template module, its docstring and constants replaced by literals -----------------------------

_TEMPLATE_PATH = Path(script_template.__file__)
SHEBANG = "#!/usr/bin/env python3\n"


def _one_line(text: str) -> str:
    """Text safe inside a `#` comment: no line break of any kind survives (escaped as in a string literal)."""
    return text.encode("unicode_escape").decode("ascii")


def _docstring(text: str) -> str:
    """A readable triple-quoted literal when the text allows it, else `repr` (still one literal)."""
    lines = text.split("\n")
    if '"""' not in text and "\\" not in text and not text.endswith('"') and all(ln.isprintable() for ln in lines):
        return f'"""{text}"""'
    return repr(text)


def _mapping_literal(mapping: dict[str, Any], inputs: list[dict[str, Any]]) -> str:
    lines = ["MAPPING: dict[str, Any] = {"]
    for spec in inputs:
        name = str(spec["name"])
        shape = spec.get("shape")
        about = _one_line(f"{spec.get('data_type', '?')}" + (f" {shape}" if shape else ""))
        if name in mapping:
            lines.append(f"    {name!r}: {mapping[name]!r},  # {about}")
        else:
            lines.append(f"    # {_one_line(repr(name))}: '<column>',  # {about}: no column found, name one here")
    lines.append("}")
    return "\n".join(lines)


def _values(
    body: ScriptRequest, mapping: dict[str, Any], model: str | None, version: int | None
) -> tuple[str, dict[str, Any]]:
    """The script's docstring and the values of the constants generation sets."""
    served = f"model {model!r} version {version}" if model else "its model"
    head = (
        f"Score the dataset {body.input_dataset!r} through the modelserve service {body.service!r} and upload the\n"
        f"result as the dataset {body.output_dataset!r}.\n\n"
        f"Generated by modelserve (POST /api/v1/batch-jobs/generate-script) when the service served {served}."
    )
    generic = (ast.get_docstring(ast.parse(_TEMPLATE_PATH.read_text()), clean=False) or "").split("\n\n", 1)[-1]
    constants = {
        "BASE_URL": body.base_url,
        "INPUT_DATASET": body.input_dataset,
        "OUTPUT_DATASET": body.output_dataset,
        "SERVICE": body.service,
        "BATCH_SIZE": body.batch_size,
        "API_KEY_ENV": API_KEY_ENV,
        "MAPPING": mapping,
    }
    return f"{head}\n\n{generic.strip()}\n", constants


def render(
    body: ScriptRequest, mapping: dict[str, Any], inputs: list[dict[str, Any]], model: str | None, version: int | None
) -> str:
    docstring, constants = _values(body, mapping, model, version)
    source = _TEMPLATE_PATH.read_text()
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    replacements: list[tuple[int, int, str]] = []
    first = tree.body[0]
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)  # the template's docstring
    replacements.append((first.lineno, first.end_lineno or first.lineno, _docstring(docstring)))
    for node in tree.body:
        name = _assigned_name(node)
        if name in constants:
            value = constants[name]
            text = _mapping_literal(value, inputs) if name == "MAPPING" else f"{name} = {value!r}"
            replacements.append((node.lineno, node.end_lineno or node.lineno, text))
    for start, end, text in sorted(replacements, reverse=True):
        lines[start - 1 : end] = [text + "\n"]
    code = SHEBANG + "".join(lines)
    _check(code, docstring, constants)
    return code


def _assigned_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def _check(code: str, docstring: str, constants: dict[str, Any]) -> None:
    """Parse the script again: its docstring and each constant must be exactly the literal meant, once."""
    tree = ast.parse(code)
    if ast.get_docstring(tree, clean=False) != docstring:
        raise RuntimeError("generated script: the docstring did not render as one literal")
    seen: dict[str, Any] = {}
    for node in tree.body:
        name = _assigned_name(node)
        if name in constants:
            value = getattr(node, "value", None)
            if name in seen or value is None:
                raise RuntimeError(f"generated script: {name} assigned twice")
            seen[name] = ast.literal_eval(value)  # raises on anything but a literal
    if seen != constants:
        raise RuntimeError("generated script: a constant did not render as its literal")
