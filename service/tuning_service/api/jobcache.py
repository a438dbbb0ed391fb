"""What `tunings.get` and `tunings.list` keep between requests: the encoded JSON of finished jobs, and whole
list pages, each valid for as long as the database says nothing it depends on changed.

Per process (each uvicorn worker has its own); bounded in bytes. The database's `PRAGMA data_version`
(db.Database.data_version, read by auth.authenticate before anything else of the request) moves whenever
any connection, of this process or another, commits: an entry remembered at a version is still exact while
the version is the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..states import JobStatus

if TYPE_CHECKING:
    from ..engine.facade import JobManager

# The most bytes of encoded jobs kept (about 1.3 KB a job: some 6,000 jobs).
CACHE_MAX_BYTES = 8 * 1024 * 1024
_TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal())


class EncodedJobs:
    """The encoded public JSON of terminal jobs, valid for their (status, finished_at) (`STAMP_COLUMNS`).

    A finished job never changes until it is resumed (a new status, and a new finished_at when it ends
    again) or deleted (its row is gone), so its JSON can be reused as long as its stamp is the same. A list
    page of 100 jobs was 100 rows of JSON decoded, re-shaped and encoded again (docs/benchmarks.md, B2); with
    this it is one query answered from an index (jobs_owner_page) and a join. Per process, bounded by
    CACHE_MAX_BYTES (the oldest entries go first); running and queued jobs are always read afresh.

    An entry also remembers the database's `data_version` (db.Database.data_version) at which its stamp was
    last read: while nothing at all has been committed since, by this process or any other, the stamp cannot
    have changed and `tunings.get` skips reading it (`current`). The version is the one the request's
    authentication read (auth.authenticate), before the stamp, so a commit in between only makes the entry
    look older than it is.
    """

    def __init__(self, max_bytes: int = CACHE_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        # job id -> [status, finished_at, body, owner, data_version the stamp was read at]
        self._items: dict[str, list[Any]] = {}

    def get(self, job_id: str, status: str, finished_at: float | None) -> bytes | None:
        item = self._items.get(job_id)
        if item is not None and item[0] == status and item[1] == finished_at:
            return item[2]  # type: ignore[no-any-return]
        return None

    def current(self, job_id: str, owner: str, version: int | None) -> bytes | None:
        """The job's JSON if its stamp was read at `version` (nothing committed since) for this owner."""
        item = self._items.get(job_id)
        if item is not None and version is not None and item[4] == version and item[3] == owner:
            return item[2]  # type: ignore[no-any-return]
        return None

    def confirm(self, job_id: str, version: int | None) -> None:
        """The job's stamp, read at `version`, matched its entry."""
        item = self._items.get(job_id)
        if item is not None:
            item[4] = version

    def put(
        self,
        job_id: str,
        status: str,
        finished_at: float | None,
        job: dict[str, Any],
        body: bytes,
        *,
        owner: str,
        version: int | None = None,
    ) -> None:
        """Keep `body` (the encoding of `job`, read right after the stamp) if the job is terminal and was read
        in the stamp's state: a job that changed in between is served but not kept."""
        if status not in _TERMINAL or job.get("status") != status or len(body) > self.max_bytes // 16:
            return
        old = self._items.pop(job_id, None)
        if old is not None:
            self.size -= len(old[2])
        self._items[job_id] = [status, finished_at, body, owner, version]
        self.size += len(body)
        while self.size > self.max_bytes:
            oldest = next(iter(self._items))
            self.size -= len(self._items.pop(oldest)[2])


# The most bytes of list pages kept (a page of 100 jobs is about 130 KB).
PAGES_MAX_BYTES = 4 * 1024 * 1024


class EncodedPages:
    """Whole `tunings.list` responses by (owner, status, after, limit), each with the data_version it was
    built at: a client (the dashboard, a CLI watch loop) polling an unchanged list gets the same bytes
    without a query. A page depends on nothing but the database (no clock: jobview.public_job), so an
    unchanged version means an unchanged page. Any commit (a running job's every metrics record, too) makes
    every entry stale; pages are then built from the stamps and EncodedJobs as before."""

    def __init__(self, max_bytes: int = PAGES_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: dict[tuple[Any, ...], tuple[int, bytes]] = {}

    def get(self, key: tuple[Any, ...], version: int | None) -> bytes | None:
        item = self._items.get(key)
        if item is not None and version is not None and item[0] == version:
            return item[1]
        return None

    def put(self, key: tuple[Any, ...], version: int | None, body: bytes) -> None:
        if version is None or len(body) > self.max_bytes // 4:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= len(old[1])
        self._items[key] = (version, body)
        self.size += len(body)
        while self.size > self.max_bytes:
            oldest = next(iter(self._items))
            self.size -= len(self._items.pop(oldest)[1])


class JobCaches:
    """Both caches of one lifespan (a new manager means a new database: routes_jobs makes new ones)."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager
        self.jobs = EncodedJobs()
        self.pages = EncodedPages()
