"""Reading: open a committed checkpoint with two GETs, then materialize only what is asked.

``reader`` holds ``open``, ``load``, ``Checkpoint`` and ``LazyTensor``;
``indexing`` turns numpy-style indexes into zarr selections; ``load_into``
fills a model's own tensors in place; ``staging`` moves decoded bytes onto an
accelerator through pinned buffers; ``verify`` reads every object against its
checksums; ``catalog`` surveys what lies under a prefix. Never imports the
write box.
"""

# What the other boxes and the tests use of reading.
from zstore._read.catalog import CheckpointEntry, find_checkpoints
from zstore._read.reader import LazyTensor
from zstore._read.staging import DeviceStager

__all__ = [
    "CheckpointEntry", "DeviceStager", "LazyTensor", "find_checkpoints",
]
