"""`modelserve models …`: push (optionally converting scikit-learn to ONNX), list, show, test, alias, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelserve.cli.context import client
from modelserve.cli.output import EXIT_CLIENT, EXIT_FAILED, JsonOpt, State, emit_json, err, fail, fields, out, table
from modelserve.cli.progress import transfer
from modelserve.cli.records import records_argument, write_predictions
from modelserve.types import ModelVersion, Predictions

app = typer.Typer(help="Upload, describe, test and delete models.", no_args_is_help=True)
alias_app = typer.Typer(help="Point aliases (e.g. production) at versions.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")

VersionOpt = Annotated[str, typer.Option("--version", "-v", help="A version number, `latest` or an alias.")]
DataOpt = Annotated[
    str | None,
    typer.Option("--data", "-d", help="Records as JSON: a record, a list, or a predict body; @file, - (stdin)"),
]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="Records as a CSV or JSON file.")]


def show_version(version: ModelVersion) -> None:
    fields(
        [
            ("model", version.model),
            ("version", version.version),
            ("format", version.format),
            ("engine", version.engine.get("implementation") or version.engine.get("name")),
            ("algorithm", version.algorithm),
            ("function", version.function_type),
            ("classes", version.class_labels),
            ("aliases", ", ".join(version.aliases) or None),
            ("sha256", version.sha256),
            ("size", f"{version.size_bytes} bytes"),
            ("description", version.description or None),
        ]
    )
    table(
        version.inputs,
        [
            ("input", lambda f: f.name),
            ("type", lambda f: f.data_type),
            ("shape", lambda f: f.shape),
            ("values", lambda f: getattr(f, "values", None)),
        ],
    )
    table(version.outputs, [("output", lambda f: f.name), ("type", lambda f: f.data_type)])


@app.command("push")
def push(
    file: Annotated[Path, typer.Argument(help="A PMML or ONNX file; or a scikit-learn .joblib/.skops with --convert.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name (an existing name gets a new version).")],
    description: Annotated[str | None, typer.Option(help="Free text kept with the version.")] = None,
    function_type: Annotated[str | None, typer.Option(help="Override the detected function type.")] = None,
    convert: Annotated[str | None, typer.Option(help="Convert locally before upload: `onnx` (skl2onnx).")] = None,
    sample: Annotated[
        Path | None, typer.Option(help="CSV rows the converted model must answer like the original.")
    ] = None,
    tolerance: Annotated[float, typer.Option(help="Largest allowed |difference| on the sample.")] = 1e-4,
    as_json: JsonOpt = False,
) -> None:
    """Upload a model file; prints the version as the platform described it."""
    if not file.is_file():
        fail(f"no such file: {file}")
    upload = file
    if convert is not None:
        if convert != "onnx":
            fail("--convert supports only `onnx`")
        if sample is None:
            fail("--convert onnx needs --sample rows.csv: the converted model is checked against the original on it")
        from modelserve.convert import ConversionError, convert_to_onnx

        try:
            result = convert_to_onnx(file, sample, tolerance)
        except ConversionError as exc:
            fail(str(exc), EXIT_FAILED)
        err.print(result.summary(), highlight=False)
        upload = result.path
        description = description or result.summary()
    with client() as ms, transfer(f"uploading {upload.name}", quiet=as_json) as progress:
        version = ms.upload_model(upload, name, description=description, function_type=function_type, progress=progress)
    if as_json:
        emit_json(version)
    else:
        show_version(version)


@app.command("import")
def import_mlflow(
    uri: Annotated[str, typer.Argument(help="models:/<name>/<version> or models:/<name>@<alias> (MLflow registry).")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Model name here (default: MLflow's).")] = None,
    sample: Annotated[
        Path | None, typer.Option(help="CSV rows to check the conversion on (else MLflow's example).")
    ] = None,
    tolerance: Annotated[float, typer.Option(help="Largest allowed |difference| on the sample.")] = 1e-4,
    as_json: JsonOpt = False,
) -> None:
    """Import a model version from an MLflow registry (MLFLOW_TRACKING_URI), converted to ONNX here."""
    from modelserve.convert import ConversionError
    from modelserve.mlflow_import import NotInMlflow, fetch_mlflow_model, parse_uri

    try:
        parse_uri(uri)
    except ConversionError as exc:
        fail(str(exc))
    try:
        imported = fetch_mlflow_model(uri, sample, tolerance)
    except NotInMlflow as exc:
        fail(str(exc), EXIT_CLIENT)
    except ConversionError as exc:
        fail(str(exc), EXIT_FAILED)
    err.print(imported.conversion.summary(), highlight=False)
    with client() as ms, transfer(f"uploading {imported.conversion.path.name}", quiet=as_json) as progress:
        version = ms.upload_model(
            imported.conversion.path, name or imported.name, description=imported.description, progress=progress
        )
    emit_json(version) if as_json else show_version(version)


@app.command("list")
def list_models(limit: int = 50, offset: int = 0, as_json: JsonOpt = False) -> None:
    """List models with their latest version."""
    with client() as ms:
        page = ms.list_models(limit=limit, offset=offset)
    if as_json:
        emit_json(page)
        return
    table(
        page.items,
        [
            ("name", lambda m: m.name),
            ("latest", lambda m: m.latest_version),
            ("format", lambda m: m.format),
            ("function", lambda m: m.function_type),
            ("algorithm", lambda m: m.algorithm),
            ("updated", lambda m: m.updated_at),
        ],
        title=f"{page.total} model(s)",
    )


@app.command("show")
def show(name: str, version: VersionOpt = "latest", as_json: JsonOpt = False) -> None:
    """Describe a version: engine, algorithm, inputs, outputs, classes."""
    with client() as ms:
        described = ms.describe(name, version)
    emit_json(described) if as_json else show_version(described)


@app.command("versions")
def versions(name: str, as_json: JsonOpt = False) -> None:
    """List a model's versions."""
    with client() as ms:
        found = ms.list_versions(name)
    if as_json:
        emit_json(found)
        return
    table(
        found,
        [
            ("version", lambda v: v.version),
            ("format", lambda v: v.format),
            ("algorithm", lambda v: v.algorithm),
            ("aliases", lambda v: ", ".join(v.aliases)),
            ("created", lambda v: v.created_at),
        ],
    )


@app.command("example")
def example(name: str, version: VersionOpt = "latest") -> None:
    """Print a valid request body for this version (JSON)."""
    with client() as ms:
        emit_json(ms.example(name, version))


@app.command("download")
def download(
    name: str,
    version: VersionOpt = "latest",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a version's file, byte-identical to the upload."""
    with client() as ms:
        described = ms.describe(name, version)
        dest = output or Path(f"{name}-v{described.version}.{described.format}")
        with transfer(f"downloading {dest.name}", quiet=as_json) as progress:
            ms.download_model(name, dest, described.version, progress=progress)
    emit_json({"path": str(dest)}) if as_json else out.print(f"wrote {dest}")


@app.command("test")
def test(
    name: str,
    data: DataOpt = None,
    file: FileOpt = None,
    version: VersionOpt = "latest",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write predictions to CSV/JSON.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict with a version without deploying it."""
    records = records_argument(data, file)
    with client() as ms:
        answer = ms.test(name, records, version)
    print_predictions(answer, output, file, as_json)


def print_predictions(answer: Predictions, output: Path | None, source: Path | None, as_json: bool) -> None:
    if output is not None:
        count = write_predictions(output, answer.predictions, source)
        if as_json:
            emit_json({"path": str(output), "rows": count})
        else:
            out.print(f"wrote {count} prediction(s) to {output}")
        return
    if as_json or State.json:
        emit_json(answer)
        return
    rows = answer.rows()
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    table(rows, [(c, lambda r, c=c: r.get(c)) for c in columns])  # type: ignore[misc]


@app.command("delete")
def delete(
    name: str,
    version: Annotated[str | None, typer.Option("--version", "-v", help="Delete only this version.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a model (all its versions) or one version."""
    what = f"{name} version {version}" if version else f"model {name} and all its versions"
    if not yes and not as_json:
        typer.confirm(f"Delete {what}?", abort=True)
    with client() as ms:
        ms.delete_version(name, version) if version else ms.delete_model(name)
    emit_json({"deleted": name, "version": version}) if as_json else out.print(f"deleted {what}")


@app.command("set-description")
def set_description(name: str, text: str, as_json: JsonOpt = False) -> None:
    """Change a model's description."""
    with client() as ms:
        detail = ms.update_model(name, description=text)
    emit_json(detail) if as_json else out.print(f"{name}: {detail.description}")


@alias_app.command("set")
def alias_set(name: str, alias: str, version: int, as_json: JsonOpt = False) -> None:
    """Point ALIAS of model NAME at VERSION (services following it roll)."""
    with client() as ms:
        moved = ms.set_alias(name, alias, version)
    emit_json(moved) if as_json else out.print(f"{name}@{alias} -> version {moved.version}")


@alias_app.command("delete")
def alias_delete(name: str, alias: str, as_json: JsonOpt = False) -> None:
    """Remove an alias (refused while a service follows it)."""
    with client() as ms:
        ms.delete_alias(name, alias)
    emit_json({"deleted": f"{name}@{alias}"}) if as_json else out.print(f"removed {name}@{alias}")
