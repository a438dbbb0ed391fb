"""The scheduler: claim queued jobs (atomically, in SQLite) up to the concurrency limit and launch them.

The limit and the GPU leases are counted in the database, not in memory, so two uvicorn workers share them;
a claim is a conditional UPDATE inside BEGIN IMMEDIATE, so only one worker can ever launch a given job.
The same loop adopts jobs whose supervising worker has died.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..inference.worker import release_dead_leases
from ..settings import Settings
from ..storage.store import Store
from .recovery import adopt_orphans
from .supervisor import Supervisor

log = logging.getLogger("tuning_service.scheduler")

ADOPT_INTERVAL_SECONDS = 2.0


class Scheduler:
    def __init__(self, settings: Settings, store: Store, supervisor: Supervisor) -> None:
        self.settings = settings
        self.store = store
        self.supervisor = supervisor
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_adopt = 0.0
        supervisor.on_finished = self.wake
        self._launching: asyncio.Future[bool] | None = None
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name="tuning-scheduler")

    async def stop(self) -> None:
        # The flag, not only the cancel: Python 3.11's asyncio.wait_for swallows a cancellation that arrives
        # just as the event it waits for is set (e.g. a job submitted right before shutdown), and the loop
        # would go on forever.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        # A launch is never abandoned half-way (trainer started, pid not yet recorded): that would leave a
        # trainer nobody can find. Stopping waits for it.
        if self._launching is not None and not self._launching.done():
            await asyncio.wait([self._launching])

    def wake(self) -> None:
        """A job was queued (or a slot freed) in this worker: look now rather than at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler tick failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.schedule_interval_seconds)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def tick(self) -> int:
        """Claim and launch as many queued jobs as fit; returns how many were launched."""
        now = time.time()
        if now - self._last_adopt >= ADOPT_INTERVAL_SECONDS:
            self._last_adopt = now
            await adopt_orphans(self.store, self.supervisor)
            await release_dead_leases(self.store)
        launched = 0
        while True:
            # Claim and launch run to completion even if this task is cancelled (shutdown): a job claimed
            # but never launched, or a trainer started but not recorded, must not happen.
            self._launching = asyncio.ensure_future(self._claim_and_launch())
            if not await asyncio.shield(self._launching):
                return launched
            launched += 1

    async def _claim_and_launch(self) -> bool:
        row = await self.store.claim_next(
            supervisor_id=self.supervisor.id,
            max_concurrent=self.settings.max_concurrent_jobs,
            gpus=self.supervisor.executor.gpus_to_lease(),
            now=(now := time.time()),
            fair_share_since=now - self.settings.fair_share_window_hours * 3600,
        )
        if row is None:
            return False
        log.info("job %s claimed (gpus %s)", row["id"], row["gpu_lease"] or "none")
        await self.supervisor.launch(row)
        return True
