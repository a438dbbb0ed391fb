"""The dry run (`"dry_run": true` on create): what a job would do, with no job made.

The service never imports the ML stack, so the trainer's own planning runs in a subprocess
(`python -m tuning_trainer.estimate`), shown the devices and process count the job would get. Its numbers
are therefore the real run's (the recipe's setup calls the same runplan.plan_run). The seconds come from
this service's history: the input tokens to process at the median speed of its latest succeeded jobs of the
same model shape, method, device and process count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import statistics
import sys
from typing import Any

from ..errors import APIError
from ..schema.jobs import CreateTuningRequest
from ..settings import Settings
from ..storage.store import Store
from .supervisor import trainer_config

log = logging.getLogger("tuning_service.estimate")

# Tokenising a large file with a slow tokenizer can take a while; past this the answer is a 504.
TIMEOUT_SECONDS = 300.0
# The planner, as a command (tests swap in others).
COMMAND = (sys.executable, "-m", "tuning_trainer.estimate")
# Each estimate is a process that imports transformers and tokenises a whole file: a few at a time.
CONCURRENT = 2


class Estimator:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._slots = asyncio.Semaphore(CONCURRENT)

    def world(self, request: CreateTuningRequest) -> tuple[int, list[str]]:
        """(processes, GPUs) the job would run on: as many processes as GPUs it asks for, or on a service
        without GPUs the CPU process count (launch_command's rule)."""
        if self.settings.gpus:
            gpus = list(self.settings.gpus[: request.num_gpus])
            return len(gpus), gpus
        return self.settings.cpu_processes, []

    async def estimate(
        self, request: CreateTuningRequest, environment: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The tuning.estimate object for an admitted create request. `environment`: the caller's
        credentials its tokenizer may need (a gated model's HF_TOKEN)."""
        normal = request.normalised()
        row = {"request": normal, "hyperparameters": normal["hyperparameters"], "resume_from": None}
        # The config names an output folder, as the trainer's must; the estimate never writes there.
        config = trainer_config(self.settings, row, self.settings.data_dir / "estimates")
        world, gpus = self.world(request)
        out = await self._run({"config": config, "num_processes": world}, gpus, environment or {})
        seconds, based_on = await self._seconds(out, normal["method"], normal["adapter"], world)
        return {
            "object": "tuning.estimate",
            "model": request.model,
            "method": normal["method"],
            "adapter": normal["adapter"],
            **out,
            "estimated_seconds": seconds,
            "based_on_jobs": based_on,
        }

    async def _seconds(
        self, out: dict[str, Any], method: str, adapter: str, world: int
    ) -> tuple[float | None, int]:
        runs = await self.store.past_runs(
            method=method, adapter=adapter, device=out["device"], num_processes=world
        )
        speeds = [tokens / secs for shape, tokens, secs in runs if shape == out["shape"] and secs > 0]
        if not speeds:
            return None, 0
        return round(out["tokens_to_process"] / statistics.median(speeds), 1), len(speeds)

    async def _run(
        self, request: dict[str, Any], gpus: list[str], environment: dict[str, str]
    ) -> dict[str, Any]:
        env = {**os.environ, **environment}
        env["TUNING_MODELS_DIR"] = str(self.settings.models_dir)
        # The GPUs the job would be leased, or none: the estimate sees the device the trainer would.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        async with self._slots:
            proc = await asyncio.create_subprocess_exec(
                *COMMAND,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
            try:
                stdout, stderr = await asyncio.wait_for(
                    proc.communicate(json.dumps(request).encode()), TIMEOUT_SECONDS
                )
            except BaseException as exc:  # a timeout, or the request cancelled: never leave it running
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await proc.wait()
                if not isinstance(exc, asyncio.TimeoutError):
                    raise
                raise APIError(
                    504,
                    "estimate_timeout",
                    f"the dry run did not finish within {TIMEOUT_SECONDS:g} s (tokenising the data with "
                    "the model's tokenizer); try a smaller file, or create the job",
                ) from None
        try:
            answer = json.loads(stdout.decode("utf-8").strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
            log.error("dry run exited %s without an answer: %s", proc.returncode, " | ".join(tail))
            raise APIError(
                500,
                "estimate_failed",
                f"the dry run exited {proc.returncode} without an answer: {' | '.join(tail)[-500:]}",
            ) from None
        if "error" in answer:
            raise problem(answer["error"])
        return dict(answer["estimate"])


def problem(err: dict[str, Any]) -> APIError:
    """The trainer's failure as create would report it (a data problem with its file and line, a missing
    model, a hyperparameter this device cannot honour)."""
    code, message = str(err.get("code")), str(err.get("message"))
    if code in ("model_not_found", "model_unavailable"):
        return APIError(404, code, message, param="model")
    if code == "invalid_data":
        field = str(err.get("file") or "training_file")
        shown = message if message.startswith(field) else f"{field}: {message}"
        return APIError(
            422, err.get("data_code") or code, shown, param=field, extra={"line": err.get("line")}
        )
    if code == "invalid_config":
        return APIError(422, "invalid_hyperparameter", message, param=err.get("param"))
    return APIError(500, "estimate_failed", f"the dry run failed: [{code}] {message}")
