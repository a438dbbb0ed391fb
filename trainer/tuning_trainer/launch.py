"""How to launch the trainer on a CPU-only machine (standard library only: the service imports this).

The flags make `accelerate launch` run on CPU without an `accelerate config` file and without its "defaults"
warning; a bare `accelerate launch` would also drop torch to one thread.
"""

from __future__ import annotations


def cpu_launch_flags(threads: int) -> list[str]:
    return [
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        str(max(1, threads)),
    ]
