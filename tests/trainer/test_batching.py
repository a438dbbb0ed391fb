"""batching.py: best-fit packing, the epochs' micro-batches, the row layouts and their targets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuning_trainer.batching import (
    IGNORE_INDEX,
    best_fit_decreasing,
    efficiency,
    lay_out,
    make_plan,
    trained_tokens,
)


@given(st.lists(st.integers(1, 64), min_size=1, max_size=200), st.integers(64, 200))
@settings(max_examples=200, deadline=None)
def test_best_fit_places_every_item_once_within_capacity(lengths: list[int], capacity: int) -> None:
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    # Best fit decreasing never leaves two bins that could have been one.
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    assert len(loads) < 2 or loads[0] + loads[1] > capacity
    assert bins == best_fit_decreasing(lengths, capacity)  # deterministic


def test_best_fit_chooses_the_fullest_bin_that_fits() -> None:
    # 7 and 6 open two bins (room 3 and 4); 3 goes to the fuller (7 + 3), 4 to the other (6 + 4).
    assert best_fit_decreasing([7, 6, 3, 4], 10) == [[0, 2], [1, 3]]
    # An item longer than a bin has one to itself (a packed example longer than the budget trains alone).
    assert best_fit_decreasing([11, 3, 12], 10) == [[2], [0], [1]]


def test_plan_without_packing_is_batch_size_examples() -> None:
    plan = make_plan([5] * 10, packing=False, batch_size=4, max_tokens_per_batch=0)
    (batches,) = plan.epoch(0, seed=1)
    assert [len(b) for b in batches] == [4, 4, 2] and sorted(i for b in batches for i in b) == list(range(10))
    assert plan.epoch(0, seed=1) == plan.epoch(0, seed=1) and plan.epoch(1, seed=1) != plan.epoch(0, seed=1)


def test_plan_with_packing_fills_the_token_budget() -> None:
    lengths = [30, 30, 20, 20, 10, 10, 10, 5]
    plan = make_plan(lengths, packing=True, batch_size=99, max_tokens_per_batch=40)
    (batches,) = plan.epoch(0, seed=0)
    assert all(sum(lengths[i] for i in b) <= 40 for b in batches)
    assert len(batches) == 4  # 135 tokens in bins of 40: the fewest possible
    assert sorted(i for b in batches for i in b) == list(range(8))


def test_ranks_share_an_epoch_evenly_and_disjointly() -> None:
    plan = make_plan([3] * 11, packing=False, batch_size=2, max_tokens_per_batch=0, world=2)
    ranks = plan.epoch(3, seed=7)
    assert [len(r) for r in ranks] == [3, 3] and plan.per_rank == 5  # the 11th sits this epoch out
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen)) == 10


def _examples() -> list[dict[str, list[int]]]:
    return [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5]},
        {"input_ids": [6, 7], "labels": [6, 7]},
        {"input_ids": [8, 9, 10], "labels": [IGNORE_INDEX, 9, 10]},
    ]


def test_varlen_is_one_unpadded_row_with_positions_restarting() -> None:
    laid = lay_out(_examples(), "varlen", pad_token_id=0)
    assert laid.input_ids == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    assert laid.position_ids == [[0, 1, 2, 3, 4, 0, 1, 0, 1, 2]]
    # Each position predicts the next token of its own example; an example's last token predicts nothing
    # (a shifted row would make 5 predict 6, the next example's first token).
    assert laid.targets == [[IGNORE_INDEX, 3, 4, 5, IGNORE_INDEX, 7, IGNORE_INDEX, 9, 10, IGNORE_INDEX]]
    assert (laid.tokens, laid.slots, laid.trained) == (10, 10, 6)
    assert laid.trained == sum(trained_tokens(ex) for ex in _examples())


def test_rows_are_as_wide_as_the_longest_example_and_padding_is_its_own_document() -> None:
    laid = lay_out(_examples(), "rows", pad_token_id=0)
    # Width 5 (the longest example); 3 + 2 share the second row, no example is split.
    assert laid.input_ids == [[1, 2, 3, 4, 5], [8, 9, 10, 6, 7]]
    assert laid.position_ids == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    padded = lay_out(_examples()[1:], "rows", pad_token_id=0)
    assert padded.input_ids == [[8, 9, 10], [6, 7, 0]]
    assert padded.position_ids == [[0, 1, 2], [0, 1, 0]]
    assert padded.targets == [[9, 10, IGNORE_INDEX], [7, IGNORE_INDEX, IGNORE_INDEX]]
    assert (padded.tokens, padded.slots) == (5, 6)


@pytest.mark.parametrize("layout", ["varlen", "rows"])
@pytest.mark.parametrize("packing", [False, True])
def test_efficiency_counts_what_the_layout_builds(layout: str, packing: bool) -> None:
    examples = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (3, 9, 4, 7, 2, 8, 5, 1, 6)]
    plan = make_plan(
        [len(e["input_ids"]) for e in examples], packing=packing, batch_size=3, max_tokens_per_batch=12
    )
    (batches,) = plan.epoch(0, seed=5)
    laid = [lay_out([examples[i] for i in b], layout, 0) for b in batches]  # type: ignore[arg-type]
    eff = efficiency(plan, examples, layout, seed=5)  # type: ignore[arg-type]
    assert eff.padding_efficiency == round(sum(x.tokens for x in laid) / sum(x.slots for x in laid), 4)
    assert eff.micro_batch_tokens == round(sum(x.slots for x in laid) / len(laid))
    if layout == "varlen":
        assert eff.padding_efficiency == 1.0
