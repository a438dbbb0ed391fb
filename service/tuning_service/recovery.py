"""Start-up recovery: before the service accepts new work, every non-terminal job gets an owner again.

Queued jobs simply stay queued. For each running/cancelling job whose supervising worker is gone:
- its trainer still runs (pid AND process start time match: never the pid alone) -> re-attached and followed;
- it ended while the service was down -> the status its records say (completed/failed/interrupted);
- otherwise -> failed with code `service_restart` (and the last lines of its output).
A pid now held by another process means our trainer is gone: that process is never signalled or reported.
Jobs still followed by another live worker (`uvicorn --workers 2`) are left to it.
"""

from __future__ import annotations

import logging

from .store import Store
from .supervisor import Supervisor

log = logging.getLogger("tuning_service.recovery")


async def recover(store: Store, supervisor: Supervisor) -> list[str]:
    """Adopt and settle every orphaned active job; returns the ids this worker took over."""
    adopted = await supervisor.adopt_orphans(reason="service_restart")
    if adopted:
        followed = [j for j in adopted if j in supervisor.tracked]
        log.info(
            "recovery: %d job(s) adopted, %d trainer(s) re-attached, %d settled from their records",
            len(adopted),
            len(followed),
            len(adopted) - len(followed),
        )
    return adopted
