"""JobManager: the job engine's facade, the one thing the routes talk to about jobs (api/context.py).

Typed requests in (a create body already validated at the route: schema/jobs.py), plain dicts out (the
public shapes of docs/api.md, built without validation: reads stay free of it). It owns the engine's parts:
the store (storage/), the supervisor, the scheduler, the webhook deliverer and the file store, and starts
them only after recovery (recovery.py) has given every unfinished job an owner again.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import hmac
import logging
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import APIError, job_not_found
from ..files.store import Files
from ..observability.metrics import JobCollector
from ..schema.jobs import CreateTuningRequest
from ..settings import Settings
from ..states import ACTIVE, NON_TERMINAL, RESUMABLE, JobStatus
from ..storage.jobs import new_job_id
from ..storage.store import Stamp, Store
from ..storage.usage import QuotaExceeded, check_quota
from ..webhooks.delivery import Deliverer
from ..webhooks.outbox import make_append_hook
from ..webhooks.policy import ROTATION_OVERLAP_SECONDS, new_secret
from . import checkpoints, lineage
from .admission import admit
from .checkpoints import checkpoint_dirs, requeue_fields
from .estimate import Estimator
from .jobview import public_job, request_hash
from .records import JobRecords
from .recovery import recover
from .scheduler import Scheduler
from .supervisor import Supervisor

log = logging.getLogger("tuning_service.jobs")


def quota_error(exc: QuotaExceeded) -> APIError:
    # No Retry-After: a quota does not clear in seconds; `x-should-retry: false` tells OpenAI's clients
    # (which retry every 429 by default) the same.
    return APIError(429, "quota_exceeded", exc.message, param=exc.limit, headers={"x-should-retry": "false"})


def key_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class JobManager:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.supervisor = Supervisor(settings, store, notify=self._notify)
        self.scheduler = Scheduler(settings, store, self.supervisor)
        self.files = Files(settings, store)
        self.estimator = Estimator(settings, store)
        # Webhook outbox + delivery loop; the append hook also feeds the job duration histogram (metrics.py).
        self.webhooks = Deliverer(settings, store, self.supervisor.id)
        store.on_append = make_append_hook(public_job, self.webhooks.enqueued)
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
            await self.supervisor.executor.open()
            await recover(store, self.supervisor)
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

    async def create(
        self, *, owner: str, request: CreateTuningRequest, idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Admit (admission.py, and lineage.py for from_checkpoint) and queue a job; with an idempotency key
        already used by this owner, the job it made (the same body) or 422 `idempotency_key_reused` (another
        body). Returns (job, created)."""
        num_gpus = await self.supervisor.executor.admit_gpus(request.num_gpus)  # the GPUs it will hold
        request = await admit(
            request, owner=owner, settings=self.settings, files=self.files, store=self.store
        )
        source = None
        if request.from_checkpoint is not None:
            request, source = await lineage.resolve(
                request, owner=owner, store=self.store, jobs_dir=self.settings.jobs_dir
            )
        normal = request.normalised()
        # The fingerprint is of what the client sent: a retry with the same key and body is the same request
        # even if the service's default changed meanwhile (the stored job keeps the default it got).
        rhash = request_hash(normal)
        if request.max_runtime_seconds is None and self.settings.max_runtime_seconds is not None:
            normal["max_runtime_seconds"] = self.settings.max_runtime_seconds
        hyperparameters = normal.pop("hyperparameters")  # stored once: the job's own column
        job_id = new_job_id()
        job_dir = self.settings.jobs_dir / job_id
        row: dict[str, Any] | None = None
        try:
            if source is not None:
                # In place before the job is queued: the scheduler may start it at once.
                await asyncio.to_thread(lineage.copy_adapter, source, job_dir)
            row, created = await self.store.create_job(
                job_id=job_id,
                owner=owner,
                model=request.model,
                request=normal,
                request_hash=rhash,
                idempotency_key=idempotency_key,
                hyperparameters=hyperparameters,
                num_gpus=num_gpus,
                now=(now := time.time()),
                quota_since=now - self.settings.quota_window_days * 86400,
            )
        except QuotaExceeded as exc:
            raise quota_error(exc) from None
        finally:
            if source is not None and (row is None or row["id"] != job_id):  # no job was made of it
                await asyncio.to_thread(shutil.rmtree, job_dir, True)
        if not created and row["request_hash"] != rhash:
            raise APIError(
                409,  # the key is taken: a conflict with the state its first request left, not a bad value
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

    async def estimate(self, *, owner: str, request: CreateTuningRequest) -> dict[str, Any]:
        """A dry run: create's admission, then the trainer's own plan for the job (estimate.py); no job."""
        await self.supervisor.executor.admit_gpus(request.num_gpus)
        request = await admit(
            request, owner=owner, settings=self.settings, files=self.files, store=self.store
        )
        if request.from_checkpoint is not None:
            request, _ = await lineage.resolve(
                request, owner=owner, store=self.store, jobs_dir=self.settings.jobs_dir
            )
        # The key's Hugging Face token, for a gated model's tokenizer (a local, short-lived process).
        token = {k: v for k, v in (await self.store.key_environment(owner)).items() if k == "HF_TOKEN"}
        return await self.estimator.estimate(request, token)

    async def _owned(self, job_id: str, owner: str) -> dict[str, Any]:
        row = await self.store.get_job(job_id)
        if row is None or row["owner"] != owner:
            raise job_not_found(job_id)
        return row

    async def _public(self, row: dict[str, Any]) -> dict[str, Any]:
        pos = None
        if row["status"] == JobStatus.QUEUED.value:
            pos = (await self._queue_positions()).get(row["id"])
        return public_job(row, pos)

    async def _queue_positions(self) -> dict[str, int]:
        now = time.time()
        since = now - self.settings.fair_share_window_hours * 3600
        return await self.store.queue_positions(now=now, fair_share_since=since)

    async def stamp(self, job_id: str) -> Stamp | None:
        """What tells whether a cached public job is still current, and its owner (api/jobcache.py)."""
        return await self.store.job_stamp(job_id)

    async def page_stamps(
        self, *, owner: str, status: str | None, after: str | None, limit: int
    ) -> tuple[builtins.list[tuple[str, str, float | None]], bool]:
        """The stamps of a page of `list` (the same filters and cursor), from an index alone."""
        return await self.store.list_job_stamps(owner=owner, status=status, after=after, limit=limit)

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
        positions = await self._queue_positions() if any(r["status"] == "queued" for r in rows) else {}
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
            # Whichever worker received the request asks the run to stop (local: SIGTERM to the group, pid +
            # start time checked); the supervising worker enforces the grace period and finalises. If the run
            # has not been started yet the supervisor stops it as soon as it has.
            await self.supervisor.request_stop(row)
            log.info("job %s cancelling (stop sent to its run)", job_id)
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
            # As for cancel: any worker asks the run to stop; the supervisor finalises.
            await self.supervisor.request_stop(row)
            log.info("job %s pausing (stop sent to its run)", job_id)
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
            try:  # a resume queues a job: the key's quotas hold as for a create
                await check_quota(
                    tx, owner, now=now, quota_since=now - self.settings.quota_window_days * 86400
                )
            except QuotaExceeded as exc:
                raise quota_error(exc) from None
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
                # A resume by hand is a fresh start for the limits of a run: its max_runtime_seconds
                # allowance and its automatic retries.
                runtime_since=now,
                retries=0,
            )
        log.info("job %s resumed (%s)", job_id, message)
        self.scheduler.wake()
        self._notify()
        return await self._public(row)

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

    async def tensorboard_dir(self, job_id: str, *, owner: str) -> tuple[Path, str]:
        """The job's TensorBoard folder (the trainer's tensorboard integration writes it) and the archive's
        name; 404 artifact_not_found before there is one."""
        await self._owned(job_id, owner)
        folder = (self.settings.jobs_dir / job_id / "tensorboard").resolve()
        if not await asyncio.to_thread(folder.is_dir):
            raise APIError(
                404,
                "artifact_not_found",
                f"Job {job_id} has no TensorBoard files: it was created without the tensorboard integration, "
                "or its trainer has not logged yet",
                param="artifact",
            )
        return folder, f"{job_id}-tensorboard.tar.gz"

    async def records(self, job_id: str, *, owner: str) -> JobRecords:
        """The job's records (engine/records.py): the owner is checked here, once."""
        await self._owned(job_id, owner)
        return JobRecords(self.store, job_id, lambda: self._changed)

    async def delete(self, job_id: str, *, owner: str) -> dict[str, Any]:
        kept_by = await self.store.delete_job(job_id, owner=owner)
        if kept_by == "":
            raise job_not_found(job_id)
        if kept_by is not None:
            raise APIError(
                409,
                "job_not_terminal",
                f"Job {job_id} is {kept_by}; cancel it and wait until it stops before deleting",
                param="id",
            )
        await asyncio.to_thread(shutil.rmtree, self.settings.jobs_dir / job_id, True)
        return {"id": job_id, "object": "tuning.job", "deleted": True}

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

    def data_version(self) -> int:
        """A number that moves whenever anything is committed to the database, by any process (SQLite's
        `PRAGMA data_version`): in-memory caches of the API (keys, finished jobs) are exact while it stays."""
        return self.store.data_version()

    def job_collector(self) -> JobCollector:
        """The job-level /metrics series, read from this manager's database at scrape time."""
        return JobCollector(self.store, self.settings)

    # ---- API keys ----------------------------------------------------------------------------------------

    async def create_key(self, name: str, limits: dict[str, Any] | None = None) -> tuple[str, str]:
        """A new key (with `limits`: max_running_jobs, max_queued_jobs, max_gpu_hours): returns (id,
        plaintext). The plaintext is shown once; only its sha256 is stored."""
        plaintext = "tk-" + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        await self.store.insert_key(
            key_id=key_id, name=name, key_hash=key_hash(plaintext), now=time.time(), limits=limits
        )
        return key_id, plaintext

    async def update_key_limits(self, id_or_name: str, limits: dict[str, Any]) -> str | None:
        """Set or lift (None) a key's limits; returns its id (None: no single active key matches)."""
        return await self.store.update_key_limits(id_or_name, limits)

    async def set_key_credentials(self, id_or_name: str, credentials: dict[str, str | None]) -> str | None:
        """Set or remove (None) the credentials a key's trainers get (wandb_api_key, hf_token)."""
        return await self.store.set_key_credentials(id_or_name, credentials)

    async def usage(self, owner: str) -> dict[str, Any]:
        """The caller's usage and limits (GET /v1/usage)."""
        now = time.time()
        window = self.settings.quota_window_days
        used = await self.store.key_usage(owner, now=now, since=now - window * 86400)
        return {
            "object": "usage",
            "key_id": owner,
            "running_jobs": used["running_jobs"],
            "queued_jobs": used["queued_jobs"],
            "gpu_hours": round(used["gpu_seconds"] / 3600, 6),
            "window_days": window,
            "limits": used["limits"],
        }

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
        """Every key with its webhook settings (whether it has a signing secret; never the secret)."""
        hooks = await self.store.key_webhooks()
        return [{**r, **hooks.get(r["id"], {})} for r in await self.store.list_keys()]

    async def set_key_webhook(
        self, id_or_name: str, *, url: str | None, clear: bool, rotate: bool
    ) -> tuple[str, str | None] | None:
        """Set (or clear) a key's default webhook URL; make its signing secret if it has none (or `rotate`).
        Returns (key id, the new secret, shown once, or None when unchanged), or None if no single active key
        matches. After a rotation the old secret keeps signing too, for ROTATION_OVERLAP_SECONDS."""
        return await self.store.set_key_webhook(
            id_or_name,
            url=url,
            clear=clear,
            rotate=rotate,
            make_secret=new_secret,
            overlap_seconds=ROTATION_OVERLAP_SECONDS,
        )
