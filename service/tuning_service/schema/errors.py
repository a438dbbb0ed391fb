"""The error envelope every failure is sent in (errors.APIError renders it)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import ResponseModel


class ErrorDetail(ResponseModel):
    code: Annotated[str, Field(examples=["invalid_hyperparameter"])]
    """Machine-readable: clients switch on it (each route lists its own in /openapi.json)"""
    message: str
    """Names the field and, for a value out of bounds, the limit"""
    param: str | None
    """The offending field, dotted (`hyperparameters.learning_rate`, `metadata.team`, `limit`)"""
    type: Annotated[str, Field(examples=["invalid_request_error"])]
    line: int | None = None
    """A data-file problem's 1-based line (null for whole-file problems)"""
    data_code: str | None = None
    """A stored file's data problem (with `file_invalid`)"""


class Error(ResponseModel):
    error: ErrorDetail
