"""What runs the trainers (base.py): process groups on this machine (local.py) or Ray Jobs (ray.py)."""

from __future__ import annotations

from ...settings import Settings
from ...storage.store import Store
from .base import Executor


def make_executor(settings: Settings, store: Store) -> Executor:
    """The executor that `TUNING_EXECUTOR` names (Ray's client is imported only when it is chosen)."""
    if settings.executor == "ray":
        from .ray import RayExecutor

        return RayExecutor(settings, store)
    from .local import LocalExecutor

    return LocalExecutor(settings)
