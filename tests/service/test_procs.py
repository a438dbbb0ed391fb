from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tuning_service import procs


def test_start_time_identifies_a_process() -> None:
    me = procs.start_time(os.getpid())
    assert me is not None and procs.start_time(os.getpid()) == me
    assert procs.is_alive(os.getpid(), me)
    assert not procs.is_alive(os.getpid(), me + 1)  # same pid, other start time: not our process
    assert procs.pid_reused(os.getpid(), me + 1) and not procs.pid_reused(os.getpid(), me)
    assert not procs.is_alive(None, me) and not procs.is_alive(os.getpid(), None)


def test_zombies_count_as_gone() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    started = procs.start_time(p.pid)
    deadline = time.monotonic() + 10
    while procs._state(p.pid) != "Z" and time.monotonic() < deadline:  # exited, not reaped yet
        time.sleep(0.01)
    assert procs._state(p.pid) == "Z"
    assert not procs.is_alive(p.pid, started)
    p.wait()
    assert procs.start_time(p.pid) is None and not procs.is_alive(p.pid, started)


def test_group_members_signal_and_ownership() -> None:
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "time.sleep(30)\n"
    )
    leader = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(procs.group_members(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert leader.pid in procs.group_members(leader.pid) and len(procs.group_members(leader.pid)) == 2
        row = {"pid": leader.pid, "pgid": leader.pid, "proc_start_time": procs.start_time(leader.pid)}
        assert procs.job_alive(row)
        # A wrong start time means "someone else's process now": never signalled.
        assert not procs.signal_job({**row, "proc_start_time": row["proc_start_time"] - 1}, signal.SIGKILL)
        assert leader.poll() is None
        # The leader dies first: its children still make the job alive, and the group is still ours.
        os.kill(leader.pid, signal.SIGKILL)
        leader.wait()
        assert procs.job_alive(row) and procs.group_is_ours(row["pgid"], row["pid"], row["proc_start_time"])
        assert procs.signal_job(row, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procs.group_members(leader.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert procs.group_members(leader.pid) == [] and not procs.job_alive(row)
    finally:
        try:
            os.killpg(leader.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        leader.wait()
