"""The fast lane takes only requests it answers exactly as the FastAPI routes would; the rest pass on."""

from __future__ import annotations

import pytest

from gateway.fastlane import _wait


@pytest.mark.parametrize(
    ("query", "expected"),
    [(b"", 0.0), (b"wait=0", 0.0), (b"wait=2.5", 2.5), (b"wait=120", 120.0)],  # too long: read_job says so
)
def test_plain_wait_values_take_the_lane(query: bytes, expected: float) -> None:
    assert _wait(query) == expected


@pytest.mark.parametrize("query", [b"wait=-1", b"wait=abc", b"wait=nan", b"wait=inf", b"wait=1&x=2", b"other=1"])
def test_anything_else_goes_to_fastapi_for_its_validation(query: bytes) -> None:
    assert _wait(query) is None
