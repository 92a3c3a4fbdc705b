"""The benchmark harness runs end to end (tiny workload), so `make bench` cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_benchmarks_run_and_write_their_record(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--layers", "1", "--vocab", "512", "--reps", "2",
         "--sections", "throughput,lazy,compression,series,convert,encryption,tiers",
         "--backends", "local,s3",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    metrics = {(r["section"], r["backend"], r["metric"]) for r in record["rows"]}
    assert ("throughput", "s3", "load: zstore vs raw") in metrics
    assert ("lazy", "local", "open: requests") in metrics
    assert ("convert", "local", ".safetensors -> zstore vs read + write raw") in metrics
    assert ("encryption", "s3", "full load encrypted vs plain") in metrics
    assert ("tiers", "s3", "restore from the mirror (fast tier lost) vs raw") in metrics
    opened = next(r for r in record["rows"] if r["metric"] == "open: requests")
    assert opened["data"]["gets"] == 2
    step = next(r for r in record["rows"]
                if r["metric"] == "bytes uploaded by step 3 (frozen base)")
    assert 0 < step["data"]["uploaded"] < step["data"]["full"]
