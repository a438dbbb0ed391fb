"""Helpers for the file tests: multipart bodies built by hand (the service must accept what any client sends)
and an upload through the native route."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.support.server import DEV_KEY, TINY_TRAIN_ROWS, Response, ServiceProcess

GOOD_JSONL = "".join(json.dumps(r) + "\n" for r in TINY_TRAIN_ROWS).encode()
# Line 1 is fine, line 2 is not JSON.
BAD_JSONL = GOOD_JSONL.splitlines(keepends=True)[0] + b'{"messages": [oops\n'


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]] | None = None) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    boundary = "----tuning" + uuid.uuid4().hex
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, (filename, data) in (files or {}).items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def upload_raw(
    svc: ServiceProcess,
    data: bytes,
    *,
    filename: str = "train.jsonl",
    purpose: str | None = "fine-tune",
    key: str = DEV_KEY,
    path: str = "/v1/files.upload",
) -> Response:
    fields = {} if purpose is None else {"purpose": purpose}
    body, ctype = multipart(fields, {"file": (filename, data)})
    return svc.request("POST", path, key=key, body=body, headers={"Content-Type": ctype})


def upload(svc: ServiceProcess, data: bytes = GOOD_JSONL, **kw: Any) -> dict[str, Any]:
    r = upload_raw(svc, data, **kw)
    assert r.status == 200, (r.status, r.text)
    return dict(r.json())
