"""Every pair of task states: the legal moves of docs/design.md section 2 and nothing else.

One departure: a result sent back from review goes to queued (its redo waits for a slot), not
to in_progress."""

from __future__ import annotations

import itertools

import pytest

from taskpool.domain.tasks import TaskStatus as S
from taskpool.domain.transitions import IllegalTransitionError, can_transition, transition

LEGAL = {
    (S.PENDING, S.QUEUED),
    (S.PENDING, S.SCHEDULED),
    (S.PENDING, S.CANCELLED),
    (S.SCHEDULED, S.QUEUED),
    (S.SCHEDULED, S.CANCELLED),
    (S.QUEUED, S.ASSIGNED),
    (S.QUEUED, S.BLOCKED),
    (S.QUEUED, S.CANCELLED),
    (S.ASSIGNED, S.IN_PROGRESS),
    (S.ASSIGNED, S.QUEUED),
    (S.ASSIGNED, S.CANCELLED),
    (S.IN_PROGRESS, S.COMPLETED),
    (S.IN_PROGRESS, S.FAILED),
    (S.IN_PROGRESS, S.REVIEW),
    (S.IN_PROGRESS, S.CANCELLED),
    (S.BLOCKED, S.QUEUED),
    (S.BLOCKED, S.CANCELLED),
    (S.REVIEW, S.COMPLETED),
    (S.REVIEW, S.QUEUED),
    (S.REVIEW, S.CANCELLED),
    (S.FAILED, S.QUEUED),
}
ALL_PAIRS = list(itertools.product(S, S))


def test_there_are_ten_states() -> None:
    assert len(S) == 10


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL))
def test_legal_transition(current: S, target: S) -> None:
    assert can_transition(current, target)
    assert transition("t-1", current, target) is target


@pytest.mark.parametrize(("current", "target"), [p for p in ALL_PAIRS if p not in LEGAL])
def test_illegal_transition_says_which_and_why(current: S, target: S) -> None:
    assert not can_transition(current, target)
    with pytest.raises(IllegalTransitionError) as raised:
        transition("t-1", current, target)
    message = str(raised.value)
    assert f"'t-1' cannot go from {current.value} to {target.value}" in message
    allowed = sorted(t.value for c, t in LEGAL if c is current)
    if allowed:
        assert f"it may go to {', '.join(allowed)}" in message
    else:
        assert "it is final" in message
