"""Planning: from each array's shape, dtype and expected access to a layout and its costs.

Pure and deterministic, no I/O: the access patterns and their globs
(``access``), the chunk and shard shapes (``chunking``), what a read or a
whole save/load costs in requests, bytes, memory and seconds (``costs``), the
backend profiles those costs are computed for (``profiles``), the ``Plan`` a
user reads (``planner``), and the shapes and dtypes of files planned for
conversion (``specs``). The writer saves what this box plans.
"""
