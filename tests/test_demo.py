"""examples/demo.py (what `make demo` runs) works on a local folder, and its counts agree
with what `zstore info` says about the checkpoint it saved."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


def test_demo_on_a_local_folder_counts_what_zstore_info_counts(tmp_path):
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, str(DEMO), str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    counts = re.findall(r"(\d+ arrays \+ \d+ inline values)", done.stdout)
    assert counts == ["15 arrays + 5 inline values"] * 2, done.stdout  # saved ..., zstore info
    assert "model and optimizer identical: True" in done.stdout
