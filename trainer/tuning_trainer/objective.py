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
# The frozen copy of a job's starting adapter that DPO compares with when dpo_reference is "initial".
REFERENCE_ADAPTER = "reference"
# The fp32 logits one chunk may hold (64 MiB: 128 tokens at a 128k vocabulary). Below this the whole set is
# one chunk, computed without checkpointing: recomputing a small head costs more than its memory is worth.
CHUNK_BYTES = 64 * 2**20


class _Objective(torch.nn.Module):
    """What every objective shares: the peft model it wraps (the module accelerate prepares), its decoder
    and output head, and the hidden states at the trained positions."""

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

    @property
    def chunk(self) -> int:
        """Tokens per chunk of the head: CHUNK_BYTES of fp32 logits."""
        return max(1, CHUNK_BYTES // (4 * self.vocab_size))

    def trained_hidden(self, input_ids: Any, position_ids: Any, target_index: Any) -> Any:
        """The decoder's last hidden states at the trained positions (flat `row * width + column`)."""
        # attention_mask=None and use_cache=False: the model then derives the per-example mask from the
        # position ids (with a cache, or a 2-D mask, examples sharing a row would attend to each other).
        decoder, _ = self._parts
        hidden = decoder(
            input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False
        ).last_hidden_state
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, target_index)

    def logits(self, hidden: Any) -> Any:
        """fp32 logits of some hidden states, scaled and soft-capped as the model does."""
        logits = self._parts[1](hidden).float()
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class TokenLoss(_Objective):
    """`forward(input_ids, position_ids, target_index, target_ids)`: `target_index` are the flat positions
    (row * width + column) that carry a loss and `target_ids` their targets, both computed on the host by the
    batch layout (batching.py): gathering by index instead of a boolean mask needs no device sync."""

    def forward(
        self, input_ids: Any, position_ids: Any, target_index: Any, target_ids: Any
    ) -> tuple[Any, Any]:
        trained = self.trained_hidden(input_ids, position_ids, target_index)
        n = trained.shape[0]
        chunk = self.chunk
        head = self._parts[1]
        if trained.requires_grad and self.softcap is None and _frozen_linear(head):
            # The usual case (LoRA never trains the output head): the gradient with respect to the hidden
            # states is computed in the forward pass, chunk by chunk, so nothing is recomputed.
            return _FrozenHeadLoss.apply(trained, head.weight, target_ids, chunk, self.logit_scale)
        if n <= chunk:
            return self._chunk(trained, target_ids)
        loss = trained.new_zeros((), dtype=torch.float32)
        correct = torch.zeros((), dtype=torch.long, device=trained.device)
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
        logits = self.logits(hidden)
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


class PreferenceLoss(_Objective):
    """The preference objectives on a micro-batch of pairs: its sequences are chosen, rejected, chosen, ...
    (sequence 2k is pair k's chosen answer, 2k + 1 its rejected one) and `target_seq` says which sequence each
    target position belongs to. `forward` returns (the summed loss over the pairs, a vector of sums: chosen
    rewards, rejected rewards, pairs won, chosen-answer tokens predicted right, chosen-answer tokens).

    - dpo (Rafailov et al.; TRL's DPOTrainer, loss_type "sigmoid"): -log σ(β((π_c - ref_c) - (π_r - ref_r)))
      with π and ref the answers' summed token log-probabilities under the policy and the reference. The
      reference is the same model with the adapter disabled (peft's disable_adapter): no second copy of the
      weights, and for a job started from a checkpoint, the base, not that checkpoint. Rewards: β(π - ref).
    - simpo (Meng et al.; TRL's CPOTrainer, loss_type "simpo"): -log σ(β(avg_c - avg_r) - γ), with avg the
      mean token log-probability and γ = simpo_gamma_beta_ratio x β. No reference. Rewards: β x avg.
    - orpo (Hong et al.; TRL's ORPOTrainer): the chosen answer's negative log-likelihood (per token) minus
      λ log σ(log odds(avg_c) - log odds(avg_r)), λ = β. No reference. Rewards: β x avg. The odds-ratio term
      is TRL's exactly. The likelihood term differs on purpose: here it is the chosen answer's tokens only
      (as SFT trains, train_on_inputs off), averaged per pair; TRL's is every token of the chosen sequence,
      the prompt included, averaged over the batch's tokens (the ORPO authors' code).

    For a job started from another job's adapter (init_adapter: from_checkpoint, e.g. SFT then DPO), the
    reference is by default still the base with the adapter off (dpo_reference "base": no copy of anything,
    and the first step's rewards show how far the starting adapter already prefers the chosen answers). With
    dpo_reference "initial" it is a frozen copy of that starting adapter (REFERENCE_ADAPTER, r-sized weights
    beside the trained ones), as in the DPO paper's SFT-then-DPO and TRL's `ref_adapter_name`: the run then
    starts at log 2 with zero rewards and is held near the SFT model rather than the base.
    """

    def __init__(self, model: Any, *, method: str, beta: float, gamma_beta_ratio: float = 0.5) -> None:
        super().__init__(model)
        self.method = method
        self.beta = float(beta)
        self.gamma = float(gamma_beta_ratio) * self.beta

    def forward(
        self,
        input_ids: Any,
        position_ids: Any,
        target_index: Any,
        target_ids: Any,
        target_seq: Any,
        num_seqs: int,
    ) -> tuple[Any, Any]:
        args = (input_ids, position_ids, target_index, target_ids, target_seq, num_seqs)
        # The reference first, with no graph being built: switching adapters changes which LoRA weights
        # require gradients, and the policy's pass below then runs with the trained adapter as it was.
        ref = self.reference_logps(*args) if self.method == "dpo" else None
        logps, correct, counts = self.sequence_logps(*args)
        chosen, rejected = logps[0::2], logps[1::2]
        if ref is not None:
            reward_c = self.beta * (chosen - ref[0::2])
            reward_r = self.beta * (rejected - ref[1::2])
            losses = -F.logsigmoid(reward_c - reward_r)
        else:
            avg_c, avg_r = chosen / counts[0::2], rejected / counts[1::2]
            reward_c, reward_r = self.beta * avg_c, self.beta * avg_r
            if self.method == "simpo":
                losses = -F.logsigmoid(reward_c - reward_r - self.gamma)
            elif self.method == "orpo":
                log_odds = (avg_c - avg_r) - (_log1mexp(avg_c) - _log1mexp(avg_r))
                losses = -avg_c - self.beta * F.logsigmoid(log_odds)
            else:
                raise ValueError(f"unknown preference method {self.method!r}")
        with torch.no_grad():
            stats = torch.stack(
                [
                    reward_c.sum(),
                    reward_r.sum(),
                    (reward_c > reward_r).sum().to(reward_c.dtype),
                    correct[0::2].sum().to(reward_c.dtype),
                    counts[0::2].sum().to(reward_c.dtype),
                ]
            ).float()
        return losses.sum(), stats

    @torch.no_grad()
    def reference_logps(self, *args: Any) -> Any:
        """The reference's summed log-probabilities per sequence: the base with the adapter disabled, or the
        frozen copy of the starting adapter (REFERENCE_ADAPTER) where the model has one."""
        if REFERENCE_ADAPTER not in getattr(self.model, "peft_config", {}):
            with self.model.disable_adapter():
                return self.sequence_logps(*args)[0]
        active, training = self.model.active_adapter, self.model.training
        self.model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
        self.model.eval()  # the reference's LoRA dropout off: a reference is deterministic
        try:
            return self.sequence_logps(*args)[0]
        finally:
            self.model.train(training)
            self.model.set_adapter(active)  # trainable again, the reference frozen

    def sequence_logps(
        self,
        input_ids: Any,
        position_ids: Any,
        target_index: Any,
        target_ids: Any,
        target_seq: Any,
        num_seqs: int,
    ) -> tuple[Any, Any, Any]:
        """Per sequence: the summed log-probability of its targets, how many of them are the argmax, and how
        many there are (fp32)."""
        trained = self.trained_hidden(input_ids, position_ids, target_index)
        chunk = self.chunk
        parts = []
        for start in range(0, trained.shape[0], chunk):
            args = (trained[start : start + chunk], target_ids[start : start + chunk])
            if trained.shape[0] > chunk and trained.requires_grad:
                parts.append(checkpoint(self._token_logps, *args, use_reentrant=False))
            else:
                parts.append(self._token_logps(*args))
        token_logps = torch.cat([p[0] for p in parts])
        hits = torch.cat([p[1] for p in parts]).float()
        zeros = torch.zeros(num_seqs, dtype=torch.float32, device=trained.device)
        logps = zeros.index_add(0, target_seq, token_logps)
        correct = zeros.index_add(0, target_seq, hits)
        counts = zeros.index_add(0, target_seq, torch.ones_like(hits))
        return logps, correct, counts

    def _token_logps(self, hidden: Any, targets: Any) -> tuple[Any, Any]:
        logits = self.logits(hidden)
        logps = logits.log_softmax(dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            hits = logits.argmax(dim=-1) == targets
        return logps, hits


def _log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x < 0 (the log of 1 - p from log p), kept finite as x nears 0: log(-expm1(x))
    near 0, where 1 - exp(x) cancels, log1p(-exp(x)) further out (Mächler's rule, cut at -log 2)."""
    x = x.clamp(max=-1e-6)
    return torch.where(x < -0.6931, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def summarise(aux: list[float], units: float, *, preference: bool) -> dict[str, float]:
    """A window's metrics from the sums an objective returned (TokenLoss: hits; PreferenceLoss: its vector)
    and the units its loss is a mean over (tokens, or pairs)."""
    n = max(1.0, units)
    if not preference:
        return {"token_accuracy": round(aux[0] / n, 6)}
    chosen, rejected, won, hits, tokens = aux
    return {
        "token_accuracy": round(hits / max(1.0, tokens), 6),
        "rewards_chosen": chosen / n,
        "rewards_rejected": rejected / n,
        "rewards_margin": (chosen - rejected) / n,
        "rewards_accuracy": round(won / n, 6),
    }


def batch_tensors(batch: Any, device: Any, *, pairs: bool = False) -> dict[str, Any]:
    """A laid-out micro-batch (batching.MicroBatch) as the tensors TokenLoss takes (with `pairs`, those
    PreferenceLoss takes), on `device`. On CUDA the host tensors are pinned and copied without blocking, so
    the copy overlaps the previous step's kernels."""
    ids = torch.tensor(batch.input_ids, dtype=torch.long)
    pos = torch.tensor(batch.position_ids, dtype=torch.long)
    targets = torch.tensor(batch.targets, dtype=torch.long).reshape(-1)
    index = (targets != IGNORE_INDEX).nonzero().squeeze(-1)  # on the host: no device sync
    out = {"input_ids": ids, "position_ids": pos, "target_index": index, "target_ids": targets[index]}
    if pairs:
        out["target_seq"] = torch.tensor(batch.owners, dtype=torch.long).reshape(-1)[index]
    if device.type == "cuda":
        moved = {k: v.pin_memory().to(device, non_blocking=True) for k, v in out.items()}
    else:
        moved = {k: v.to(device) for k, v in out.items()}
    if pairs:
        moved["num_seqs"] = max(max(row) for row in batch.owners) + 1
    return moved
