"""Both PMML engines on the same records at load: which one a model is bound to, and what describe says.

Where both engines load a model and reproduce its `<ModelVerification>` records (a loaded engine has), they
answer records generated from its schema (the verification records first, then values from each field's
declared categories, intervals or type) and their normalised answers are compared:

- an engine that fails records the other answers loses (it does not cover the model: pypmml cannot
  evaluate an `AssociationModel`, jpmml-evaluator refuses a weighted `CategoricalPredictor`…);
- otherwise the first of `PREFERENCE` serves: jpmml-evaluator, the faster, whose departures from the
  specification `pmml_fixes` corrects (where they still disagree, e.g. on a Cox model's baseline cell,
  where pypmml picks the wrong one, jpmml's answer is the specification's).

The report (`description.engine.cross_check`) names both engines, the records compared, and up to
`MAX_DIFFERENCES` differences with the inputs that produced them.
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING, Any

from inference.runtimes.base import FieldSpec
from inference.runtimes.pmml_engines import ENGINES
from inference.runtimes.pmml_schema import PmmlSchema, typed
from shared.errors import ModelServeError

if TYPE_CHECKING:
    from inference.runtimes.pmml import PmmlRuntime

logger = logging.getLogger("modelserve.runtimes.pmml")

GENERATED_RECORDS = 24
"""Records generated from the schema besides the verification records (`Settings.pmml_cross_check_records`)."""
MAX_DIFFERENCES = 10
PREFERENCE = ("jpmml", "pypmml")
TOLERANCE = 1e-6

_DOUBLES = [0.0, 1.0, -1.0, 0.5, 2.5, 5.0, 10.0, 42.0]
_INTEGERS = [0, 1, 2, 3, 5, 10, -1]


def _options(spec: FieldSpec) -> list[Any]:
    if spec.multi_valued:
        items = list(spec.values or ["a"])
        return [[item] for item in items] + [items[:2], items]
    if spec.values:
        return list(spec.values)
    integer = spec.data_type == "integer"
    if spec.intervals:
        found: list[Any] = []
        for interval in spec.intervals:
            left, right = interval.get("left"), interval.get("right")
            if left is not None and right is not None:
                points = [left + (right - left) * f for f in (0.1, 0.25, 0.5, 0.75, 0.9)]
            elif left is not None:
                points = [left + d for d in (0.5, 1.0, 10.0)]
            elif right is not None:
                points = [right - d for d in (0.5, 1.0, 10.0)]
            else:
                points = list(_DOUBLES)
            found += [round(p) for p in points] if integer else points
        return found
    if integer:
        return list(_INTEGERS)
    if spec.data_type in ("double", "float"):
        return list(_DOUBLES)
    if spec.data_type == "boolean":
        return [True, False]
    if spec.data_type == "string":
        return ["a"]
    return [None]  # dates and times: left missing


def generated_records(schema: PmmlSchema, count: int = GENERATED_RECORDS) -> list[dict[str, Any]]:
    """The verification records, then `count` drawn (deterministically) from each field's options."""
    records: list[dict[str, Any]] = []
    if schema.verification is not None:
        types = {spec.name: spec.data_type for spec in schema.inputs}
        records += [
            {name: typed(row.get(name) or None, dt) for name, dt in types.items()} for row in schema.verification.rows
        ]
    options = {spec.name: _options(spec) for spec in schema.inputs}
    draw = random.Random(0)
    wanted = len(records) + count
    if count:
        records.append({name: values[0] for name, values in options.items()})
    while len(records) < wanted:
        records.append({name: draw.choice(values) for name, values in options.items()})
    return records


def _error(exc: Exception) -> str:
    if isinstance(exc, ModelServeError):
        errors = exc.errors or []
        return "error: " + "; ".join(str(e.get("message", "")) for e in errors) if errors else f"error: {exc.detail}"
    return f"error: {type(exc).__name__}: {exc}"[:500]


def _compared(answer: dict[str, Any]) -> dict[str, Any]:
    if set(answer) == {"raw"}:  # association rules and the like: their outputs are the answer
        return answer
    return {key: value for key, value in answer.items() if key != "raw"}


def _answers(runtime: PmmlRuntime, records: list[dict[str, Any]]) -> list[dict[str, Any] | str]:
    """Each record's answer (or "error: …"): one batch call, record by record only when the batch fails."""
    try:
        return [_compared(answer) for answer in runtime.predict(records)]
    except Exception as exc:  # an engine's own failure on a generated record counts against that engine
        logger.debug("cross-check batch failed on %s: %s", runtime.description.engine.implementation, exc)
    found: list[dict[str, Any] | str] = []
    for record in records:
        try:
            found.append(_compared(runtime.predict([record])[0]))
        except Exception as exc:
            found.append(_error(exc))
    return found


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
    return bool(a == b and type(a) is type(b))


def cross_check(
    schema: PmmlSchema, runtimes: dict[str, PmmlRuntime], count: int = GENERATED_RECORDS
) -> tuple[str, dict[str, Any]]:
    """The engine name to serve with, and the report for `description.engine.cross_check`."""
    names = [name for name in PREFERENCE if name in runtimes]
    labels = {name: runtimes[name].description.engine.implementation or name for name in names}
    records = generated_records(schema, count)
    only_failed = dict.fromkeys(names, 0)
    differences: list[dict[str, Any]] = []
    disagreements = 0
    by_engine = {name: _answers(runtimes[name], records) for name in names}
    for i, record in enumerate(records):
        answers = {name: by_engine[name][i] for name in names}
        failed = {name for name, answer in answers.items() if isinstance(answer, str)}
        if len(failed) == len(names):
            continue  # a record no engine evaluates (e.g. invalid for the model): nothing to compare
        for name in failed:
            only_failed[name] += 1
        first = answers[names[0]]
        if failed or not all(_same(first, answers[name]) for name in names[1:]):
            disagreements += 1
            if len(differences) < MAX_DIFFERENCES:
                differences.append({"record": i, "inputs": record} | {labels[n]: answers[n] for n in names})
    fewest = min(only_failed.values())
    chosen = next(name for name in names if only_failed[name] == fewest)
    if any(only_failed.values()):
        reason = f"{labels[chosen]} answers the records the other engine fails"
    elif disagreements:
        reason = f"{labels[chosen]} follows the PMML specification where the engines differ"
    else:
        reason = "both engines agree: the faster serves"
    report = {
        "agree": disagreements == 0,
        "records": len(records),
        "verification_records": len(schema.verification.rows) if schema.verification else 0,
        "engines": [labels[name] for name in names],
        "errors": {labels[name]: count for name, count in only_failed.items()},
        "differences": differences,
        "chosen": labels[chosen],
        "reason": reason,
    }
    return chosen, report


def refusal_report(schema: PmmlSchema, runtime: PmmlRuntime, refused: dict[str, str]) -> dict[str, Any]:
    """The report when only one engine loads the model (the other refused it or its verification records)."""
    chosen = runtime.description.engine.implementation or ""
    labels = {name: ENGINES[name].implementation for name in refused}
    return {
        "agree": False,
        "records": 0,
        "verification_records": len(schema.verification.rows) if schema.verification else 0,
        "engines": [chosen, *labels.values()],
        "refused": {labels[name]: reason for name, reason in refused.items()},
        "differences": [],
        "chosen": chosen,
        "reason": f"{chosen} is the only engine that loads the model and reproduces its verification records",
    }
