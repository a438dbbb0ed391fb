"""Importing the trainer package first keeps the ML stack's import noise out of jobs' logs and set-up."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_the_ml_stack_after_the_trainer_prints_nothing() -> None:
    # bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" on CPUs with
    # AVX512-BF16 (tuning_trainer/__init__.py); on other machines this passes trivially.
    # Offline, as jobs run, `kernels` (behind bitsandbytes) also warns about skipping a "publisher trust
    # check" for kernels-community.
    proc = subprocess.run(
        [sys.executable, "-c", "import tuning_trainer, peft, bitsandbytes"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "gemm_4bit_forward" not in proc.stderr + proc.stdout
    assert "kernels-community" not in proc.stderr + proc.stdout
