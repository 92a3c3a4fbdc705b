"""Planning: from each array's shape, dtype and expected access to a layout and its costs.

Pure and deterministic, no I/O: the access patterns and their globs
(``access``), the chunk and shard shapes (``chunking``), what a read or a
whole save/load costs in requests, bytes, memory and seconds (``costs``), the
backend profiles those costs are computed for (``profiles``), the ``Plan`` a
user reads (``planner``), and the shapes and dtypes of files planned for
conversion (``specs``). The writer saves what this box plans.
"""

# What the other boxes and the tests use of planning: the planner's documented limits
# (``chunking``'s constants) are part of it, as the property tests check them.
from zstore._plan.access import Split
from zstore._plan.chunking import (
    CHUNK_FULL,
    INDEX_ENTRY,
    INDEX_SHARE,
    MAX_OBJECTS,
    TINY,
    region_grid,
)
from zstore._plan.costs import pattern_regions, region_cost
from zstore._plan.planner import plan_specs
from zstore._plan.profiles import BUILTIN, BackendProfile, named_profile, profile_for, store_profile

__all__ = [
    "BUILTIN", "BackendProfile", "CHUNK_FULL", "INDEX_ENTRY", "INDEX_SHARE", "MAX_OBJECTS",
    "Split", "TINY", "named_profile", "pattern_regions", "plan_specs", "profile_for",
    "region_cost", "region_grid", "store_profile",
]
