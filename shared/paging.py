"""Paging query parameters shared by every list endpoint, and the integer every database column can hold."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import Field

from shared.errors import MAX_DB_INT

DbInt = Annotated[int, Field(ge=-MAX_DB_INT - 1, le=MAX_DB_INT)]
"""An integer that fits a database column (64-bit signed): larger ones are a 422 naming the field, not a 500."""
Limit = Annotated[int, Query(ge=1, le=500, description="Most items to return")]
Offset = Annotated[int, Query(ge=0, le=MAX_DB_INT, description="Items to skip")]
