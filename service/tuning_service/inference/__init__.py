"""Trying a model: the OpenAI-compatible inference surface (routes.py) over an inference worker process
(worker.py) that loads base models and the fine-tunes' adapters; catalogue.py says which model ids a key
may call, shaping.py turns the worker's events into OpenAI's objects."""

from __future__ import annotations

from ..settings import Settings
from ..storage.store import Store
from .catalogue import Catalogue
from .worker import InferenceWorker


class Inference:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.worker = InferenceWorker(settings, store)
        self.catalogue = Catalogue(settings, store)

    async def stop(self) -> None:
        await self.worker.stop()
