"""SQLite under crashes (issue 5, point 5): writer processes SIGKILLed at random moments while they commit.
After each kill the database opens, `PRAGMA integrity_check` is `ok`, and every job a writer acknowledged
(printed after COMMIT returned) is there, with all its records. Start-up asserting WAL and the busy timeout:
tests/service/storage/test_store.py::test_ddl_is_idempotent_and_pragmas_hold."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO_ROOT

WRITER = Path(__file__).with_name("sqlite_writer.py")
ROUNDS = 8


def _start(db: Path, tag: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(db), tag], stdout=subprocess.PIPE, text=True, env=env
    )


def test_kill_9_while_committing_loses_no_acknowledged_job(tmp_path: Path) -> None:
    db = tmp_path / "tuning.db"
    rng = random.Random(1234)
    acknowledged: set[str] = set()
    for round_ in range(ROUNDS):
        # Two writers at once: they contend for the write lock (busy timeout, never "database is locked").
        writers = [_start(db, f"{round_}{w}") for w in "ab"]
        time.sleep(0.6 + rng.uniform(0.0, 0.6))  # start-up (~0.4 s) plus a random stretch of commits
        for w in writers:
            os.kill(w.pid, signal.SIGKILL)
        for w in writers:
            out, _ = w.communicate(timeout=10)
            assert w.returncode == -signal.SIGKILL
            acknowledged |= {line for line in out.splitlines() if line.startswith("ftjob-")}
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            ids = {r[0] for r in conn.execute("SELECT id FROM jobs")}
            missing = acknowledged - ids
            assert not missing, f"round {round_}: {len(missing)} acknowledged jobs lost"
            # Every acknowledged job has its whole record sequence: 1 status + 5 log records, no gaps.
            bad = conn.execute(
                "SELECT j.id FROM jobs j JOIN job_events e ON e.job_id = j.id GROUP BY j.id"
                " HAVING COUNT(*) != MAX(e.seq) OR MAX(e.seq) != j.last_seq"
            ).fetchall()
            assert not bad
        finally:
            conn.close()
    assert len(acknowledged) > 50, len(acknowledged)  # the kills did land mid-stream
    print(f"{ROUNDS} rounds x 2 writers killed; {len(acknowledged)} acknowledged jobs, none lost")
