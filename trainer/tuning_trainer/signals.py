"""SIGTERM/SIGINT handling: the first signal asks the training loop to stop after the current step.

The loop then saves a checkpoint, writes `interrupted` and exits 4. Installed before any heavy import, so a
signal that arrives while the model loads is honoured as soon as the loop starts (nothing is lost).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType


class StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            # os.write, not print: a handler that writes to a buffered stream the interrupted code was
            # writing to raises "reentrant call".
            name = signal.Signals(signum).name
            message = f"[tuning_trainer] {name} received: stopping after the current step\n"
            with contextlib.suppress(OSError):
                os.write(sys.stderr.fileno(), message.encode())

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self
