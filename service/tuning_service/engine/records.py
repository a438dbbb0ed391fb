"""A job's records, read through one API: `JobManager.records(job_id, owner=...)` checks the owner once and
returns this handle, with which a page, a wait for more and the job's end are asked without asking again
(a log stream polls it for as long as the job runs). A job deleted meanwhile simply has no more records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..states import JobStatus
from ..storage.store import Store


class JobRecords:
    def __init__(self, store: Store, job_id: str, changed: Callable[[], asyncio.Event]) -> None:
        self.store = store
        self.job_id = job_id
        self._changed = changed

    async def page(
        self,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int,
        exclude_types: tuple[str, ...] = (),
        only_types: tuple[str, ...] = (),
        newest_first: bool = False,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Records oldest first after `after` (or newest first before `before`), filtered by type, and
        whether more follow."""
        return await self.store.records(
            self.job_id,
            after=after,
            before=before,
            limit=limit,
            exclude_types=exclude_types,
            only_types=only_types,
            newest_first=newest_first,
        )

    async def wait(self, after: int, timeout: float) -> None:
        """Return once a record with seq > after exists, or after `timeout` seconds. Jobs this worker follows
        wake waiters at once; records written by another worker are seen by polling every 0.1 s."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._changed()
            last = await self.store.last_seq(self.job_id)
            if last is None or last > after:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(event.wait(), timeout=min(0.1, remaining))
            except asyncio.TimeoutError:
                pass

    async def is_terminal(self) -> bool:
        """Whether the job has ended (or is gone)."""
        stamp = await self.store.job_stamp(self.job_id)
        return stamp is None or JobStatus(stamp.status).is_terminal()
