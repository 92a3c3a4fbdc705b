"""The format: what a checkpoint is on storage, independent of how it is planned or moved.

The names of zstore's own objects (``names``), the manifest in the root
``zarr.json`` and the commit marker (``manifest``), the tree skeleton that
turns nested state into named arrays and back (``tree``), an array's layout
as Zarr v3 JSON (``layout``), the recorded object hashes (``hashes``), the
bfloat16/float8 data types (``dtypes``) and the torch/numpy bridge
(``tensors``). Pure, no I/O: every other box builds on this one, and
``docs/format.md`` is its specification.
"""

# What the other boxes and the tests use of the format.
from zstore._format.hashes import box_hash, decode_hashes, object_boxes
from zstore._format.layout import CODECS, Layout, array_metadata, layout_from_metadata
from zstore._format.manifest import STACKED_FORMAT
from zstore._format.names import COMMIT_MARKER, HASHES, LEASE, ROOT, object_key, step_name, step_of
from zstore._format.shards import chunks_per_part
from zstore._format.tensors import numpy_to_torch, torch_to_numpy

__all__ = [
    "CODECS", "COMMIT_MARKER", "HASHES", "LEASE", "Layout", "ROOT", "STACKED_FORMAT",
    "array_metadata", "box_hash", "chunks_per_part", "decode_hashes", "layout_from_metadata",
    "numpy_to_torch", "object_boxes", "object_key", "step_name", "step_of", "torch_to_numpy",
]
