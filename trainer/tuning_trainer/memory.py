"""Peak training memory per device, estimated from the model's config.json alone (pure Python: the dry run
and `gradient_checkpointing: "auto"` both use it, before any weight is loaded).

    weights      frozen base: linear layers at 0.5 byte/param + double-quantised absmax (qlora) or the compute
                 dtype (lora); embeddings, output head and norms in the compute dtype (never upcast)
    adapter      LoRA weights in fp32 with their gradients and AdamW's two moments: 16 bytes/param
    activations  what the backward keeps per token and layer (the inputs of the norms, of every projection and
                 LoRA branch, the attention's q/k/v/output, the MLP's gate/up/product), in the compute dtype;
                 with gradient checkpointing only each layer's input, plus one layer's worth recomputed
    attention    eager attention keeps its scores per head (rows x width^2); sdpa with a document mask keeps
                 the mask; flash/flex keep neither
    loss         one chunk of fp32 logits and its gradient (objective.py), or the whole set when it is small
    overhead     the CUDA context (on CPU: the process's own libraries), a constant, then 10% allocator slack

It is an estimate, not a measurement (the `started` record carries it as model_setup.estimated_peak_memory_mb
beside the measured peak_memory_mb of the metrics records); the `fits` verdict keeps a 5% margin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

GIB = 2**30
CUDA_OVERHEAD = int(0.75 * GIB)
# On CPU the peak is the process's RSS, which also holds Python, torch, transformers and peft themselves:
# measured ~0.45 GB here (docs/benchmarks.md, the trainer bench's peak RSS against this estimate).
CPU_PROCESS_OVERHEAD = int(0.5 * GIB)
CHUNK_BYTES = 64 * 2**20  # objective.CHUNK_BYTES (a test keeps them equal)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Shape:
        """A decoder's shape from its config.json (Llama's names; most decoders share them)."""
        c = dict(config.get("text_config") or config)
        hidden = int(c["hidden_size"])
        heads = int(c["num_attention_heads"])
        return cls(
            hidden=hidden,
            intermediate=int(c.get("intermediate_size") or 4 * hidden),
            layers=int(c["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or hidden // heads),
            vocab=int(c["vocab_size"]),
            tied=bool(c.get("tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one layer."""
        h, i, q, kv = (
            self.hidden,
            self.intermediate,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params

    def lora_params(self, r: int, targets: str | list[str]) -> int:
        names = PROJECTIONS if targets == "all-linear" else [t for t in targets if t in PROJECTIONS]
        shapes = self.linear_shapes()
        return self.layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names)


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    adapter_bytes: int
    activation_bytes: int
    attention_bytes: int
    loss_bytes: int
    overhead_bytes: int
    peak_bytes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def estimate_memory(
    shape: Shape,
    *,
    adapter_type: str,
    lora_r: int,
    lora_target_modules: str | list[str],
    dtype_bytes: int,
    micro_batch_tokens: int,
    rows: int,
    width: int,
    trained_tokens: int,
    attn_implementation: str,
    gradient_checkpointing: bool,
    on_gpu: bool = True,
) -> MemoryEstimate:
    """Peak bytes for one micro-batch of `micro_batch_tokens` positions in `rows` rows of `width` (the largest
    micro-batch of the run), `trained_tokens` of them with a loss."""
    h, i = shape.hidden, shape.intermediate
    kv = shape.kv_heads * shape.head_dim
    if adapter_type == "qlora":
        # nf4: half a byte per weight; the absmax of each 64-block as 8 bits, plus their fp32 absmax per 256.
        linear = shape.linear_params * (0.5 + 1 / 64 + 4 / (64 * 256))
    else:
        linear = shape.linear_params * dtype_bytes
    weights = int(linear + (shape.embedding_params + shape.norm_params) * dtype_bytes)
    adapter = shape.lora_params(lora_r, lora_target_modules) * 16
    # Kept per token and layer without checkpointing: norm inputs and outputs (4h), q (h), k and v (2kv),
    # attention output (h), MLP gate, up, activation and product (4i), and the LoRA inputs share these.
    per_token_layer = (6 * h + 2 * kv + 4 * i) * dtype_bytes
    tokens = micro_batch_tokens
    if gradient_checkpointing:
        activations = shape.layers * tokens * h * dtype_bytes + tokens * per_token_layer
    else:
        activations = shape.layers * tokens * per_token_layer
    if attn_implementation == "eager":
        attention = shape.layers * rows * shape.heads * width * width * dtype_bytes * 2
        if gradient_checkpointing:
            attention //= shape.layers
    elif attn_implementation == "sdpa":
        attention = rows * width * width * max(1, dtype_bytes)  # the document mask, built once per forward
    else:
        attention = 0
    chunk = max(1, CHUNK_BYTES // (4 * shape.vocab))
    loss = 3 * 4 * shape.vocab * min(trained_tokens, chunk) + trained_tokens * h * dtype_bytes
    subtotal = weights + adapter + activations + attention + loss
    overhead = (CUDA_OVERHEAD if on_gpu else CPU_PROCESS_OVERHEAD) + subtotal // 10
    return MemoryEstimate(
        weights_bytes=weights,
        adapter_bytes=adapter,
        activation_bytes=activations,
        attention_bytes=attention,
        loss_bytes=loss,
        overhead_bytes=overhead,
        peak_bytes=subtotal + overhead,
    )


def fits(estimate: MemoryEstimate, device_bytes: int, margin: float = 0.95) -> bool:
    return estimate.peak_bytes <= device_bytes * margin


def needs_checkpointing(without: MemoryEstimate, device_bytes: int) -> bool:
    """`gradient_checkpointing: "auto"`: on only where the run would not fit in 90% of the device
    without it."""
    return without.peak_bytes > 0.9 * device_bytes


def gib(n: int | float) -> float:
    return round(n / GIB, 2) if math.isfinite(n) else n
