"""The docs' generated tables are their definitions (scripts/docs-tables writes them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_generated_tables_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs-tables"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}: run scripts/docs-tables"
