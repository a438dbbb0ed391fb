"""Which examples train together, and how a micro-batch's examples are laid out in tensors. Pure Python (no
torch): the dry run plans with it too, so its step counts and padding efficiency are the trainer's own.

The plan. Without packing a micro-batch is `batch_size` examples in the epoch's shuffled order (the seed
spec's meaning of batch_size). With packing the examples are first grouped, once, into bins of at most
`max_tokens_per_batch` tokens by best-fit decreasing; a bin is a micro-batch, and the epochs shuffle the bins.
No example is ever split: a bin holds whole examples, and so does each row of a laid-out micro-batch.

The layout. Examples never attend to each other, however they share a row: every example's position ids
start again at 0, and the model derives the document mask from them (transformers' masking_utils for
sdpa, eager and flex attention; the varlen kernel for FlashAttention-2; both need `attention_mask=None` and no
KV cache). `varlen` puts the whole micro-batch in one row without any padding (FlashAttention-2, flex
attention: their cost follows the examples' own lengths); `rows` fills rows as wide as the longest example
by best fit and pads only the last gap of each row (sdpa and eager, whose cost follows the row width
squared). Padding forms its own document (positions 0..k-1) and predicts nothing.

The targets. A position's target is the next token of the same example (-100: none), computed here rather
than by shifting the row: a shift would make an example's last token predict the next example's first.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

IGNORE_INDEX = -100
Layout = Literal["varlen", "rows"]
Example = dict[str, list[int]]  # input_ids, labels (IGNORE_INDEX where there is no loss)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """The indices of `lengths` grouped into bins whose lengths sum to at most `capacity`: longest first, each
    into the fullest bin it still fits (a new one when none does; an item longer than `capacity` has a bin
    to itself). Deterministic: ties go to the earlier bin."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin), sorted: the first with room >= n is the best fit
    for i in order:
        n = lengths[i]
        at = bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
        else:
            room, b = capacity, len(bins)
            bins.append([i])
        if room - n > 0:
            insort(free, (room - n, b))
    return bins


@dataclass(frozen=True)
class Plan:
    """The micro-batches of a run: `units` are the groups of example indices that always train together (one
    example each, or a packed bin); a micro-batch is `units_per_batch` of them."""

    units: list[list[int]]
    units_per_batch: int
    world: int = 1

    @property
    def per_rank(self) -> int:
        """Units each process takes per epoch (the tail that does not divide evenly sits the epoch out, so
        that every process takes the same number of steps)."""
        return len(self.units) // self.world

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.units_per_batch)

    def epoch(self, epoch: int, seed: int) -> list[list[list[int]]]:
        """This epoch's micro-batches for every process, `[rank][batch] -> example indices`, in a shuffled
        order that depends only on the seed and the epoch (every process computes all of them, and knows
        every rank's token counts without communicating)."""
        order = list(range(len(self.units)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out = []
        for rank in range(self.world):
            mine = order[rank :: self.world][: self.per_rank]
            batches = [mine[i : i + self.units_per_batch] for i in range(0, len(mine), self.units_per_batch)]
            out.append([[ex for u in batch for ex in self.units[u]] for batch in batches])
        return out


def make_plan(
    lengths: Sequence[int],
    *,
    packing: bool,
    batch_size: int,
    max_tokens_per_batch: int,
    world: int = 1,
    group: int = 1,
) -> Plan:
    """`group` consecutive examples always train together, in their order (2: a preference pair's chosen
    and rejected sequences); `batch_size` counts groups."""
    units = [list(range(i, min(i + group, len(lengths)))) for i in range(0, len(lengths), group)]
    if packing:
        sizes = [sum(lengths[i] for i in unit) for unit in units]
        bins = best_fit_decreasing(sizes, max_tokens_per_batch)
        return Plan([[i for u in b for i in units[u]] for b in bins], 1, world)
    return Plan(units, batch_size, world)


@dataclass(frozen=True)
class MicroBatch:
    """A laid-out micro-batch as lists (the recipe makes tensors of them): rows of equal width."""

    input_ids: list[list[int]]
    position_ids: list[list[int]]
    targets: list[list[int]]
    tokens: int
    """Real tokens (the examples' own)"""
    trained: int
    """Positions with a target: the tokens the loss is averaged over"""
    owners: list[list[int]]
    """Per position, the index (in the micro-batch's list) of the example it belongs to; -1 for padding"""

    @property
    def slots(self) -> int:
        """Token positions processed, padding included."""
        return len(self.input_ids) * (len(self.input_ids[0]) if self.input_ids else 0)


def _targets(labels: list[int]) -> list[int]:
    return [*labels[1:], IGNORE_INDEX]


def lay_out(examples: Sequence[Example], layout: Layout, pad_token_id: int) -> MicroBatch:
    """Lay a micro-batch's examples out in rows (see the module's docstring)."""
    lengths = [len(ex["input_ids"]) for ex in examples]
    rows = [list(range(len(examples)))] if layout == "varlen" else best_fit_decreasing(lengths, max(lengths))
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids: list[list[int]] = []
    pos: list[list[int]] = []
    tgt: list[list[int]] = []
    own: list[list[int]] = []
    for row in rows:
        r_ids: list[int] = []
        r_pos: list[int] = []
        r_tgt: list[int] = []
        r_own: list[int] = []
        for i in row:
            ex = examples[i]
            r_ids += ex["input_ids"]
            r_pos += range(len(ex["input_ids"]))
            r_tgt += _targets(ex["labels"])
            r_own += [i] * len(ex["input_ids"])
        gap = width - len(r_ids)
        ids.append(r_ids + [pad_token_id] * gap)
        pos.append(r_pos + list(range(gap)))
        tgt.append(r_tgt + [IGNORE_INDEX] * gap)
        own.append(r_own + [-1] * gap)
    trained = sum(t != IGNORE_INDEX for row in tgt for t in row)
    return MicroBatch(ids, pos, tgt, tokens=sum(lengths), trained=trained, owners=own)


def trained_tokens(example: Example) -> int:
    """The positions of an example that carry a loss (its first token is never a target)."""
    return sum(t != IGNORE_INDEX for t in example["labels"][1:])


@dataclass(frozen=True)
class Efficiency:
    padding_efficiency: float
    """Real tokens / token positions processed, over one epoch of every process"""
    micro_batch_tokens: int
    """Mean token positions per micro-batch (padding included)"""


def efficiency(plan: Plan, examples: Sequence[Example], layout: Layout, seed: int) -> Efficiency:
    """What the first epoch's micro-batches cost in token positions (the `started` record and the dry run
    report it). Counts only: no row is built."""
    lengths = [len(ex["input_ids"]) for ex in examples]
    tokens = slots = batches = 0
    for rank_batches in plan.epoch(0, seed):
        for batch in rank_batches:
            ls = [lengths[i] for i in batch]
            tokens += sum(ls)
            if layout == "varlen":
                slots += sum(ls)
            else:
                rows = best_fit_decreasing(ls, max(ls))
                slots += len(rows) * max(sum(ls[i] for i in row) for row in rows)
            batches += 1
    return Efficiency(round(tokens / slots, 4) if slots else 1.0, round(slots / batches) if batches else 0)
