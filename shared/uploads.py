"""Streaming multipart uploads: the file part goes straight into an artifact writer, never whole into memory."""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from shared.artifacts import ArtifactStore, ArtifactWriter, StagedArtifact
from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed, field_error

_MAX_FIELD_BYTES = 64 * 1024
_FORM_OVERHEAD = 1024 * 1024  # headers and text fields around the file


@dataclass
class UploadForm:
    fields: dict[str, str] = field(default_factory=dict)
    file: StagedArtifact | None = None
    filename: str | None = None


async def receive_upload(
    request: Request, store: ArtifactStore, max_bytes: int, file_field: str = "file"
) -> UploadForm:
    """Parse a multipart/form-data body as it arrives; the `file_field` part is hashed into the store's staging.

    The caller owns the staged file: commit or discard it.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UnsupportedMediaType("Send the file as multipart/form-data")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + _FORM_OVERHEAD:
        raise PayloadTooLarge(f"The upload ({declared} bytes) is larger than the limit of {max_bytes} bytes")

    form = UploadForm()
    state: dict[str, object] = {"name": None, "filename": None, "value": bytearray(), "writer": None}
    header_field, header_value = bytearray(), bytearray()
    headers: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        headers.clear()
        state.update(name=None, filename=None, value=bytearray(), writer=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == file_field:
            if form.file is not None or state.get("writer_open"):
                raise ValidationFailed("Only one file may be uploaded", errors=[field_error(file_field, "repeated")])
            state["filename"] = disposition.get(b"filename", b"").decode("utf-8", "replace") or None
            state["writer"] = store.writer(max_bytes)
            state["writer_open"] = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        writer = state["writer"]
        if isinstance(writer, ArtifactWriter):
            writer.write(data[start:end])
        else:
            value = state["value"]
            assert isinstance(value, bytearray)
            value.extend(data[start:end])
            if len(value) > _MAX_FIELD_BYTES:
                raise ValidationFailed(
                    "A form field is too long", errors=[field_error(str(state["name"]), "longer than 64 KiB")]
                )

    def on_part_end() -> None:
        writer = state["writer"]
        if isinstance(writer, ArtifactWriter):
            form.file = writer.finish()
            form.filename = state["filename"] if isinstance(state["filename"], str) else None
            state["writer"] = None
        elif state["name"]:
            value = state["value"]
            assert isinstance(value, bytearray)
            form.fields[str(state["name"])] = value.decode("utf-8", "replace")

    boundary = params[b"boundary"]
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (PayloadTooLarge, ValidationFailed, UnsupportedMediaType):
        _cleanup(state, form, store)
        raise
    except Exception as exc:
        _cleanup(state, form, store)
        raise BadRequest(f"Malformed multipart body: {exc}") from exc
    if isinstance(state["writer"], ArtifactWriter):  # body ended inside the file part
        _cleanup(state, form, store)
        raise BadRequest("Malformed multipart body: the file part is incomplete")
    return form


def _cleanup(state: dict[str, object], form: UploadForm, store: ArtifactStore) -> None:
    writer = state.get("writer")
    if isinstance(writer, ArtifactWriter):
        writer.abort()
    if form.file is not None:
        store.discard(form.file)
        form.file = None
