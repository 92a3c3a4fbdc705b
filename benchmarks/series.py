"""Benchmark section ``series``: what a training job pays for a CheckpointManager.

- stall: how long ``save(blocking=False)`` holds the training loop, against a
  plain host copy of the same state (the floor of any snapshot) and against a
  blocking save, interleaved;
- incremental: bytes uploaded per step while fine-tuning with a frozen base
  (only the last layer changes), counted on the S3 server, against the bytes a
  full upload of that step costs.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

import zstore
from benchmarks import workloads
from benchmarks.measure import Stat, interleave, ratio, timed
from benchmarks.report import Report, Row, seconds


def stall(report: Report, backends: Any, backend: str, state: dict[str, np.ndarray],
          reps: int) -> None:
    target = backends.target(backend, "series-stall")
    manager = zstore.CheckpointManager(target.url, keep_last=1,
                                       storage_options=target.options)
    steps = itertools.count(1)
    finished = Stat()

    buffers = {k: np.empty_like(v) for k, v in state.items()}
    for k, v in state.items():  # touched once: the baseline copies into memory already mapped
        np.copyto(buffers[k], v)

    def host_copy(_: int) -> float:  # what torch.clone into preallocated memory costs
        return timed(lambda: [np.copyto(buffers[k], v) for k, v in state.items()])[0]

    def background(_: int) -> float:
        seconds_held, future = timed(lambda: manager.save(next(steps), state, blocking=False))
        finished.samples.append(timed(future.result)[0] + seconds_held)
        return seconds_held

    def blocking(_: int) -> float:
        return timed(lambda: manager.save(next(steps), state))[0]

    stats = interleave({"copy": host_copy, "async": background, "blocking": blocking}, reps)
    manager.close()
    size = workloads.nbytes(state)
    report.add(Row("series", backend, "bf16", "stall of save(blocking=False) vs host copy",
                   seconds(stats["async"]),
                   f"copy into preallocated memory {seconds(stats['copy'])}",
                   ratio(stats["copy"], stats["async"]),
                   {"bytes": size, "stall": stats["async"].as_dict(),
                    "copy": stats["copy"].as_dict(), "finished": finished.as_dict()}))
    report.add(Row("series", backend, "bf16", "stall of save(blocking=False) vs blocking save",
                   seconds(stats["async"]), f"blocking save {seconds(stats['blocking'])}",
                   ratio(stats["blocking"], stats["async"])))
    backends.remove(target)


def incremental(report: Report, backends: Any, state: dict[str, np.ndarray]) -> None:
    """Fine-tuning with a frozen base on S3: only the last layer's tensors change per step."""
    assert backends.s3 is not None
    target = backends.target("s3", "series-incremental")
    manager = zstore.CheckpointManager(target.url, storage_options=target.options)
    last = max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    trained = [k for k in state if k.startswith(f"layers.{last}.")]
    trained_bytes = sum(state[k].nbytes for k in trained)
    wire = backends.s3.log
    uploaded = []
    tree = dict(state)
    for step in range(1, 4):
        wire.clear()
        info = manager.save(step, tree)
        uploaded.append((wire.bytes_received, wire.copies, info))
        for key in trained:  # one optimizer step of the unfrozen layer
            tree[key] = (tree[key].astype(np.float32) * 1.01).astype(tree[key].dtype)
    manager.close()
    full_bytes, _, first = uploaded[0]
    for step, (sent, copies, info) in enumerate(uploaded[1:], start=2):
        report.add(Row(
            "series", "s3", "bf16", f"bytes uploaded by step {step} (frozen base)",
            f"{sent / 1e6:.2f} MB on the wire, {copies} server-side copies, "
            f"{info.seconds:.2f}s",
            f"full step {full_bytes / 1e6:.1f} MB, {first.seconds:.2f}s; changed tensors "
            f"{trained_bytes / 1e6:.2f} MB raw",
            Stat([full_bytes / max(sent, 1)]),
            {"uploaded": sent, "copies": copies, "full": full_bytes, "trained_raw": trained_bytes,
             "seconds": info.seconds, "full_seconds": first.seconds}))
    backends.remove(target)
