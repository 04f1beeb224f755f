"""Bounds on an XML model file, checked by a streaming parse before any engine builds its document.

A PMML engine builds the whole document tree in memory (jpmml-evaluator's JAXB, pypmml's JVM): a 60 MiB file
of nested elements grew the registry by ~2.9 GiB before failing. expat reads the file in chunks here with
constant memory and stops at the first element past the depth or count limit; DOCTYPEs (entity expansion,
external entities) are refused outright.
"""

from __future__ import annotations

from pathlib import Path
from xml.parsers import expat

from shared.errors import InvalidModel, ModelServeError, PayloadTooLarge, field_error

_CHUNK = 1024 * 1024


class _Stop(Exception):
    pass


def check_xml_limits(path: Path, *, max_depth: int, max_elements: int) -> None:
    """`PayloadTooLarge` for a file nested deeper than `max_depth` or holding more than `max_elements`
    elements; `InvalidModel` for a DOCTYPE. Reads `path` in chunks."""
    depth = elements = 0
    problem: list[ModelServeError] = []

    def start(_name: str, _attributes: object) -> None:
        nonlocal depth, elements
        depth += 1
        elements += 1
        if depth > max_depth:
            problem.append(
                PayloadTooLarge(
                    f"The XML nests deeper than {max_depth} elements (setting pmml_max_xml_depth)",
                    errors=[field_error("file", "nested too deeply", expected=max_depth)],
                )
            )
            raise _Stop
        if elements > max_elements:
            problem.append(
                PayloadTooLarge(
                    f"The XML holds more than {max_elements:,} elements (setting pmml_max_xml_elements)",
                    errors=[field_error("file", "too many elements", expected=max_elements)],
                )
            )
            raise _Stop

    def end(_name: str) -> None:
        nonlocal depth
        depth -= 1

    def doctype(*_args: object) -> None:
        problem.append(InvalidModel("DOCTYPE declarations are not allowed in model files (entities, external DTDs)"))
        raise _Stop

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    try:
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK):
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
    except _Stop:
        pass
    except expat.ExpatError:
        pass  # not XML expat reads (an encoding it lacks, a syntax error): the engine says what is wrong
    if problem:
        raise problem[0]
