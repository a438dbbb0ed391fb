"""Process facts for supervision: start times, liveness, process-group membership and signalling.

A pid alone never identifies a trainer: pids are reused. A trainer is (pid, start time), the start time read
from /proc/<pid>/stat in clock ticks since boot (exact, unlike a float wall-clock time).
Zombies count as gone: an orphan that finished may linger unreaped, and kill(pid, 0) would call it alive.
On systems without /proc, psutil supplies the same facts.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil

SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
_PROC = Path("/proc")
_HAS_PROC = (_PROC / "self" / "stat").exists()


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on; the command name may contain spaces and ')'."""
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot on Linux), or None if there is no such process."""
    if _HAS_PROC:
        fields = _stat(pid)
        return None if fields is None else int(fields[19])
    try:
        return int(psutil.Process(pid).create_time() * 100)
    except psutil.Error:
        return None


def _state(pid: int) -> str | None:
    if _HAS_PROC:
        fields = _stat(pid)
        return None if fields is None else fields[0]
    try:
        return "Z" if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE else "R"
    except psutil.Error:
        return None


def is_alive(pid: int | None, started: int | None) -> bool:
    """True if the process `pid` exists, is not a zombie, and started at `started` (not a reused pid)."""
    if not pid or started is None:
        return False
    state = _state(pid)
    if state is None or state in ("Z", "X", "x"):
        return False
    return start_time(pid) == started


def pid_reused(pid: int | None, started: int | None) -> bool:
    """True if some other process now holds `pid` (it exists with a different start time)."""
    if not pid:
        return False
    now = start_time(pid)
    return now is not None and now != started


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    members = []
    if _HAS_PROC:
        for entry in os.scandir(_PROC):
            if not entry.name.isdigit():
                continue
            fields = _stat(int(entry.name))
            # fields[0] = state, fields[2] = pgrp
            if fields is not None and fields[0] not in ("Z", "X", "x") and int(fields[2]) == pgid:
                members.append(int(entry.name))
        return members
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return members


def group_is_ours(pgid: int | None, pid: int | None, started: int | None) -> bool:
    """May we signal group `pgid`? Only if its leader is our trainer (pid + start time), or the leader has
    exited: a pid still in use as a process-group id is never handed to a new process, so remaining members
    of the group are the trainer's own children. A pid now owned by another process means: not ours."""
    if not pgid or not pid:
        return False
    return not pid_reused(pid, started)


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to every process in the group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def signal_job(row: dict[str, Any], sig: int) -> bool:
    """Signal a job's trainer group after verifying it is still the process we started."""
    pgid, pid, started = row.get("pgid"), row.get("pid"), row.get("proc_start_time")
    if not group_is_ours(pgid, pid, started):
        return False
    assert pgid is not None
    return signal_group(pgid, sig)


def job_alive(row: dict[str, Any]) -> bool:
    """Is any process of the job's trainer still running? The leader (verified by start time) or, once it has
    exited, any remaining member of its group (e.g. the training child of `accelerate launch`)."""
    pid, started, pgid = row.get("pid"), row.get("proc_start_time"), row.get("pgid")
    if not pid:
        return False
    if is_alive(pid, started):
        return True
    if pid_reused(pid, started):
        return False
    return pgid is not None and bool(group_members(int(pgid)))
