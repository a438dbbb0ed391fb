"""Uploaded data files: the file object, its pages, the upload form and the list query."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tuning_trainer.data import DataFormat

from .base import Page, QueryModel, ResponseModel
from .jobs import Cursor

PURPOSES = ("fine-tune",)
Purpose = Literal["fine-tune"]


class FileError(ResponseModel):
    """Why a file failed validation: the trainer's data code, a message and the 1-based line (null for
    whole-file problems)."""

    code: str
    message: str
    line: int | None


class File(ResponseModel):
    """An uploaded JSONL file, validated on upload with the trainer's own rules."""

    id: Annotated[str, Field(examples=["file-5d1c0e9a7b3f4a2c8e6d0b1f"])]
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: Purpose
    status: Literal["processed", "error"]
    status_details: str | None
    """The error's message when status is `error`"""
    format: DataFormat | None
    num_examples: int | None
    error: FileError | None


class FileList(Page):
    data: list[File]


class DeletedFile(ResponseModel):
    id: str
    object: Literal["file"]
    deleted: Literal[True]


class FileUpload(ResponseModel):
    """multipart/form-data: the JSONL as `file`, and `purpose=fine-tune` (nothing else)."""

    file: Annotated[bytes, Field(json_schema_extra={"format": "binary"}, description="The JSONL file")]
    purpose: Purpose


class ListFilesQuery(QueryModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    after: Cursor = None
    purpose: Purpose | None = None
