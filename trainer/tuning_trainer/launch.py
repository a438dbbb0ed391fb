"""How to launch the trainer: `accelerate launch` flags and environment for a job on N GPUs, or on CPU
(standard library only: the service imports this).

Every launch names all of accelerate's choices, so that no `accelerate config` file is needed and accelerate
prints no "defaults" warning (a bare `accelerate launch` would also drop torch to one thread on CPU).

- CPU, one process: `--cpu` (which always means one process, whatever --num_processes says).
- CPU, several processes (gloo; how CI proves the distributed path without GPUs): `--multi_gpu` with
  ACCELERATE_USE_CPU=true. Without that variable, --multi_gpu on a machine with no GPU starts independent
  single-process trainings that write the same folder (the trainer refuses to run that way).
- GPUs: one process per GPU; DDP (`--multi_gpu`) or FSDP (`--use_fsdp`, full sharding of each decoder layer,
  the weights loaded once on the CPU of rank 0 and sent to the others).
"""

from __future__ import annotations

COMMON = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
FSDP = [
    "--use_fsdp",
    "--fsdp_sharding_strategy",
    "FULL_SHARD",
    "--fsdp_auto_wrap_policy",
    "TRANSFORMER_BASED_WRAP",
    "--fsdp_use_orig_params",
    "true",  # LoRA: frozen and trainable parameters share the wrapped layers
    "--fsdp_cpu_ram_efficient_loading",
    "true",
    "--fsdp_sync_module_states",
    "true",
    "--fsdp_state_dict_type",
    "SHARDED_STATE_DICT",
]


def cpu_launch_flags(threads: int) -> list[str]:
    return ["--cpu", "--num_processes", "1", *COMMON, "--num_cpu_threads_per_process", str(max(1, threads))]


def launch_flags(
    *, gpus: int, distributed: str = "ddp", cpu_processes: int = 1, threads: int = 1
) -> tuple[list[str], dict[str, str]]:
    """(`accelerate launch` flags, environment to add) for a job on `gpus` GPUs; 0: on CPU, as
    `cpu_processes` processes sharing `threads` threads."""
    if gpus <= 0:
        if cpu_processes <= 1:
            return cpu_launch_flags(threads), {}
        per_process = str(max(1, threads // cpu_processes))
        flags = ["--multi_gpu", "--num_processes", str(cpu_processes), *COMMON]
        return [*flags, "--num_cpu_threads_per_process", per_process], {"ACCELERATE_USE_CPU": "true"}
    flags = ["--num_processes", str(gpus), *COMMON]
    if distributed == "fsdp":
        flags += FSDP
    elif gpus > 1:
        flags.append("--multi_gpu")
    return flags, {}
