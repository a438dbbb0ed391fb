"""The trainer: real LoRA/QLoRA fine-tuning under `accelerate launch` (see docs/trainer-protocol.md).

Importing this package is cheap: the ML stack is imported only by the modules that train.
"""

from __future__ import annotations

__version__ = "0.1.0"
