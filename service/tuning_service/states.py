"""The job state machine: one enum, one transition table, one function that refuses illegal moves.

    validating -> queued -> running -> succeeded | failed | cancelled
                                 \\-> cancelling -> cancelled | succeeded | failed

A job may also fail or be cancelled before it runs. Adding a state (e.g. `paused`) means one enum member and
its row in `_TRANSITIONS`; nothing else hard-codes the graph.
"""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return not _TRANSITIONS[self]

    def __str__(self) -> str:
        return self.value


_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    # queued -> failed: the trainer could not even be launched (e.g. the job folder cannot be written).
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    # running -> cancelled is not allowed: a running trainer is cancelled only through `cancelling`, so that
    # the group is signalled and waited for.
    JobStatus.RUNNING: frozenset({JobStatus.CANCELLING, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    # A trainer may finish (or fail) before it sees the signal: its own terminal record wins.
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

TERMINAL: frozenset[JobStatus] = frozenset(s for s in JobStatus if s.is_terminal())
# States in which a trainer process exists (or is being started) and holds a concurrency slot.
ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})
# What /health counts as active work.
NON_TERMINAL: frozenset[JobStatus] = frozenset(s for s in JobStatus if not s.is_terminal())


class IllegalTransition(Exception):
    def __init__(self, old: JobStatus, new: JobStatus) -> None:
        super().__init__(f"illegal job status transition {old.value} -> {new.value}")
        self.old = old
        self.new = new


def allowed(old: JobStatus | str, new: JobStatus | str) -> bool:
    return JobStatus(new) in _TRANSITIONS[JobStatus(old)]


def check_transition(old: JobStatus | str, new: JobStatus | str) -> JobStatus:
    """Return `new` as a JobStatus if `old -> new` is legal, else raise IllegalTransition."""
    o, n = JobStatus(old), JobStatus(new)
    if n not in _TRANSITIONS[o]:
        raise IllegalTransition(o, n)
    return n
