"""Bearer API keys: who is calling, and the key set a service starts with.

Keys live in the database as hashes (the manager's key store). A request's owner is the key's id, so jobs stay
with their key even when a key is renamed, and a revoked key stops working at once.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from ..errors import APIError
from ..settings import DEV_KEYS, Settings
from .context import jobs

if TYPE_CHECKING:
    from ..engine.facade import JobManager

log = logging.getLogger("tuning_service.auth")

_BEARER_HINT = "send 'Authorization: Bearer <your API key>'"


def bearer_token(request: Request) -> str:
    """The key from the Authorization header, or 401 saying exactly what is wrong with the header."""
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        raise APIError(
            401,
            "missing_api_key",
            f"No API key provided: {_BEARER_HINT}",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise APIError(
            401,
            "missing_api_key",
            f"The Authorization header uses the {scheme[:20]!r} scheme; {_BEARER_HINT}",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = token.strip()
    if not token:
        raise APIError(
            401,
            "missing_api_key",
            f"The Bearer token is empty: {_BEARER_HINT}",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


# Keys remembered at most; past it the cache starts afresh (a service has a handful of keys).
MAX_CACHED_KEYS = 1024


class KeyCache:
    """Keys verified since the database last changed: sha256 digest of the token (never the token) -> key id.

    Hashing the key and looking the hash up in SQLite on every request was a fifth of a `tunings.get`'s CPU
    (docs/benchmarks.md, B1). A revoked key must still stop working at once, also when another worker or
    the `keys revoke` CLI (another process) revoked it: the cache is emptied whenever SQLite's
    `PRAGMA data_version` moves, i.e. whenever any other connection has committed anything (a few
    microseconds to ask). Unknown keys are never cached.
    """

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager
        self._version: int | None = None
        self._ids: dict[bytes, str] = {}

    def lookup(self, digest: bytes) -> tuple[str | None, int]:
        """(key id or None, the data version it is valid for)."""
        version = self.manager.data_version()
        if version != self._version:
            self._ids.clear()
            self._version = version
            return None, version
        return self._ids.get(digest), version

    def remember(self, digest: bytes, key_id: str, version: int) -> None:
        if version != self._version:
            return  # something was committed meanwhile: the lookup may already be stale
        if len(self._ids) >= MAX_CACHED_KEYS:
            self._ids.clear()
        self._ids[digest] = key_id


_cache: KeyCache | None = None


def _key_cache(manager: JobManager) -> KeyCache:
    global _cache
    if _cache is None or _cache.manager is not manager:
        _cache = KeyCache(manager)  # a new lifespan (tests, reload) has a new manager and database
    return _cache


async def verified_key(manager: JobManager, token: str) -> tuple[str | None, int]:
    """(the id of the active key `token`, or None if it is unknown or revoked; the database's data_version
    read for the check)."""
    cache = _key_cache(manager)
    digest = hashlib.sha256(token.encode("utf-8")).digest()
    key_id, version = cache.lookup(digest)
    if key_id is None:
        key_id = await manager.verify_key(token)
        if key_id:
            cache.remember(digest, key_id, version)
    return key_id, version


async def authenticate(request: Request) -> str:
    """Return the calling key's id (the owner of the jobs it creates), or raise 401.

    Also leaves the database's `data_version` it read in the request's state (`data_version`): a handler can
    tell from it that nothing was committed since it last looked (jobcache.py)."""
    token = bearer_token(request)
    key_id, version = await verified_key(jobs(request), token)
    request.scope.setdefault("state", {})["data_version"] = version
    if not key_id or key_id in getattr(request.app.state, "disabled_key_ids", ()):
        # Never echo the key: it may be a real key pasted into the wrong service.
        hint = token[:4] + "..." if len(token) > 8 else "..."
        raise APIError(
            401,
            "invalid_api_key",
            f"Invalid API key ({hint}): it is unknown or has been revoked",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    request.state.key_id = key_id
    # Per-key token bucket (ratelimit.py): 429 with Retry-After; other keys have their own buckets.
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        limiter.check(str(key_id))
    return str(key_id)


async def setup_keys(manager: JobManager, settings: Settings) -> set[str]:
    """Register the keys this start accepts from the environment; return the ids of stale environment keys.

    - TUNING_API_KEYS set: those keys (hashed) are accepted, plus keys made with `keys create`.
    - Otherwise keys made with `python -m tuning_service keys create` are accepted.
    - With neither, the spec's development keys are registered and a warning says so on every start.
    Keys registered from the environment on an earlier start (e.g. the development keys before real keys
    were configured) stay in the database, so the jobs they own stay theirs, but are refused: the returned
    ids.
    """
    keys = await manager.list_keys()
    env_ids = {str(k["id"]) for k in keys if _is_env_key(k)}
    if settings.api_keys:
        current = set(await manager.ensure_env_keys(list(settings.api_keys)))
        log.info("API keys: %d from TUNING_API_KEYS", len(settings.api_keys))
    elif any(not _revoked(k) and not _is_env_key(k) for k in keys):
        current = set()
        log.info("API keys: the keys created with 'python -m tuning_service keys create'")
    else:
        current = set(await manager.ensure_env_keys(list(DEV_KEYS)))
        log.warning(
            "No API keys configured: accepting the development keys %s. Anyone who can reach this port can "
            "use them. Set TUNING_API_KEYS or run 'python -m tuning_service keys create --name NAME'.",
            " and ".join(DEV_KEYS),
        )
    return env_ids - current


def _revoked(key: dict[str, Any]) -> bool:
    return bool(key.get("revoked_at"))


def _is_env_key(key: dict[str, Any]) -> bool:
    # JobManager.ensure_env_keys names environment keys "env-<n>"; `keys create` keys carry the user's name.
    return str(key.get("name") or "").startswith("env-")
