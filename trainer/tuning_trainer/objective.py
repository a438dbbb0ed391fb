"""The model and its loss in one module, the one `accelerate` wraps (so DDP sees every forward).

The forward returns the summed cross-entropy over the trained tokens and how many of them the model predicted
right. The full logits are never held: the decoder's hidden states are gathered at the trained positions only
(prompts cost no output-head FLOPs), and the output head plus the cross-entropy run in chunks, so each chunk's
fp32 logits live only while that chunk is computed. A frozen head (the LoRA case) gets its hidden-state
gradient in the forward pass (_FrozenHeadLoss); any other head recomputes each chunk in the backward pass
under activation checkpointing. At Llama-3's 128k vocabulary that is the difference between 4 * tokens *
128k bytes held through the backward (4.2 GB at 8k tokens) and one chunk's (CHUNK_BYTES).

Imports torch: only the trainer's training process loads this module.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# The fp32 logits one chunk may hold (64 MiB: 128 tokens at a 128k vocabulary). Below this the whole set is
# one chunk, computed without checkpointing: recomputing a small head costs more than its memory is worth.
CHUNK_BYTES = 64 * 2**20


class TokenLoss(torch.nn.Module):
    """`forward(input_ids, position_ids, target_index, target_ids)`: `target_index` are the flat positions
    (row * width + column) that carry a loss and `target_ids` their targets, both computed on the host by the
    batch layout (batching.py): gathering by index instead of a boolean mask needs no device sync."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model  # the peft model: what is saved, as before
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # FSDP's transformer auto-wrap policy looks for the decoder layer classes on the module it wraps.
        self._no_split_modules = getattr(base, "_no_split_modules", None)
        # Parts of self.model, kept in a tuple so that they are not registered (and listed) a second time.
        self._parts = (base.get_decoder(), base.get_output_embeddings())
        config = base.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.logit_scale = getattr(config, "logit_scale", None)
        self.vocab_size = int(config.vocab_size)

    def forward(
        self, input_ids: Any, position_ids: Any, target_index: Any, target_ids: Any
    ) -> tuple[Any, Any]:
        # attention_mask=None and use_cache=False: the model then derives the per-example mask from the
        # position ids (with a cache, or a 2-D mask, examples sharing a row would attend to each other).
        decoder, _ = self._parts
        hidden = decoder(
            input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False
        ).last_hidden_state
        trained = hidden.reshape(-1, hidden.shape[-1]).index_select(0, target_index)
        n = trained.shape[0]
        chunk = max(1, CHUNK_BYTES // (4 * self.vocab_size))
        head = self._parts[1]
        if trained.requires_grad and self.softcap is None and _frozen_linear(head):
            # The usual case (LoRA never trains the output head): the gradient with respect to the hidden
            # states is computed in the forward pass, chunk by chunk, so nothing is recomputed.
            return _FrozenHeadLoss.apply(trained, head.weight, target_ids, chunk, self.logit_scale)
        if n <= chunk:
            return self._chunk(trained, target_ids)
        loss = hidden.new_zeros((), dtype=torch.float32)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for start in range(0, n, chunk):
            part_loss, part_correct = checkpoint(
                self._chunk,
                trained[start : start + chunk],
                target_ids[start : start + chunk],
                use_reentrant=False,
            )
            loss = loss + part_loss
            correct = correct + part_correct
        return loss, correct

    def _chunk(self, hidden: Any, targets: Any) -> tuple[Any, Any]:
        logits = self._parts[1](hidden).float()
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        loss = F.cross_entropy(logits, targets, reduction="sum")
        with torch.no_grad():
            correct = (logits.argmax(dim=-1) == targets).sum()
        return loss, correct


def _frozen_linear(module: Any) -> bool:
    """A plain linear layer (not quantized, not LoRA-wrapped) without a bias, its weight frozen."""
    return type(module) is torch.nn.Linear and module.bias is None and not module.weight.requires_grad


class _FrozenHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` (scaled by `scale` where the model scales its logits)
    against `targets`, and the number of argmax hits, for a frozen output head: Liger's fused linear
    cross-entropy without the weight gradient.

    Each chunk's fp32 logits exist only while the chunk is computed. The forward pass also computes the
    gradient with respect to `hidden`, (softmax - onehot) @ weight, which is all the backward pass needs:
    two matrix products per chunk, as for HF's head (logits, then the hidden states' gradient), and one
    fewer than recomputing each checkpointed chunk in the backward. The gradient kept is tokens x hidden.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: Any, weight: Any, targets: Any, chunk: int, scale: float | None
    ) -> tuple[Any, Any]:
        grad = torch.empty_like(hidden)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            part, target = hidden[start : start + chunk], targets[start : start + chunk]
            logits = (part @ weight.t()).float()
            if scale is not None:
                logits.mul_(scale)
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, target.unsqueeze(1)).squeeze(1)).sum()
            correct += (logits.argmax(dim=-1) == target).sum()
            probs = logits.sub_(lse.unsqueeze(1)).exp_()  # in place: one chunk of fp32 logits at a time
            probs[torch.arange(target.shape[0], device=target.device), target] -= 1.0
            if scale is not None:
                probs.mul_(scale)
            grad[start : start + chunk] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: Any, _grad_correct: Any) -> tuple[Any, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None, None


def batch_tensors(batch: Any, device: Any) -> dict[str, Any]:
    """A laid-out micro-batch (batching.MicroBatch) as the tensors TokenLoss takes, on `device`. On CUDA the
    host tensors are pinned and copied without blocking, so the copy overlaps the previous step's kernels."""
    ids = torch.tensor(batch.input_ids, dtype=torch.long)
    pos = torch.tensor(batch.position_ids, dtype=torch.long)
    targets = torch.tensor(batch.targets, dtype=torch.long).reshape(-1)
    index = (targets != IGNORE_INDEX).nonzero().squeeze(-1)  # on the host: no device sync
    out = {"input_ids": ids, "position_ids": pos, "target_index": index, "target_ids": targets[index]}
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in out.items()}
    return {k: v.to(device) for k, v in out.items()}
