"""JobManager: the one facade the HTTP layer uses. Plain dicts in, plain dicts (the public shape of
docs/api.md) out; HTTP concerns (auth headers, path safety, file validation, JSON parsing) stay in the routes.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import hmac
import logging
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from tuning_trainer.config import ConfigError, JobConfig, parse_hyperparameters

from ..errors import APIError, job_not_found
from ..files.store import Files, is_file_id
from ..settings import Settings
from ..storage.store import Store
from ..webhooks import policy as webhooks
from ..webhooks.delivery import Deliverer
from . import checkpoints, procs
from .checkpoints import checkpoint_dirs, requeue_fields
from .jobview import public_job, request_hash
from .recovery import recover
from .scheduler import Scheduler
from .states import ACTIVE, NON_TERMINAL, RESUMABLE, JobStatus
from .supervisor import Supervisor

log = logging.getLogger("tuning_service.manager")


def key_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class JobManager:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.supervisor = Supervisor(settings, store, notify=self._notify)
        self.scheduler = Scheduler(settings, store, self.supervisor)
        self.files = Files(settings, store)
        # Webhook outbox + delivery loop; the append hook also feeds the job duration histogram (metrics.py).
        self.webhooks = Deliverer(settings, store, self.supervisor.id)
        store.on_append = webhooks.make_append_hook(public_job, self.webhooks.enqueued)
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
            await recover(store, self.supervisor, requeue=self._requeue_after_restart)
        except BaseException:
            # An open aiosqlite connection keeps its thread alive: without this a failed start-up hangs
            # the process instead of exiting with the error.
            await store.close()
            raise
        self.supervisor.start()
        self.scheduler.start()
        self.webhooks.start()
        return self

    async def stop(self) -> None:
        """Stop the loops and close the database. Trainers are never killed: they run in their own sessions
        and a restarted service re-attaches to them."""
        await self.webhooks.stop()
        await self.scheduler.stop()
        await self.supervisor.stop()
        await self.store.close()

    def _notify(self) -> None:
        # Wake every waiter; they re-read the database. A fresh Event per generation avoids lost wake-ups.
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        self.webhooks.committed()

    # ---- jobs --------------------------------------------------------------------------------------------

    async def submit(
        self, *, owner: str, request: dict[str, Any], idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        rhash = request_hash(request)
        hyper = self._check_request(request)
        if request.get("webhook_url") and not await webhooks.key_has_secret(self.store, owner):
            raise APIError(
                422,
                "webhook_secret_missing",
                f"This API key ({owner}) has no webhook signing secret yet: run 'python -m "
                f"tuning_service keys set-webhook {owner}' on the server (it prints the secret once), "
                "then retry",
                param="webhook_url",
            )
        for param in ("training_file", "validation_file"):
            if is_file_id(request.get(param)):
                await self.files.for_job(request[param], owner, param)
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
        row = await self.store.get_public_job(job_id)  # not SELECT *: the hot path of clients that poll
        if row is None or row["owner"] != owner:
            raise job_not_found(job_id)
        return await self._public(row)

    async def list(
        self,
        *,
        owner: str,
        status: str | None,
        after: str | None,
        limit: int,
        metadata: dict[str, str] | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], bool]:
        rows, has_more = await self.store.list_jobs(
            owner=owner, status=status, after=after, limit=limit, metadata=metadata
        )
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
            if old in (JobStatus.QUEUED, JobStatus.VALIDATING, JobStatus.PAUSED):
                row = await tx.transition(
                    row,
                    JobStatus.CANCELLED,
                    now=now,
                    message="cancelled while paused"
                    if old == JobStatus.PAUSED
                    else "cancelled before it started",
                )
            elif old == JobStatus.PAUSING:
                # The trainer was already signalled for the pause: the same stop now ends in cancelled.
                row = await tx.transition(
                    row,
                    JobStatus.CANCELLING,
                    now=now,
                    message="cancel requested while pausing",
                    cancel_requested_at=now,
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

    async def pause(self, job_id: str, *, owner: str) -> dict[str, Any]:
        """queued -> paused at once; running -> pausing (SIGTERM: the trainer checkpoints) -> paused."""
        now = time.time()
        async with self.store.transaction() as tx:
            row = await tx.job(job_id)
            if row is None or row["owner"] != owner:
                raise job_not_found(job_id)
            old = JobStatus(row["status"])
            if old == JobStatus.QUEUED:
                row = await tx.transition(row, JobStatus.PAUSED, now=now, message="paused before it started")
            elif old == JobStatus.RUNNING:
                row = await tx.transition(
                    row,
                    JobStatus.PAUSING,
                    now=now,
                    message="pause requested: the trainer saves a checkpoint, then stops",
                    pause_requested_at=now,
                )
            else:
                raise APIError(
                    409,
                    "job_not_pausable",
                    f"Job {job_id} is {old.value}; only a queued or running job can be paused",
                    param="id",
                )
        if old == JobStatus.RUNNING:
            # As for cancel: any worker signals (pid + start time checked); the supervisor finalises.
            procs.signal_job(row, procs.SIGTERM)
            log.info("job %s pausing (SIGTERM sent to group %s)", job_id, row["pgid"])
        self._notify()
        return await self._public(row)

    async def resume(self, job_id: str, *, owner: str) -> dict[str, Any]:
        """paused | failed | cancelled -> queued; the next run starts from the newest checkpoint (failed and
        cancelled jobs need one; a paused job without one starts from the beginning)."""
        row = await self._owned(job_id, owner)
        status = JobStatus(row["status"])
        if status not in RESUMABLE:
            raise APIError(
                409,
                "job_not_resumable",
                f"Job {job_id} is {status.value}; only a paused, failed or cancelled job can be resumed",
                param="id",
            )
        found = await asyncio.to_thread(checkpoint_dirs, self.settings.jobs_dir / job_id)
        step = max(found) if found else None
        if step is None and status != JobStatus.PAUSED:
            raise APIError(
                409,
                "no_checkpoint",
                f"Job {job_id} is {status.value} and left no checkpoint to resume from; create a new job",
                param="id",
            )
        now = time.time()
        async with self.store.transaction() as tx:
            current = await tx.job(job_id)
            if current is None or current["status"] != row["status"]:
                raise APIError(
                    409, "job_not_resumable", f"Job {job_id} changed status; try again", param="id"
                )
            message = (
                f"resumed from the checkpoint of step {step}"
                if step is not None
                else "resumed (no checkpoint yet: it starts from the beginning)"
            )
            row = await tx.transition(
                current,
                JobStatus.QUEUED,
                now=now,
                message=message,
                **requeue_fields(None if step is None else found[step]),
            )
        log.info("job %s resumed (%s)", job_id, message)
        self.scheduler.wake()
        self._notify()
        return await self._public(row)

    async def _requeue_after_restart(self, row: dict[str, Any]) -> bool:
        """Start-up recovery (recovery.py) of a `running` job this worker adopted, whose trainer is gone: if
        it asked for `resume_on_restart`, left no verdict of its own (no terminal record, or only
        `interrupted`: stopped by an outside signal, e.g. the host shutting down) and has a checkpoint,
        queue it again to continue from the newest one, as a resume does. Returns False when nothing changed:
        the job then fails with `service_restart` as usual."""
        term = row["terminal_record"]
        if (
            row["status"] != JobStatus.RUNNING.value
            or not (row["request"] or {}).get("resume_on_restart")
            or (term is not None and term.get("type") != "interrupted")
        ):
            return False
        job_id = row["id"]
        found = await asyncio.to_thread(checkpoint_dirs, self.settings.jobs_dir / job_id)
        if not found:
            return False
        step = max(found)
        now = time.time()
        async with self.store.transaction() as tx:
            current = await tx.job(job_id)
            if (
                current is None
                or current["status"] != JobStatus.RUNNING.value
                or current["supervisor_id"] != self.supervisor.id
                or current["terminal_record"] != term
            ):
                return False
            path = f"checkpoints/{found[step].name}"
            await tx.append(job_id, [("resumed_after_restart", now, {"step": step, "checkpoint": path})])
            message = (
                f"the service restarted and the trainer was gone: queued again to resume from the checkpoint "
                f"of step {step} (resume_on_restart)"
            )
            fields = requeue_fields(found[step])
            await tx.transition(current, JobStatus.QUEUED, now=now, message=message, **fields)
        log.warning("job %s: trainer lost in the restart; re-queued from checkpoint step %d", job_id, step)
        return True

    async def checkpoints(self, job_id: str, *, owner: str) -> builtins.list[dict[str, Any]]:
        """The job's checkpoints still on disk, oldest first, each with the metrics at its step."""
        await self._owned(job_id, owner)
        on_disk = await asyncio.to_thread(checkpoint_dirs, self.settings.jobs_dir / job_id)
        return await checkpoints.describe(self.store, job_id, on_disk)

    async def adapter_dir(self, job_id: str, *, owner: str, checkpoint: int | None) -> tuple[Path, str]:
        """The folder to download and the archive's name: the final adapter, or checkpoint-N."""
        row = await self._owned(job_id, owner)
        job_dir = (self.settings.jobs_dir / job_id).resolve()
        on_disk = await asyncio.to_thread(checkpoint_dirs, job_dir) if checkpoint is not None else {}
        return checkpoints.download_target(row, job_dir, on_disk, checkpoint)

    async def records(
        self, job_id: str, *, owner: str, **query: Any
    ) -> tuple[builtins.list[dict[str, Any]], bool]:
        await self._owned(job_id, owner)
        return await self.store.records(job_id, **query)

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
        """Job counts for /health. `active_jobs`: unfinished work that is not paused (queued, or holding a
        trainer: `running_jobs`); a paused job holds no trainer and no slot, so it is counted apart."""
        by_status = await self.store.status_counts()

        def count(states: builtins.set[JobStatus] | frozenset[JobStatus]) -> int:
            return sum(by_status.get(s.value, 0) for s in states)

        return {
            "active_jobs": count(NON_TERMINAL - {JobStatus.PAUSED}),
            "running_jobs": count(ACTIVE),
            "queued_jobs": count({JobStatus.QUEUED, JobStatus.VALIDATING}),
            "paused_jobs": count({JobStatus.PAUSED}),
            "total_jobs": sum(by_status.values()),
        }

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
