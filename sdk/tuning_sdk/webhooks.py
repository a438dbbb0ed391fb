"""Verify the webhooks the tuning service sends (standard library only).

Each delivery is a POST whose body is a JSON event and whose ``Tuning-Signature`` header is
``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" keyed with the key's webhook secret>``.

Example (any web framework; pass the raw body bytes, not re-encoded JSON):

    >>> from tuning_sdk.webhooks import construct_event
    >>> event = construct_event(request.body, request.headers["Tuning-Signature"], "whsec_...")
    >>> if event["type"] == "job.succeeded":
    ...     print(event["data"]["fine_tuned_model"])
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from ._errors import WebhookSignatureError

__all__ = ["SIGNATURE_HEADER", "WebhookSignatureError", "construct_event", "verify_signature"]

SIGNATURE_HEADER = "Tuning-Signature"
DEFAULT_TOLERANCE = 300


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                bad = value[:20]
                raise WebhookSignatureError(f"{SIGNATURE_HEADER} has a bad timestamp: {bad!r}") from None
        elif name == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookSignatureError(
            f"{SIGNATURE_HEADER} must look like 't=<unix seconds>,v1=<hex>', got {header[:80]!r}"
        )
    return timestamp, signatures


def verify_signature(
    payload: bytes | str,
    header: str | None,
    secret: str,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery's ``Tuning-Signature`` header against its raw body and return the parsed event.

    Args:
        payload: the raw request body, exactly as received.
        header: the ``Tuning-Signature`` header value.
        secret: the API key's webhook signing secret (``whsec_...``).
        tolerance: most seconds between the signature's timestamp and now (replay protection); None turns
            the check off.
        now: the current Unix time (tests).

    Raises:
        WebhookSignatureError: no/malformed header, no matching signature, or a timestamp outside tolerance.
    """
    if not header:
        raise WebhookSignatureError(f"No {SIGNATURE_HEADER} header: this request was not signed")
    body = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    timestamp, signatures = _parse(header)
    expected = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, sig) for sig in signatures):
        raise WebhookSignatureError(
            "The signature does not match the body: check the secret (whsec_...) and pass the raw body bytes"
        )
    current = time.time() if now is None else now
    if tolerance is not None and abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"The signature's timestamp is {int(current - timestamp)} s away from now (tolerance "
            f"{tolerance:g} s): a replayed or delayed request"
        )
    try:
        event = json.loads(body)
    except ValueError as exc:
        raise WebhookSignatureError(f"The signed body is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise WebhookSignatureError("The signed body is not a JSON object")
    return event


construct_event = verify_signature
