"""The plan's predictions hold on the wire: every access pattern, read from a moto S3 server.

Requests are exact (zarr's reads of planner layouts are deterministic: one GET
per whole shard, or a shard index plus one ranged GET per needed chunk); bytes
are exact without compression and within a stated tolerance with it.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import zstore
from zstore._plan import pattern_regions, region_cost

ACCESS = {
    "embed": ["rows", zstore.split(1, 4)],
    "attn/q": [zstore.split(0, 4), zstore.split(1, 2)],
    "mlp": "tensor",
}


def _tree() -> dict:
    rng = np.random.default_rng(7)
    return {
        "embed": rng.standard_normal((6000, 1024), dtype=np.float32),
        "attn": {"q": rng.standard_normal((2048, 1024), dtype=np.float32)
                      .astype(ml_dtypes.bfloat16),
                 "norm": np.ones(1024, np.float32)},
        "mlp": rng.standard_normal((3001, 700), dtype=np.float32),
    }


def _every_read(plan):
    """(array, pattern, region as slices, predicted Cost) for every reader of every pattern."""
    for name, a in plan.arrays.items():
        for pattern in a.patterns:
            for region in pattern_regions(a.shape, pattern):
                yield (name, str(pattern), tuple(slice(lo, hi) for lo, hi in region),
                       region_cost(a.shape, a.dtype, a.layout, region, plan.profile, a.ratio))


@pytest.mark.parametrize("codec", ["none", "blosc"])
def test_every_access_pattern_costs_what_the_plan_says(s3, codec):
    tree = _tree()
    info = zstore.save(tree, s3.url(), storage_options=s3.storage_options, access=ACCESS,
                       codec=codec)
    ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
    plan = zstore.plan(ckpt, access=ACCESS)
    assert info.objects == plan.objects
    checked = 0
    for name, pattern, index, cost in _every_read(plan):
        # The plan's costs are cold reads: a fresh open has no shard index remembered.
        ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
        s3.wire.clear()
        with zstore.io_stats() as io:
            got = ckpt[name][index]
        expected = np.asarray(tree[name] if "/" not in name else tree["attn"][name[5:]])[index]
        assert np.array_equal(got, expected), (name, pattern)
        where = f"{name} {pattern} {index}"
        assert s3.wire.methods() == {"GET": cost.requests}, where
        assert io.gets == cost.requests and io.bytes_read == s3.wire.bytes_sent, where
        tolerance = 0 if codec == "none" else 0.1
        assert abs(s3.wire.bytes_sent - cost.bytes) <= tolerance * cost.bytes, where
        checked += 1
    assert checked == sum(len(pattern_regions(a.shape, p))
                          for a in plan.arrays.values() for p in a.patterns)


def test_a_save_writes_the_objects_the_plan_counts(s3):
    plan = zstore.plan(_tree(), access=ACCESS, backend="s3", codec="none")
    s3.wire.clear()
    zstore.save(_tree(), s3.url(), storage_options=s3.storage_options, access=ACCESS, codec="none")
    puts = s3.wire.methods()["PUT"]
    # + the placeholder root zarr.json and the write lease, both replaced or gone at the end
    assert puts == plan.objects + 2
