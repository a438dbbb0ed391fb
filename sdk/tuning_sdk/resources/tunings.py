"""`client.tunings`: create, inspect, list, cancel, delete, wait for and stream fine-tuning jobs."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

from .. import _http
from .._errors import (
    APIConnectionError,
    InternalServerError,
    TuningError,
    WaitTimeoutError,
)
from .._models import Hyperparameters, JobDeleted, LogRecord, TuningEstimate, TuningJob
from .._pagination import CursorPage
from .._streaming import iter_response_events
from ._job_actions import JobActions
from ._shared import _dispose, _path_id

log = logging.getLogger("tuning_sdk")

DEFAULT_POLL_INTERVAL = 2.0
# The service sends a heartbeat every 15 s of silence: a read this long with nothing means a dead connection.
STREAM_READ_TIMEOUT = 45.0
# Give up resuming a log stream after this long without managing to reconnect.
RECONNECT_WINDOW = 60.0
# While wait() follows the stream, re-read the job at most this often (a replayed history is a burst).
MIN_REFRESH_INTERVAL = 0.2
# Records after which the job object (status, metrics) has changed.
_JOB_CHANGING = frozenset(
    {"status", "started", "metrics", "eval", "completed", "failed", "interrupted", "retry"}
)
_LOGS_PAGE = 100


class _StreamUnavailable(TuningError):
    """The service answered the follow request without an event stream."""


class _ProgressNotifier:
    def __init__(self, callback: Callable[[TuningJob], Any] | None, stop_on_pause: bool = False) -> None:
        self._callback = callback
        self._last: object = None
        self._stop_on_pause = stop_on_pause
        self._paused_seen = False

    def done(self, job: TuningJob) -> bool:
        """Whether `wait` returns `job` now; says so (once per pause) when a paused job keeps it waiting."""
        paused = job.status == "paused"
        if paused and not self._stop_on_pause and not self._paused_seen:
            log.warning(
                "job %s is paused: still waiting for it to be resumed and to end "
                "(resume it with client.tunings.resume, or pass stop_on_pause=True)",
                job.id,
            )
        self._paused_seen = paused
        return job.is_terminal or (paused and self._stop_on_pause)

    def update(self, job: TuningJob) -> None:
        # From the first reported training step on: a callback may then rely on `train_loss` being set
        # (the original spec's example formats it with `:.4f`).
        m = job.metrics
        if self._callback is None or m is None or m.train_loss is None or m == self._last:
            return
        self._last = job.metrics
        self._callback(job)


class Tunings(JobActions):
    """Fine-tuning jobs. Reached as ``client.tunings``."""

    def __init__(self, transport: _http.Transport) -> None:
        self._t = transport

    # ---- CRUD ----------------------------------------------------------------------------------------

    @overload
    def create(
        self,
        model: str,
        training_file: str,
        *,
        hyperparameters: Mapping[str, Any] | Hyperparameters | None = None,
        validation_file: str | None = None,
        method: str | None = None,
        adapter: str | None = None,
        from_checkpoint: str | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        webhook_events: Sequence[str] | None = None,
        resume_on_restart: bool | None = None,
        num_gpus: int | None = None,
        distributed: str | None = None,
        integrations: Sequence[Mapping[str, Any]] | None = None,
        priority: int | None = None,
        max_runtime_seconds: int | None = None,
        auto_retry: int | None = None,
        idempotency_key: str | None = None,
        dry_run: Literal[False] = False,
    ) -> TuningJob: ...

    @overload
    def create(
        self,
        model: str,
        training_file: str,
        *,
        hyperparameters: Mapping[str, Any] | Hyperparameters | None = None,
        validation_file: str | None = None,
        method: str | None = None,
        adapter: str | None = None,
        from_checkpoint: str | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        webhook_events: Sequence[str] | None = None,
        resume_on_restart: bool | None = None,
        num_gpus: int | None = None,
        distributed: str | None = None,
        integrations: Sequence[Mapping[str, Any]] | None = None,
        priority: int | None = None,
        max_runtime_seconds: int | None = None,
        auto_retry: int | None = None,
        idempotency_key: str | None = None,
        dry_run: Literal[True],
    ) -> TuningEstimate: ...

    def create(
        self,
        model: str,
        training_file: str,
        *,
        hyperparameters: Mapping[str, Any] | Hyperparameters | None = None,
        validation_file: str | None = None,
        method: str | None = None,
        adapter: str | None = None,
        from_checkpoint: str | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        webhook_events: Sequence[str] | None = None,
        resume_on_restart: bool | None = None,
        num_gpus: int | None = None,
        distributed: str | None = None,
        integrations: Sequence[Mapping[str, Any]] | None = None,
        priority: int | None = None,
        max_runtime_seconds: int | None = None,
        auto_retry: int | None = None,
        idempotency_key: str | None = None,
        dry_run: bool = False,
    ) -> TuningJob | TuningEstimate:
        """Create a fine-tuning job. The service validates it (data file included) and queues it.

        Args:
            model: base model: a name from the service's models directory (e.g. ``"tiny-llama"``) or a hub id.
            training_file: the JSONL data: an uploaded file's id (``"file-..."``, see ``client.files.upload``)
                or a path relative to the service's files root (``"data/train.jsonl"``).
            hyperparameters: a dict or `Hyperparameters`; unset ones take the service's defaults.
            validation_file: optional JSONL data for eval loss: a file id or a path, as `training_file`.
            method: what the adapter is trained for: ``"sft"`` (supervised, the service's default), or a
                preference objective on chosen/rejected pairs: ``"dpo"``, ``"orpo"``, ``"simpo"`` (the
                training file must then hold pairs: ``"preference"`` or ``"chosen_rejected"`` format).
                ``"qlora"`` and ``"lora"``, the values before preference tuning, still work and mean
                ``"sft"`` with that adapter.
            adapter: how the adapter sits on the base: ``"qlora"`` (a 4-bit base; the service's default) or
                ``"lora"``. With a legacy ``method="qlora"``/``"lora"`` leave it out (a different one is
                refused).
            from_checkpoint: start from another job's adapter (the new job trains those weights, with that
                LoRA shape, a fresh optimizer and its own data and method: SFT, then DPO on the same
                adapter): a job id (``"ftjob-..."``: its final adapter; the job must have succeeded),
                ``"ftjob-...:STEP"`` (one of its checkpoints) or a checkpoint id (``"ftckpt-..."``: a
                `Checkpoint`'s ``id``, also OpenAI's).
                The job must be yours and of the same base `model`.
            suffix: goes into the fine-tuned model's name.
            seed: random seed.
            metadata: free-form key/values stored with the job.
            webhook_url: an http(s) URL the service POSTs a signed event to when the job ends (verify it with
                `tuning_sdk.webhooks.verify_signature` and the key's ``whsec_...`` secret).
            webhook_events: which events to send there: ``"job.succeeded"``, ``"job.failed"``,
                ``"job.cancelled"`` (the default: all three) and ``"job.checkpoint"``.
            resume_on_restart: if the service restarts and the trainer is gone with it, queue the job again
                to continue from its newest checkpoint instead of failing it with ``service_restart``
                (checkpoints come from the ``save_steps`` hyperparameter). Default: off.
            num_gpus: GPUs for the job, one training process each (default 1; more than the service leases
                is refused with 422 naming ``num_gpus``).
            distributed: how several GPUs share the work: ``"ddp"`` (default) or ``"fsdp"`` (the weights
                sharded, for a base that does not fit one GPU).
            integrations: experiment trackers the trainer logs the resolved config, every metric and every
                eval to, at most one of each: ``{"type": "wandb", "wandb": {"project": ..., "name": ...,
                "entity": ..., "tags": [...]}}`` (the W&B API key is the API key's own, set on the server),
                ``{"type": "mlflow", "mlflow": {"tracking_uri": ..., "experiment": ...}}`` (both optional:
                the service's tracking server, or a file store in the job's folder; experiment ``"tuning"``)
                and ``{"type": "tensorboard"}`` (event files in the job's folder: ``download(...,
                artifact="tensorboard")``). A tracker that fails costs a ``warning`` record, never the job.
            priority: the queue's order, -100..100 (default 0): higher priorities run first; among equal
                ones, the key with the least GPU time in the fair-share window, then creation order.
            max_runtime_seconds: training time allowed, counted over the job's runs (retries included). At the
                deadline the trainer checkpoints and stops and the job fails with ``deadline_exceeded``,
                keeping the checkpoint (`resume` continues it with a fresh allowance). Default: the
                service's (none: no limit).
            auto_retry: restart the job from its newest checkpoint up to this many times (0..10, default 0)
                after an infrastructure failure: the trainer crashed or was killed, ran out of memory
                (retried with a smaller micro-batch), or the service restarted; never after a user error.
                Each retry is a ``retry`` record; ``job.retries`` counts them.
            idempotency_key: makes the create safe to repeat (the SDK generates one per call when omitted,
                reused across its automatic retries).
            dry_run: create no job: the service runs the trainer's planning on the data (the model's own
                tokenizer) and returns a `TuningEstimate`: example and token counts, steps, padding
                efficiency, peak memory per GPU and whether it fits, and the seconds where it has trained
                that model shape on its device before. Bad data or a missing model fail as a create would.

        Returns:
            The new job (usually ``queued``); with ``dry_run=True`` a `TuningEstimate`.

        Raises:
            UnprocessableEntityError: invalid hyperparameters or data file (``param`` names the field; data
                errors also give ``line``); a data file in a format the method does not train on
                (``format_mismatch``: pairs for dpo/orpo/simpo, single examples for sft); a `from_checkpoint`
                of another base model (``checkpoint_model_mismatch``) or a ``lora_*`` hyperparameter that
                differs from its adapter's (``checkpoint_mismatch``).
            BadRequestError: malformed request or a path outside the files root.
            NotFoundError: a file id that does not exist for this key, or a data file that is not there
                (code ``file_not_found``); a `from_checkpoint` that names no job or checkpoint of yours
                (``checkpoint_not_found``).
            ConflictError: `idempotency_key` already used with another body (``idempotency_key_reused``), or
                a `webhook_url` while the key has no signing secret (``webhook_secret_missing``), or a
                `from_checkpoint` job id whose job has not succeeded (``checkpoint_not_ready``: name one of
                its checkpoints, ``JOB_ID:STEP``).
            PermissionDeniedError: a `webhook_url` the service's policy refuses (``webhook_url_not_allowed``).
            QuotaExceededError: the key is over one of its quotas (429 ``quota_exceeded``; ``param`` names
                the limit, ``client.usage.retrieve()`` shows them). Never retried: it does not clear in
                seconds.
            AuthenticationError, APIConnectionError: as for every call.

        Example:
            >>> job = client.tunings.create(model="tiny-llama", training_file="data/train.jsonl",
            ...                             hyperparameters={"epochs": 1, "learning_rate": 2e-4})
            >>> dpo = client.tunings.create(model="tiny-llama", training_file=pairs.id, method="dpo",
            ...                             from_checkpoint=job.id, hyperparameters={"dpo_beta": 0.1})
            >>> tracked = client.tunings.create(model="tiny-llama", training_file="data/train.jsonl",
            ...                                 integrations=[{"type": "tensorboard"}], priority=10,
            ...                                 max_runtime_seconds=3600, auto_retry=2)
        """
        body: dict[str, Any] = {"model": model, "training_file": training_file}
        if hyperparameters is not None:
            body["hyperparameters"] = (
                hyperparameters.to_dict()
                if isinstance(hyperparameters, Hyperparameters)
                else dict(hyperparameters)
            )
        optional = {
            "validation_file": validation_file,
            "method": method,
            "adapter": adapter,
            "from_checkpoint": from_checkpoint,
            "suffix": suffix,
            "seed": seed,
            "metadata": dict(metadata) if metadata is not None else None,
            "webhook_url": webhook_url,
            "webhook_events": list(webhook_events) if webhook_events is not None else None,
            "resume_on_restart": resume_on_restart,
            "num_gpus": num_gpus,
            "distributed": distributed,
            "integrations": [dict(i) for i in integrations] if integrations is not None else None,
            "priority": priority,
            "max_runtime_seconds": max_runtime_seconds,
            "auto_retry": auto_retry,
            "dry_run": dry_run or None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        data = self._t.request("POST", "/v1/tunings.create", json_body=body, idempotency_key=idempotency_key)
        return TuningEstimate.from_dict(data) if dry_run else TuningJob.from_dict(data)

    def get(self, job_id: str) -> TuningJob:
        """Fetch a job's current state.

        Args:
            job_id: the job's id (``ftjob-...``).

        Returns:
            The job, with its latest `metrics`.

        Raises:
            NotFoundError: no such job for this key.

        Example:
            >>> client.tunings.get(job.id).status
            'running'
        """
        return TuningJob.from_dict(self._t.request("GET", f"/v1/tunings.get/{_path_id(job_id)}"))

    def list(
        self, *, status: str | None = None, limit: int | None = None, after: str | None = None
    ) -> CursorPage[TuningJob]:
        """List jobs, newest first. Iterating the result walks every page, fetching each when reached.

        Args:
            status: only jobs in this status (e.g. ``"running"``).
            limit: page size, 1..100 (the service's default is 20).
            after: start after this job id (a cursor from a previous page's ``last_id``).

        Returns:
            The first page; iterate it for all jobs, or read ``.data`` for this page alone.

        Raises:
            BadRequestError / UnprocessableEntityError: an invalid status or limit.

        Example:
            >>> running = [j.id for j in client.tunings.list(status="running")]
        """

        def fetch(cursor: str | None) -> Mapping[str, Any]:
            params = {"status": status, "limit": limit, "after": cursor}
            body = self._t.request("GET", "/v1/tunings.list", params=params)
            return body if isinstance(body, Mapping) else {}

        return CursorPage(fetch(after), parse=TuningJob.from_dict, fetch=fetch)

    def cancel(self, job_id: str) -> TuningJob:
        """Cancel a job. A running trainer checkpoints and stops; the job ends ``cancelled``.

        Args:
            job_id: the job's id.

        Returns:
            The job: ``cancelled``, or ``cancelling`` while the trainer stops (``wait`` for the end).

        Raises:
            ConflictError: the job has already ended (code ``job_terminal``).
            NotFoundError: no such job.

        Example:
            >>> client.tunings.cancel(job.id).status
            'cancelling'
        """
        return TuningJob.from_dict(self._t.request("POST", f"/v1/tunings.cancel/{_path_id(job_id)}"))

    def delete(self, job_id: str) -> JobDeleted:
        """Delete an ended job and its files on the service.

        Args:
            job_id: the job's id.

        Returns:
            ``JobDeleted(id=..., deleted=True)``.

        Raises:
            ConflictError: the job has not ended yet (code ``job_not_terminal``): cancel it first.
            NotFoundError: no such job.

        Example:
            >>> client.tunings.delete(job.id).deleted
            True
        """
        return JobDeleted.from_dict(self._t.request("DELETE", f"/v1/tunings.delete/{_path_id(job_id)}"))

    # ---- logs ----------------------------------------------------------------------------------------

    def stream_logs(
        self, job_id: str, *, follow: bool = True, after: int | None = None
    ) -> Iterator[LogRecord]:
        """A job's log records in order: trainer events, status changes and trainer output lines.

        With ``follow=True`` the iterator stays open and yields records as they happen, until the job ends.
        A dropped connection is resumed transparently from the last record yielded (``Last-Event-ID``):
        no record is repeated or lost.

        Args:
            job_id: the job's id.
            follow: keep streaming until the job ends (False: the records so far, then stop).
            after: start after this sequence number (0 or None: from the first record).

        Returns:
            An iterator of `LogRecord`.

        Raises:
            NotFoundError: no such job.
            APIConnectionError: the stream could not be resumed for `RECONNECT_WINDOW` seconds.

        Example:
            >>> for rec in client.tunings.stream_logs(job.id):
            ...     print(rec.seq, rec.type, rec.format())
        """
        _path_id(job_id)
        if not follow:
            return self._page_logs(job_id, after or 0)
        return (rec for rec in self._follow(job_id, after or 0) if rec is not None)

    def _page_logs(self, job_id: str, after: int) -> Iterator[LogRecord]:
        last = after
        while True:
            body = self._t.request(
                "GET",
                f"/v1/tunings.logs/{_path_id(job_id)}",
                params={"after": last, "limit": _LOGS_PAGE},
            )
            if not isinstance(body, Mapping):
                return
            raw = body.get("data")
            records = [LogRecord.from_dict(r) for r in raw or [] if isinstance(r, Mapping)]
            for rec in records:
                if rec.seq > last:
                    last = rec.seq
                    yield rec
            if not body.get("has_more") or not records:
                return

    def _open_stream(self, job_id: str, last_seq: int, read_timeout: float) -> Any:
        headers = {"Last-Event-ID": str(last_seq)} if last_seq else None
        resp = self._t.request(
            "GET",
            f"/v1/tunings.logs/{_path_id(job_id)}",
            params={"follow": True, "after": last_seq or None},
            headers=headers,
            stream=True,
            timeout=read_timeout,
        )
        ctype = resp.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype:
            _dispose(resp)
            raise _StreamUnavailable(f"expected an event stream, got {ctype or 'no content type'}")
        return resp

    def _follow(
        self,
        job_id: str,
        after: int,
        read_timeout: Callable[[], float] | None = None,
    ) -> Generator[LogRecord | None, None, None]:
        """Records from the live stream, resumed after drops; None marks a tick (heartbeat or reconnect),
        so that a caller such as `wait` regains control while nothing happens."""
        last_seq = after
        down_since: float | None = None
        attempt = 0
        while True:
            timeout = read_timeout() if read_timeout else STREAM_READ_TIMEOUT
            try:
                resp = self._open_stream(job_id, last_seq, timeout)
            except (APIConnectionError, InternalServerError) as exc:
                resp = None
                failure: TuningError | None = exc
            else:
                failure = None
                down_since = None
                attempt = 0
                try:
                    for event in iter_response_events(resp):
                        if event is None:
                            yield None
                            continue
                        rec = _parse_record(event.data)
                        if rec is None:
                            continue
                        if rec.seq and rec.seq <= last_seq:
                            continue  # already yielded before a reconnect
                        last_seq = rec.seq or last_seq
                        yield rec
                        if rec.is_terminal_status:
                            return
                except APIConnectionError as exc:
                    failure = exc
                finally:
                    _dispose(resp)
            # The stream ended without the job's terminal status: the connection dropped, or the server
            # closed it (restart, or the job had already ended before we connected).
            yield None
            if failure is None or resp is not None:
                try:
                    job = self.get(job_id)
                except (APIConnectionError, InternalServerError) as exc:
                    failure = exc
                else:
                    if job.is_terminal:
                        # Whatever landed after our last record, then stop.
                        if failure is not None or last_seq:
                            log.info(
                                "log stream of %s interrupted (%s); the job has ended: reading the records "
                                "after seq %d",
                                job_id,
                                failure or "closed",
                                last_seq,
                            )
                        yield from self._page_logs(job_id, last_seq)
                        return
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > RECONNECT_WINDOW:
                raise APIConnectionError(
                    f"log stream of {job_id} could not be resumed for {RECONNECT_WINDOW:.0f}s: {failure}"
                )
            delay = _http.retry_delay(attempt)
            log.info(
                "log stream of %s interrupted (%s); resuming after seq %d in %.2fs",
                job_id,
                failure or "closed",
                last_seq,
                delay,
            )
            _http._sleep(delay)
            attempt += 1

    # ---- wait ----------------------------------------------------------------------------------------

    def wait(
        self,
        job_id: str,
        *,
        on_progress: Callable[[TuningJob], Any] | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float | None = None,
        stop_on_pause: bool = False,
    ) -> TuningJob:
        """Block until the job ends, and return it. A failed or cancelled job is returned, not raised.

        A ``paused`` job has not ended: by default wait keeps waiting for it to be resumed and to end (or for
        `timeout`), and logs a warning on the ``tuning_sdk`` logger each time it sees the job paused, so a
        wait on a paused job is never silent. With ``stop_on_pause=True`` it returns the ``paused`` job
        instead (check ``job.status == "paused"``).

        Follows the job's live event stream (so progress arrives as it happens) and falls back to polling
        every `poll_interval` seconds when the stream is unavailable.

        Args:
            job_id: the job's id.
            on_progress: called with the job each time its metrics change, from the first reported training
                step on (``job.metrics`` and ``job.metrics.train_loss`` are then always set).
            poll_interval: seconds between polls when polling.
            timeout: give up after this many seconds (None: wait as long as it takes).
            stop_on_pause: also return when the job is ``paused``.

        Returns:
            The job in a terminal status (or ``paused``, with `stop_on_pause`); check ``job.is_successful``,
            ``job.error``.

        Raises:
            WaitTimeoutError: `timeout` expired first (the job keeps running; ``e.job`` is its last state).
            NotFoundError: no such job.

        Example:
            >>> job = client.tunings.wait(job.id, on_progress=lambda j: print(f"{j.metrics.progress:.0%}"))
            >>> job.is_successful, job.fine_tuned_model
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        notifier = _ProgressNotifier(on_progress, stop_on_pause)
        job = self.get(job_id)
        notifier.update(job)
        if notifier.done(job):
            return job
        try:
            job = self._wait_streaming(job, notifier, deadline)
        except (APIConnectionError, InternalServerError, _StreamUnavailable) as exc:
            log.info("following the stream of %s failed (%s); polling instead", job_id, exc)
        if notifier.done(job):
            return job
        return self._wait_polling(job, notifier, deadline, poll_interval)

    def _wait_streaming(
        self, job: TuningJob, notifier: _ProgressNotifier, deadline: float | None
    ) -> TuningJob:
        def read_timeout() -> float:
            if deadline is None:
                return STREAM_READ_TIMEOUT
            return max(0.1, min(STREAM_READ_TIMEOUT, deadline - time.monotonic()))

        last_refresh = float("-inf")  # the first record always refreshes
        dirty = False
        with contextlib.closing(self._follow(job.id, 0, read_timeout)) as records:
            for rec in records:
                if rec is not None and rec.type in _JOB_CHANGING:
                    dirty = True
                now = time.monotonic()
                terminal_record = rec is not None and rec.is_terminal_status
                if dirty and (terminal_record or now - last_refresh >= MIN_REFRESH_INTERVAL or rec is None):
                    job = self.get(job.id)
                    last_refresh, dirty = time.monotonic(), False
                    notifier.update(job)
                    if notifier.done(job):
                        return job
                _check_deadline(job, deadline)
        job = self.get(job.id)
        notifier.update(job)
        return job

    def _wait_polling(
        self, job: TuningJob, notifier: _ProgressNotifier, deadline: float | None, poll_interval: float
    ) -> TuningJob:
        failures = 0
        while not notifier.done(job):
            _check_deadline(job, deadline)
            delay = (
                poll_interval
                if deadline is None
                else min(poll_interval, max(0.0, deadline - time.monotonic()))
            )
            _http._sleep(delay)
            try:
                job = self.get(job.id)
            except (APIConnectionError, InternalServerError):
                # Ride out a service restart; give up only after many polls in a row fail.
                failures += 1
                if failures >= 10:
                    raise
                continue
            failures = 0
            notifier.update(job)
        return job


def _check_deadline(job: TuningJob, deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise WaitTimeoutError(f"job {job.id} is still {job.status} after the wait timeout", job=job)


def _parse_record(data: str) -> LogRecord | None:
    try:
        obj = json.loads(data)
    except ValueError:
        log.warning("ignoring a malformed event: %.200s", data)
        return None
    return LogRecord.from_dict(obj) if isinstance(obj, Mapping) else None
