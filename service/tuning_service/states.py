"""The job state machine: one enum, one transition table, one function that refuses illegal moves.

    validating -> queued -> running -> succeeded | failed | queued (resume_on_restart, at recovery)
                     ^  \\          \\-> cancelling -> cancelled | succeeded | failed
                     |   \\         \\-> pausing -> paused | cancelling | succeeded | failed
                     |    +-> paused -> queued (resume) | cancelled
                     +-- failed | cancelled (resume from a checkpoint)

A job may also fail or be cancelled before it runs. Terminal states (succeeded, failed, cancelled) end a run;
the one way out of failed/cancelled is an explicit resume from a checkpoint (the manager checks that one
exists). Nothing else hard-codes the graph or these sets: the API's enums (schema/), the SSE stream's end,
the OpenAI status mapping and /metrics derive from them.
"""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    PAUSING = "pausing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in _TERMINAL_SET

    def __str__(self) -> str:
        return self.value


_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    # queued -> failed: the trainer could not even be launched (e.g. the job folder cannot be written).
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED}),
    # running -> cancelled is not allowed: a running trainer is cancelled only through `cancelling`, so that
    # the group is signalled and waited for.
    # running -> queued: at start-up recovery only, a job that asked for `resume_on_restart` whose trainer
    # died with the service is queued again to continue from its newest checkpoint (recovery.py).
    JobStatus.RUNNING: frozenset(
        {JobStatus.CANCELLING, JobStatus.PAUSING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED}
    ),
    # A trainer may finish (or fail) before it sees the signal: its own terminal record wins.
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    # A pause is a stop with a checkpoint; the trainer's own terminal record still wins, and a cancel while
    # pausing turns it into a cancel (the group was already signalled).
    JobStatus.PAUSING: frozenset(
        {JobStatus.PAUSED, JobStatus.CANCELLING, JobStatus.SUCCEEDED, JobStatus.FAILED}
    ),
    # paused is not terminal: resume queues it again (from its checkpoint); cancel ends it.
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    # Resume: a failed or cancelled run that left a checkpoint continues from it (same job id).
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
}

_TERMINAL_SET = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

TERMINAL: frozenset[JobStatus] = frozenset(s for s in JobStatus if s.is_terminal())
# States in which a trainer process exists (or is being started) and holds a concurrency slot.
ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.PAUSING})
# States a resume may start from (failed/cancelled only with a checkpoint).
RESUMABLE: frozenset[JobStatus] = frozenset({JobStatus.PAUSED, JobStatus.FAILED, JobStatus.CANCELLED})
# What /health counts as active work.
NON_TERMINAL: frozenset[JobStatus] = frozenset(s for s in JobStatus if not s.is_terminal())

# The same as plain strings, in declaration order (SQL, JSON and label values).
STATUS_VALUES: tuple[str, ...] = tuple(s.value for s in JobStatus)
TERMINAL_VALUES: frozenset[str] = frozenset(s.value for s in TERMINAL)
ACTIVE_VALUES: tuple[str, ...] = tuple(s.value for s in JobStatus if s in ACTIVE)


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
