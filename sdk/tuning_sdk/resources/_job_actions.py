"""Job actions beyond the basics: pause, resume, events, checkpoints and the download of the adapter (or the
TensorBoard files).

`Tunings` (``client.tunings``) inherits them; they are here to keep each module to one idea.
"""

from __future__ import annotations

import builtins
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _http
from .._models import LogRecord, TuningJob
from ._shared import _dispose, _path_id

if TYPE_CHECKING:
    from .._objects import Checkpoint


class JobActions:
    """Mixed into `Tunings`: every method is reached as ``client.tunings.<name>``."""

    _t: _http.Transport

    # ---- pause / resume ------------------------------------------------------------------------------

    def pause(self, job_id: str) -> TuningJob:
        """Pause a job. A running trainer saves a checkpoint and stops; a queued job is paused at once.

        A paused job is not terminal: `resume` continues it from its last checkpoint's step, `cancel` ends it.

        Args:
            job_id: the job's id.

        Returns:
            The job: ``paused``, or ``pausing`` while the trainer checkpoints
            (``wait(job.id, stop_on_pause=True)`` returns once it is ``paused``).

        Raises:
            ConflictError: the job is not queued or running (code ``job_not_pausable``).
            NotFoundError: no such job.

        Example:
            >>> client.tunings.pause(job.id).status
            'pausing'
        """
        return TuningJob.from_dict(self._t.request("POST", f"/v1/tunings.pause/{_path_id(job_id)}"))

    def resume(self, job_id: str) -> TuningJob:
        """Resume a paused job, or a failed or cancelled one that has a checkpoint.

        The same job id is queued again and its trainer continues from the newest checkpoint's step (the
        new run's ``started`` record has ``start_step`` = that step) to the same total.

        Args:
            job_id: the job's id.

        Returns:
            The job, ``queued`` again (``error``, ``finished_at`` and ``fine_tuned_model`` cleared).

        Raises:
            ConflictError: code ``job_not_resumable`` (not paused, failed or cancelled) or ``no_checkpoint``
                (a failed or cancelled job that saved no checkpoint).
            NotFoundError: no such job.

        Example:
            >>> client.tunings.resume(job.id).status
            'queued'
        """
        return TuningJob.from_dict(self._t.request("POST", f"/v1/tunings.resume/{_path_id(job_id)}"))

    # ---- events, checkpoints, download ---------------------------------------------------------------

    def events(
        self, job_id: str, *, limit: int | None = None, after: int | None = None
    ) -> Iterator[LogRecord]:
        """A job's events, oldest first: status changes, ``started``, ``metrics``, ``eval``, ``checkpoint``,
        ``completed``, ``failed``, ``interrupted``, ``warning``, ``retry`` (the log stream's records without
        the raw output lines).

        The iterator fetches page after page (cursor: the previous page's ``last_seq``) until the events
        recorded so far are exhausted; it does not wait for new ones (``stream_logs`` follows a live job).

        Args:
            job_id: the job's id.
            limit: page size, 1..1000 (service default 100).
            after: start after this sequence number.

        Returns:
            An iterator of `LogRecord`. The first page is fetched by this call, so an unknown job raises here.

        Raises:
            NotFoundError: no such job.
            BadRequestError: an invalid `limit`.

        Example:
            >>> for ev in client.tunings.events(job.id):
            ...     print(ev.seq, ev.format())
        """
        path = f"/v1/tunings.events/{_path_id(job_id)}"

        def fetch(cursor: int) -> tuple[list[LogRecord], bool, int]:
            body = self._t.request("GET", path, params={"after": cursor or None, "limit": limit})
            body = body if isinstance(body, Mapping) else {}
            raw = body.get("data")
            records = [LogRecord.from_dict(r) for r in raw or [] if isinstance(r, Mapping)]
            last = body.get("last_seq")
            last = last if isinstance(last, int) and not isinstance(last, bool) else cursor
            if records:
                last = max(last, records[-1].seq)
            return records, bool(body.get("has_more")) and bool(records), last

        first = fetch(after or 0)

        def walk() -> Iterator[LogRecord]:
            records, more, last = first
            while True:
                yield from records
                if not more:
                    return
                records, more, last = fetch(last)

        return walk()

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """The checkpoints a job has on disk, oldest first, each with its step and the metrics at that step.

        Args:
            job_id: the job's id.

        Returns:
            A list of `Checkpoint` (empty before the first one is saved).

        Raises:
            NotFoundError: no such job.

        Example:
            >>> [c.step for c in client.tunings.checkpoints(job.id)]
            [4, 8]
        """
        from .._objects import Checkpoint

        body = self._t.request("GET", f"/v1/tunings.checkpoints/{_path_id(job_id)}")
        raw = body.get("data") if isinstance(body, Mapping) else None
        return [Checkpoint.from_dict(c) for c in raw or [] if isinstance(c, Mapping)]

    def download(
        self,
        job_id: str,
        path: str | os.PathLike[str],
        *,
        checkpoint: int | None = None,
        artifact: str = "adapter",
        overwrite: bool = False,
    ) -> Path:
        """Download a job's adapter (or one checkpoint, or its TensorBoard files) and unpack it into the
        folder `path`.

        The archive is streamed to a temporary file, checked (every member must be a plain file or folder
        inside `path`: no absolute names, no ``..``, no links) and unpacked all or nothing. The adapter's
        folder holds ``adapter_config.json``, ``adapter_model.safetensors`` and the tokenizer files, ready for
        ``PeftModel.from_pretrained(base_model, path)``; the TensorBoard folder holds the event files
        (``tensorboard --logdir path``).

        Args:
            job_id: the job's id.
            path: the folder to create (its parents are created too).
            checkpoint: a checkpoint's step (see `checkpoints`) instead of the final adapter (adapters only).
            artifact: ``"adapter"`` (the default) or ``"tensorboard"``: the event files of a job created
                with the ``{"type": "tensorboard"}`` integration (whatever it has written so far, while it
                runs too).
            overwrite: replace `path` if it exists and is not empty.

        Returns:
            The folder's absolute `Path`.

        Raises:
            ConflictError: no final adapter yet: the job has not succeeded (code ``adapter_not_ready``).
            NotFoundError: no such job, no such checkpoint (code ``checkpoint_not_found``), or no TensorBoard
                files (``artifact_not_found``: a job without the tensorboard integration, or none written
                yet).
            UnprocessableEntityError: a `checkpoint` with ``artifact="tensorboard"``
                (``checkpoint_not_applicable``), or an `artifact` the service does not know.
            ArchiveError: the archive was truncated, corrupt or held an unsafe member (nothing is written).
            FileExistsError: `path` exists and is not empty, and `overwrite` is False.

        Example:
            >>> folder = client.tunings.download(job.id, "adapters/my-job")
            >>> model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
            >>> client.tunings.download(job.id, "runs/my-job", artifact="tensorboard")
        """
        dest = Path(path).expanduser().absolute()
        if dest.is_dir() and any(dest.iterdir()) and not overwrite:
            raise FileExistsError(f"{dest} is not empty (pass overwrite=True to replace it)")
        if dest.exists() and not dest.is_dir():
            raise FileExistsError(f"{dest} exists and is not a directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        resp = self._t.request(
            "GET",
            f"/v1/tunings.download/{_path_id(job_id)}",
            # The default is left out: a service from before artifacts refuses a query it does not know.
            params={"checkpoint": checkpoint, "artifact": None if artifact == "adapter" else artifact},
            stream=True,
            headers={"Accept": "application/gzip, */*"},
        )
        from urllib3.exceptions import HTTPError  # loaded by the request above

        from .._transfer import ArchiveError, safe_extract

        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tar.gz", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in resp.stream(256 * 1024):
                        out.write(chunk)
            except (HTTPError, OSError) as exc:
                if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
                    raise
                raise ArchiveError(f"the download of {job_id} was cut short: {exc}") from exc
            finally:
                _dispose(resp)
            return safe_extract(tmp, dest, overwrite=overwrite)
        finally:
            tmp.unlink(missing_ok=True)
