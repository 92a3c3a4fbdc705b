"""The format: what a checkpoint is on storage, independent of how it is planned or moved.

The names of zstore's own objects (``names``), the manifest in the root
``zarr.json`` and the commit marker (``manifest``), the tree skeleton that
turns nested state into named arrays and back (``tree``), an array's layout
as Zarr v3 JSON (``layout``), the recorded object hashes (``hashes``), the
bfloat16/float8 data types (``dtypes``) and the torch/numpy bridge
(``tensors``). Pure, no I/O: every other box builds on this one, and
``docs/format.md`` is its specification.
"""
