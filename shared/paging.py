"""Paging query parameters shared by every list endpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

Limit = Annotated[int, Query(ge=1, le=500, description="Most items to return")]
Offset = Annotated[int, Query(ge=0, description="Items to skip")]
