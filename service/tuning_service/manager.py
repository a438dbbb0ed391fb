"""JobManager: the one facade the HTTP layer uses. Plain dicts in, plain dicts (the public shape of
docs/api.md) out; HTTP concerns (auth headers, path safety, file validation, JSON parsing) stay in the routes.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import shutil
import time
from typing import Any

from tuning_trainer.config import ConfigError, JobConfig, parse_hyperparameters

from . import procs
from .errors import APIError, job_not_found
from .recovery import recover
from .scheduler import Scheduler
from .settings import Settings
from .states import JobStatus
from .store import Store
from .supervisor import Supervisor

log = logging.getLogger("tuning_service.manager")

# The public fields of a job, in the order docs/api.md shows them.
_REQUEST_FIELDS = ("training_file", "validation_file", "method", "suffix", "seed", "metadata")


def request_hash(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def key_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def public_job(row: dict[str, Any], queue_position: int | None = None) -> dict[str, Any]:
    req = row["request"]
    started, finished = row["started_at"], row["finished_at"]
    job: dict[str, Any] = {
        "id": row["id"],
        "object": "tuning.job",
        "status": row["status"],
        "model": row["model"],
        "fine_tuned_model": row["fine_tuned_model"],
        "adapter_path": row["adapter_path"],
        "training_file": req.get("training_file"),
        "validation_file": req.get("validation_file"),
        "method": req.get("method") or "qlora",
        "hyperparameters": row["hyperparameters"],
        "suffix": req.get("suffix"),
        "seed": 42 if req.get("seed") is None else req["seed"],
        "metadata": req.get("metadata") or {},
        "created_at": int(row["created_at"]),
        "started_at": None if started is None else int(started),
        "finished_at": None if finished is None else int(finished),
        "duration": None if started is None or finished is None else round(finished - started, 3),
        "queue_position": queue_position if row["status"] == JobStatus.QUEUED.value else None,
        "trained_tokens": row["trained_tokens"],
        "error": row["error"],
        "metrics": row["metrics"],
    }
    return job


class JobManager:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.supervisor = Supervisor(settings, store, notify=self._notify)
        self.scheduler = Scheduler(settings, store, self.supervisor)
        self._changed = asyncio.Event()
        self._started_at = time.time()

    # ---- lifecycle ---------------------------------------------------------------------------------------

    @classmethod
    async def start(cls, settings: Settings) -> JobManager:
        """Create folders, open the database, recover every non-terminal job, then start the loops.
        Returns only once recovery is done, so no new work is accepted before it."""
        settings.ensure_dirs()
        store = Store(settings.db_path)
        try:
            await store.open()
            self = cls(settings, store)
            await recover(store, self.supervisor)
        except BaseException:
            # An open aiosqlite connection keeps its thread alive: without this a failed start-up hangs
            # the process instead of exiting with the error.
            await store.close()
            raise
        self.supervisor.start()
        self.scheduler.start()
        return self

    async def stop(self) -> None:
        """Stop the loops and close the database. Trainers are never killed: they run in their own sessions
        and a restarted service re-attaches to them."""
        await self.scheduler.stop()
        await self.supervisor.stop()
        await self.store.close()

    def _notify(self) -> None:
        # Wake every waiter; they re-read the database. A fresh Event per generation avoids lost wake-ups.
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # ---- jobs --------------------------------------------------------------------------------------------

    async def submit(
        self, *, owner: str, request: dict[str, Any], idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        rhash = request_hash(request)
        hyper = self._check_request(request)
        num_gpus = self._num_gpus(request)
        row, created = await self.store.create_job(
            owner=owner,
            model=request["model"],
            request=request,
            request_hash=rhash,
            idempotency_key=idempotency_key,
            hyperparameters=hyper,
            config=None,
            num_gpus=num_gpus,
            now=time.time(),
        )
        if not created and row["request_hash"] != rhash:
            raise APIError(
                422,
                "idempotency_key_reused",
                f"Idempotency-Key {idempotency_key!r} was already used with a different request body "
                f"(job {row['id']}); use a new key for a new job",
                param="Idempotency-Key",
            )
        if created:
            log.info("job %s queued (model %s, owner %s)", row["id"], row["model"], owner)
            self.scheduler.wake()
            self._notify()
        return await self._public(row), created

    def _check_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validate what the trainer will be given (stdlib only) and return the hyperparameters with defaults
        filled in ("auto" kept until the trainer resolves it)."""
        try:
            JobConfig.from_dict(
                {
                    "model": request.get("model"),
                    "training_file": request.get("training_file"),
                    "validation_file": request.get("validation_file"),
                    "output_dir": str(self.settings.jobs_dir),
                    "method": request.get("method") or "qlora",
                    "seed": 42 if request.get("seed") is None else request.get("seed"),
                    "hyperparameters": request.get("hyperparameters") or {},
                }
            )
            hp = parse_hyperparameters(request.get("hyperparameters") or {})
        except ConfigError as exc:
            param = exc.param if exc.param != "output_dir" else None
            raise APIError(
                422,
                "invalid_hyperparameter" if param and param.startswith("hyperparameters") else exc.code,
                exc.message,
                param=param,
            ) from None
        return dataclasses.asdict(hp)

    def _num_gpus(self, request: dict[str, Any]) -> int:
        gpus = self.settings.gpus
        raw = request.get("num_gpus")
        if raw is None:
            return 1 if gpus else 0
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < (1 if gpus else 0):
            raise APIError(
                422, "invalid_request", f"num_gpus must be a positive integer, got {raw!r}", param="num_gpus"
            )
        if raw > len(gpus):
            raise APIError(
                422,
                "invalid_request",
                f"num_gpus is {raw} but this service has {len(gpus)} GPU(s) configured (TUNING_GPUS)",
                param="num_gpus",
            )
        return raw

    async def _owned(self, job_id: str, owner: str) -> dict[str, Any]:
        row = await self.store.get_job(job_id)
        if row is None or row["owner"] != owner:
            raise job_not_found(job_id)
        return row

    async def _public(self, row: dict[str, Any]) -> dict[str, Any]:
        pos = None
        if row["status"] == JobStatus.QUEUED.value:
            pos = (await self.store.queue_positions()).get(row["id"])
        return public_job(row, pos)

    async def get(self, job_id: str, *, owner: str) -> dict[str, Any]:
        return await self._public(await self._owned(job_id, owner))

    async def list(
        self, *, owner: str, status: str | None, after: str | None, limit: int
    ) -> tuple[builtins.list[dict[str, Any]], bool]:
        rows, has_more = await self.store.list_jobs(owner=owner, status=status, after=after, limit=limit)
        positions = await self.store.queue_positions() if any(r["status"] == "queued" for r in rows) else {}
        return [public_job(r, positions.get(r["id"])) for r in rows], has_more

    async def cancel(self, job_id: str, *, owner: str) -> dict[str, Any]:
        now = time.time()
        async with self.store.transaction() as tx:
            row = await tx.job(job_id)
            if row is None or row["owner"] != owner:
                raise job_not_found(job_id)
            old = JobStatus(row["status"])
            if old.is_terminal():
                raise APIError(
                    409,
                    "job_terminal",
                    f"Job {job_id} is already {old.value}; it cannot be cancelled",
                    param="id",
                )
            if old in (JobStatus.QUEUED, JobStatus.VALIDATING):
                row = await tx.transition(
                    row, JobStatus.CANCELLED, now=now, message="cancelled before it started"
                )
            elif old == JobStatus.RUNNING:
                row = await tx.transition(
                    row,
                    JobStatus.CANCELLING,
                    now=now,
                    message="cancel requested: stopping the trainer (it saves a checkpoint first)",
                    cancel_requested_at=now,
                )
        if old == JobStatus.RUNNING:
            # Whichever worker received the request signals the group (after checking pid + start time); the
            # supervising worker enforces SIGKILL after the grace period and finalises. If the trainer has not
            # been started yet (no pid recorded) the supervisor signals it as soon as it records the pid.
            procs.signal_job(row, procs.SIGTERM)
            log.info("job %s cancelling (SIGTERM sent to group %s)", job_id, row["pgid"])
        self._notify()
        return await self._public(row)

    async def delete(self, job_id: str, *, owner: str) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            row = await tx.job(job_id)
            if row is None or row["owner"] != owner:
                raise job_not_found(job_id)
            status = JobStatus(row["status"])
            if not status.is_terminal():
                raise APIError(
                    409,
                    "job_not_terminal",
                    f"Job {job_id} is {status.value}; cancel it and wait until it stops before deleting",
                    param="id",
                )
            await tx.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        await asyncio.to_thread(shutil.rmtree, self.settings.jobs_dir / job_id, True)
        return {"id": job_id, "object": "tuning.job", "deleted": True}

    async def events(
        self, job_id: str, *, owner: str, after: int, limit: int
    ) -> tuple[builtins.list[dict[str, Any]], bool]:
        await self._owned(job_id, owner)
        return await self.store.events(job_id, after=after, limit=limit)

    async def wait_for_events(self, job_id: str, after: int, timeout: float) -> None:
        """Return once a record with seq > after exists, or after `timeout` seconds. Jobs this worker follows
        wake waiters at once; records written by another worker are seen by polling every 0.1 s."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._changed
            last = await self.store.last_seq(job_id)
            if last is None or last > after:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(event.wait(), timeout=min(0.1, remaining))
            except asyncio.TimeoutError:
                pass

    async def is_terminal(self, job_id: str) -> bool:
        row = await self.store.get_job(job_id)
        return row is None or JobStatus(row["status"]).is_terminal()

    async def health(self) -> dict[str, Any]:
        active, total = await self.store.counts()
        return {"active_jobs": active, "total_jobs": total}

    # ---- API keys ----------------------------------------------------------------------------------------

    async def create_key(self, name: str) -> tuple[str, str]:
        """A new key: returns (id, plaintext). The plaintext is shown once; only its sha256 is stored."""
        plaintext = "tk-" + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        await self.store.insert_key(key_id=key_id, name=name, key_hash=key_hash(plaintext), now=time.time())
        return key_id, plaintext

    async def ensure_env_keys(self, keys: builtins.list[str]) -> builtins.list[str]:
        """Register keys given in the environment (TUNING_API_KEYS or the development keys). Their id derives
        from the hash, so the same key owns the same jobs across restarts. Returns their ids."""
        ids = []
        for i, plaintext in enumerate(keys, start=1):
            h = key_hash(plaintext)
            key_id = "key_" + h[:16]
            await self.store.insert_key(key_id=key_id, name=f"env-{i}", key_hash=h, now=time.time())
            ids.append(key_id)
        return ids

    async def verify_key(self, plaintext: str) -> str | None:
        h = key_hash(plaintext)
        row = await self.store.key_by_hash(h)
        if row is None or row["revoked_at"] is not None:
            return None
        return row["id"] if hmac.compare_digest(row["key_hash"], h) else None

    async def revoke_key(self, id_or_name: str) -> bool:
        return await self.store.revoke_keys(id_or_name, time.time()) > 0

    async def list_keys(self) -> builtins.list[dict[str, Any]]:
        return await self.store.list_keys()
