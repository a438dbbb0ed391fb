"""Which addresses a webhook may reach (public ones, unless TUNING_WEBHOOK_ALLOW_NETWORKS says more), and
how a delivery is signed (docs/api.md, "Webhooks")."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..errors import APIError

SIGNATURE_HEADER = "Tuning-Signature"
RESOLVE_AT_CREATE_SECONDS = 2.0
ROTATION_OVERLAP_SECONDS = 86400.0  # after `keys set-webhook --rotate-secret`, the old secret also signs
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secrets_: Iterable[str], timestamp: int, body: bytes) -> str:
    """`t=<timestamp>,v1=<hex>[,v1=<hex>]`: one v1 per secret (two during a rotation's overlap)."""
    parts = [f"t={timestamp}"]
    for secret in secrets_:
        mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
        parts.append(f"v1={mac.hexdigest()}")
    return ",".join(parts)


# ---- which addresses a webhook may reach ----------------------------------------------------------------


class UrlPolicy:
    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in allow_networks:
            try:
                self.allowed.append(ipaddress.ip_network(raw, strict=False))
            except ValueError:
                raise ValueError(
                    f"TUNING_WEBHOOK_ALLOW_NETWORKS: {raw!r} is not a network (e.g. 127.0.0.0/8)"
                ) from None

    def address_allowed(self, ip: _IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(ip in net for net in self.allowed):
            return True
        return ip.is_global and not ip.is_multicast

    def check_address(self, url: str, param: str = "webhook_url") -> str:
        """For a literal address or `localhost`, whether it may be reached (no DNS). The URL's form is the
        schema's (schema/jobs.py, WebhookUrl)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host == "localhost" or host.endswith(".localhost"):
            ip: _IPAddress | None = ipaddress.ip_address("127.0.0.1")
        else:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                ip = None
        if ip is not None and not self.address_allowed(ip):
            raise _private(param, host, ip)
        return url

    def resolve(self, url: str) -> tuple[str, int, list[_IPAddress]]:
        """host, port and every address the host resolves to; ValueError if any of them is not allowed."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[_IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
        refused = [str(ip) for ip in addresses if not self.address_allowed(ip)]
        if refused:
            raise ValueError(f"{host} resolves to non-public address(es) {', '.join(refused)}")
        return host, port, addresses

    async def check(self, url: str, param: str = "webhook_url") -> str:
        """At create: the address, and every address the host resolves to now. A name that does not resolve
        is accepted (DNS may be down for a moment; the delivery checks again and retries)."""
        url = self.check_address(url, param)
        try:
            # Bounded: a slow resolver must not hold the create request (the delivery checks again anyway).
            await asyncio.wait_for(asyncio.to_thread(self.resolve, url), RESOLVE_AT_CREATE_SECONDS)
        except ValueError as exc:
            raise _invalid(param, f"{param} is refused: {exc} (see TUNING_WEBHOOK_ALLOW_NETWORKS)") from None
        except (OSError, asyncio.TimeoutError):
            pass
        return url


def _invalid(param: str, message: str) -> APIError:
    # 403, not the schema's 422 invalid_value: whether an address may be reached is this server's policy
    # (TUNING_WEBHOOK_ALLOW_NETWORKS, and what DNS says now), not a property of the request.
    return APIError(403, "webhook_url_not_allowed", message, param=param)


def _private(param: str, host: str, ip: _IPAddress) -> APIError:
    return _invalid(
        param,
        f"{param} is refused: {host} is a private, loopback, link-local or otherwise non-public address "
        f"({ip}); webhooks only reach public addresses unless TUNING_WEBHOOK_ALLOW_NETWORKS allows it",
    )
