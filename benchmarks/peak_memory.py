"""Peak resident memory of one save or load, measured in a fresh process.

Run as ``python -m benchmarks.peak_memory OP URL OPTIONS_JSON [LAYERS VOCAB DTYPE | one]``
(``one``: a single 512 MiB fp32 tensor); prints
JSON with the process's resident memory before the operation and its peak during
it. Linux resets the peak (VmHWM) when 5 is written to /proc/self/clear_refs, so
what the workload generator used before the save is not counted.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(op: str, url: str, options: dict[str, Any], workload: list[str]) -> dict[str, int]:
    import numpy  # imported before the baseline like every op needs

    import zstore

    state = None
    if op == "zstore-save" and workload == ["one"]:  # one 512 MiB fp32 tensor
        state = {"w": numpy.random.default_rng(0).standard_normal((16384, 8192),
                                                                   dtype=numpy.float32)}
    elif op == "zstore-save":
        from benchmarks.workloads import transformer

        state = transformer(workload[2], layers=int(workload[0]), vocab=int(workload[1]))
    if op in ("safetensors-load", "torch-load"):
        import torch  # noqa: F401 - import cost is not the load's

    _reset_peak()
    before = _status("VmRSS")
    if op == "zstore-load":
        result: Any = zstore.load(url, storage_options=options)
    elif op == "zstore-save":
        result = zstore.save(state, url, storage_options=options, overwrite=True)
    elif op == "safetensors-load":
        from safetensors.torch import load_file

        result = load_file(os.path.join(url, "model.safetensors"))
    elif op == "torch-load":
        import torch

        result = torch.load(os.path.join(url, "model.pt"), weights_only=True)
    else:
        raise SystemExit(f"unknown op {op!r}")
    peak = _status("VmHWM")
    del result
    return {"before": before, "peak": peak}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:])))
