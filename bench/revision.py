"""The code of another git revision, for benchmarks that compare against it in one invocation."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def extract(rev: str, dest: str, *paths: str) -> None:
    """``git archive`` revision ``rev`` of this repository (only ``paths`` when given) into folder ``dest``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, *paths], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
