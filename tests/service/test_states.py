from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuning_service.states import (
    ACTIVE,
    NON_TERMINAL,
    TERMINAL,
    IllegalTransition,
    JobStatus,
    allowed,
    check_transition,
)

S = JobStatus
LEGAL = {
    (S.VALIDATING, S.QUEUED),
    (S.VALIDATING, S.FAILED),
    (S.VALIDATING, S.CANCELLED),
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.FAILED),
    (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.CANCELLING),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.QUEUED),  # re-queued at start-up recovery (resume_on_restart)
    (S.CANCELLING, S.CANCELLED),
    (S.CANCELLING, S.SUCCEEDED),
    (S.CANCELLING, S.FAILED),
    # pause / resume (issue 7)
    (S.QUEUED, S.PAUSED),
    (S.RUNNING, S.PAUSING),
    (S.PAUSING, S.PAUSED),
    (S.PAUSING, S.CANCELLING),
    (S.PAUSING, S.SUCCEEDED),
    (S.PAUSING, S.FAILED),
    (S.PAUSED, S.QUEUED),
    (S.PAUSED, S.CANCELLED),
    (S.FAILED, S.QUEUED),
    (S.CANCELLED, S.QUEUED),
}


def test_values_are_the_public_strings() -> None:
    assert [s.value for s in S] == [
        "validating", "queued", "running", "cancelling", "pausing", "paused", "succeeded", "failed",
        "cancelled",
    ]  # fmt: skip
    assert S("running") is S.RUNNING
    assert S.RUNNING == "running"  # a str Enum compares with plain strings (JSON, SQLite)
    assert str(S.QUEUED) == "queued"


def test_terminal_states() -> None:
    assert {s for s in S if s.is_terminal()} == {S.SUCCEEDED, S.FAILED, S.CANCELLED}
    assert {S.SUCCEEDED, S.FAILED, S.CANCELLED} == TERMINAL
    assert set(S) - TERMINAL == NON_TERMINAL
    assert {S.RUNNING, S.CANCELLING, S.PAUSING} == ACTIVE
    assert not S.PAUSED.is_terminal()


def test_the_only_way_out_of_a_terminal_state_is_resume() -> None:
    assert all(not allowed(S.SUCCEEDED, s) for s in S)
    for s in (S.FAILED, S.CANCELLED):
        assert {n for n in S if allowed(s, n)} == {S.QUEUED}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(S, S)))
def test_every_pair(old: JobStatus, new: JobStatus) -> None:
    if (old, new) in LEGAL:
        assert allowed(old, new)
        assert check_transition(old, new) is new
        assert check_transition(old.value, new.value) is new  # plain strings from the database work too
    else:
        assert not allowed(old, new)
        with pytest.raises(IllegalTransition) as info:
            check_transition(old, new)
        assert info.value.old is old and info.value.new is new
        assert f"{old.value} -> {new.value}" in str(info.value)


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError):
        check_transition("running", "frozen")


@given(st.lists(st.sampled_from(list(S)), max_size=12))
def test_random_walks_follow_the_table(moves: list[JobStatus]) -> None:
    """Applying random moves from `queued`: only legal moves change the state, and nothing leaves a terminal
    state; the walk always stays in a state reachable from queued."""
    state = S.QUEUED
    for new in moves:
        try:
            moved = check_transition(state, new)
        except IllegalTransition:
            assert (state, new) not in LEGAL
            continue
        assert (state, moved) in LEGAL
        state = moved
    if state.is_terminal():
        assert all(not allowed(state, s) for s in S if s is not S.QUEUED)
    assert state is not S.VALIDATING
