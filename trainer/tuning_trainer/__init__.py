"""The trainer: real LoRA/QLoRA fine-tuning under `accelerate launch` (see docs/trainer-protocol.md).

Importing this package is cheap: the ML stack is imported only by the modules that train.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

# On CPUs with AVX512-BF16, importing bitsandbytes logs "Failed to load CPU gemm_4bit_forward from
# kernels-community" (it tries an optional kernel from a hub; the built-in path is used instead). Every entry
# point imports this package before peft or bitsandbytes, so its warnings are silenced here, once, before
# they can reach a job's log or a setup's output; its errors still show.
# Offline (HF_HUB_OFFLINE=1, as jobs run), the `kernels` package behind it warns once per process that it
# "skips the publisher trust check for kernels-community/..." (transformers 5.25 requires `kernels`).
for _name in ("bitsandbytes", "kernels"):
    logging.getLogger(_name).setLevel(logging.ERROR)
