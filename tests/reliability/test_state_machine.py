"""A hypothesis RuleBasedStateMachine over the job lifecycle (issue 5, point 15), through the real JobManager
with the fake trainer (real subprocesses, real SQLite). Rules: create (per key, with or without an
idempotency key, trainers that succeed, fail, crash, die by a signal, run out of memory or run long), cancel,
get and delete (as the owner or the other key), wait, and restart the service (trainers keep running).
Invariants after every step: a job moves only along legal transitions, a terminal state never changes (this
machine never resumes), the final status and error code fit what the trainer did, each key sees exactly its
own jobs and the other key gets 404.

Every draw must depend only on earlier draws, never on how the processes happened to run: hypothesis replays
choice sequences and raises FlakyStrategyDefinition when the same prefix meets a different strategy. The
`jobs` bundle is drawn as an index into its current length, and that length used to depend on timing
(`create` added nothing when an idempotency key was still held, and whether a `delete` freed a key depended on
whether the job had ended yet). So `create` always adds one handle: the index of its call; `handles` maps it
to the job it made or replayed (None when refused), and the other rules skip a None."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from tests.service.core_fixtures import kill_group, make_settings, request
from tuning_service.engine.facade import JobManager
from tuning_service.errors import APIError
from tuning_service.states import JobStatus, allowed

T = TypeVar("T")
pytestmark = pytest.mark.slow

# Fake trainer modes -> the error codes a job may end with when nobody cancels it (None = succeeded).
# Without a terminal record, a trainer that ends while the service is down fails with service_restart.
MODES: dict[str, set[str | None]] = {
    "complete?steps=3": {None},
    "complete?steps=150&delay=0.02": {None},  # ~3 s: long enough to be cancelled or outlive a restart
    "fail": {"invalid_data"},
    "oom": {"out_of_memory"},
    "crash?steps=4": {"trainer_crashed", "service_restart"},
    # A trainer re-attached after a restart is not the new service's child: its exit status is unknown, so a
    # death without a terminal record is `trainer_crashed` ("exit status unknown") rather than trainer_killed.
    "killself": {"trainer_killed", "service_restart", "trainer_crashed"},
}
TERMINAL = {s.value for s in JobStatus if s.is_terminal()}


def reachable(old: str, new: str) -> bool:
    """Is `new` reachable from `old` without a resume (terminal states are sinks here)?"""
    seen, todo = {old}, [old]
    while todo:
        cur = todo.pop()
        if cur in TERMINAL:
            continue
        for nxt in JobStatus:
            if nxt.value not in seen and allowed(cur, nxt):
                seen.add(nxt.value)
                todo.append(nxt.value)
    return new in seen


class Lifecycle(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lifecycle-"))
        self.loop = asyncio.new_event_loop()
        self.settings = make_settings(self.tmp, max_concurrent_jobs=2, cancel_grace_seconds=1.0)
        self.m = self.run(JobManager.start(self.settings))
        self.owners = [self.run(self.m.create_key(name))[0] for name in ("alice", "bob")]
        self.model: dict[str, dict[str, Any]] = {}  # job id -> owner, mode, last status, cancelled, deleted
        self.idem: dict[tuple[str, str], tuple[str, str]] = {}  # (owner, key) -> (job id, mode)
        self.handles: list[str | None] = []  # bundle value (create call number) -> job id, None if refused

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    # ---- rules -------------------------------------------------------------------------------------------

    @rule(
        target=jobs,
        who=st.integers(0, 1),
        mode=st.sampled_from(sorted(MODES)),
        key=st.sampled_from([None, "k1", "k2"]),
    )
    def create(self, who: int, mode: str, key: str | None) -> int:
        handle = len(self.handles)  # one bundle entry per call, whatever happens (see the docstring)
        self.handles.append(None)
        owner = self.owners[who]
        prior = self.idem.get((owner, key)) if key else None
        try:
            job, created = self.run(self.m.create(owner=owner, request=request(mode), idempotency_key=key))
        except APIError as exc:
            assert prior is not None and prior[1] != mode, exc.message
            assert (exc.status_code, exc.code) == (409, "idempotency_key_reused")
            return handle
        if prior is not None:
            assert not created and job["id"] == prior[0] and prior[1] == mode
            self.handles[handle] = job["id"]
            return handle
        assert created and job["status"] == "queued" and job["id"] not in self.model
        self.model[job["id"]] = {
            "owner": owner,
            "mode": mode,
            "last": "queued",
            "cancel": False,
            "gone": False,
        }
        if key:
            self.idem[(owner, key)] = (job["id"], mode)
        self.handles[handle] = job["id"]
        return handle

    @rule(handle=jobs, other=st.booleans())
    def cancel(self, handle: int, other: bool) -> None:
        job_id = self.handles[handle]
        if job_id is None:
            return
        m = self.model[job_id]
        owner = self.owners[1 - self.owners.index(m["owner"])] if other else m["owner"]
        try:
            job = self.run(self.m.cancel(job_id, owner=owner))
        except APIError as exc:
            if other or m["gone"]:
                assert (exc.status_code, exc.code) == (404, "job_not_found")
            else:
                assert (exc.status_code, exc.code) == (409, "job_terminal")
                assert self.run(self.m.get(job_id, owner=owner))["status"] in TERMINAL
            return
        assert not other and not m["gone"]
        m["cancel"] = True
        assert job["status"] in ("cancelled", "cancelling"), job["status"]
        self.observe(job_id, job["status"])

    @rule(handle=jobs, other=st.booleans())
    def delete(self, handle: int, other: bool) -> None:
        job_id = self.handles[handle]
        if job_id is None:
            return
        m = self.model[job_id]
        owner = self.owners[1 - self.owners.index(m["owner"])] if other else m["owner"]
        try:
            result = self.run(self.m.delete(job_id, owner=owner))
        except APIError as exc:
            if other or m["gone"]:
                assert (exc.status_code, exc.code) == (404, "job_not_found")
            else:
                assert (exc.status_code, exc.code) == (409, "job_not_terminal")
            return
        assert not other and not m["gone"] and result["deleted"] is True
        m["gone"] = True
        self.idem = {k: v for k, v in self.idem.items() if v[0] != job_id}

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.5]))
    def wait(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    @rule()
    def restart(self) -> None:
        self.run(self.m.stop())  # trainers keep running; the new manager recovers them before it returns
        self.m = self.run(JobManager.start(self.settings))

    # ---- invariants --------------------------------------------------------------------------------------

    def observe(self, job_id: str, status: str) -> None:
        m = self.model[job_id]
        assert reachable(m["last"], status), f"{job_id}: {m['last']} -> {status} is not a legal path"
        m["last"] = status

    @invariant()
    def jobs_follow_the_state_machine_and_stay_private(self) -> None:
        for job_id, m in self.model.items():
            other = self.owners[1 - self.owners.index(m["owner"])]
            try:
                self.run(self.m.get(job_id, owner=other))
                raise AssertionError("another key can see the job")
            except APIError as exc:
                assert exc.status_code == 404
            if m["gone"]:
                with pytest.raises(APIError):
                    self.run(self.m.get(job_id, owner=m["owner"]))
                continue
            job = self.run(self.m.get(job_id, owner=m["owner"]))
            assert job["model"] == f"fake:{m['mode']}"
            self.observe(job_id, job["status"])
            if job["status"] in TERMINAL:
                assert job["finished_at"] is not None
                code = (job["error"] or {}).get("code")
                if not m["cancel"]:
                    assert job["status"] != "cancelled"
                    assert code in MODES[m["mode"]], (m["mode"], job["status"], job["error"])
                elif job["status"] != "cancelled":
                    assert code in MODES[m["mode"]]  # the trainer finished before the signal landed

    @invariant()
    def each_key_lists_exactly_its_jobs(self) -> None:
        for owner in self.owners:
            listed, _ = self.run(self.m.list(owner=owner, status=None, after=None, limit=100))
            expected = {j for j, m in self.model.items() if m["owner"] == owner and not m["gone"]}
            assert {j["id"] for j in listed} == expected

    def teardown(self) -> None:
        try:
            rows = [self.run(self.m.store.get_job(j)) for j in self.model]
            self.run(self.m.stop())
            for row in rows:
                if row is not None:
                    kill_group(row["pgid"])
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


# Real processes and timing: no shrinking (a replay would not be the same run) and no example database.
Lifecycle.TestCase.settings = settings(
    max_examples=8,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
    database=None,
)
TestLifecycle = Lifecycle.TestCase
