"""JSON request bodies as clients write them: orjson first, Python's `json` for what orjson refuses.

Python's `json.dumps` writes `NaN`, `Infinity` and `-Infinity`, which are not JSON and which orjson refuses; a
model's numeric fields treat NaN as missing, so such bodies are accepted. The fallback runs only for a body
orjson refused, so the fast path stays orjson's.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads_json(data: bytes | str) -> Any:
    """The parsed body; raises `orjson.JSONDecodeError` (a `ValueError`) when neither parser accepts it."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise exc from None
