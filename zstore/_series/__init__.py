"""A series: ``root/step-<n>/`` checkpoints managed over a training run.

``manager.CheckpointManager`` saves steps (in the background from a host
snapshot, incrementally against the previous step), applies retention and
restores the newest complete step; ``mirror`` copies each committed step of a
tiered series to its mirrors and lets reads fall back to them; ``steps`` scans a
run, decides which steps retention drops (pure) and deletes them. The top of
the data flow: it uses both the write and the read boxes.
"""

# What the command line and the tests use of a series.
from zstore._series.steps import Step, doomed

__all__ = [
    "Step", "doomed",
]
