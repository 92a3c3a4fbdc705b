"""Integrity: a flipped byte anywhere in a checkpoint is caught, never read back as data.

Every stored object of a checkpoint (sharded and unsharded chunks, shard indexes, array and
root metadata, the commit marker, the hashes) gets a bit flipped at its start, middle and end,
one at a time, with and without compression. Each flip must be reported: by ``load`` (data and
shard indexes always, with an error naming the array and object; root metadata and commit
marker) or by ``verify`` (what ``load`` never
reads: the per-array ``zarr.json`` plain zarr readers use, and the recorded hashes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import zstore
from zstore._read.verify import verify


def _tree() -> dict:
    rng = np.random.default_rng(0)
    return {"rows": rng.standard_normal((3000, 64)).astype(np.float32),
            "small": np.arange(10.0), "bf": rng.standard_normal((8, 8)).astype(np.float16)}


@pytest.fixture(scope="module", params=["none", "blosc"])
def saved(tmp_path_factory, request) -> Path:
    base = tmp_path_factory.mktemp("integrity")
    zstore.save(_tree(), str(base / "first"), codec=request.param)
    zstore.save(_tree(), str(base / "ckpt"), base=str(base / "first"),  # records hashes
                access={"rows": "rows"}, codec=request.param)
    return base / "ckpt"


def _objects(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_every_flipped_byte_is_detected_by_load_or_verify(saved):
    expected = _tree()
    flips = 0
    for path in _objects(saved):
        raw = path.read_bytes()
        for position in sorted({0, len(raw) // 2, len(raw) - 1}):
            damaged = bytearray(raw)
            damaged[position] ^= 0x10
            path.write_bytes(bytes(damaged))
            try:
                loaded = zstore.load(str(saved))
            except zstore.CorruptCheckpointError as e:
                name = path.relative_to(saved).as_posix()
                if "/c/" in name:  # a data object: the error names it
                    assert name in str(e), (name, str(e))
                flips += 1
            else:
                assert "/c/" not in path.relative_to(saved).as_posix(), (
                    f"a flip at byte {position} of data object {path} was read without an error")
                assert all(np.array_equal(loaded[k], v) for k, v in expected.items()), path
                problems = verify(str(saved)).problems
                assert problems, f"a flip at byte {position} of {path.name} went unnoticed"
                flips += 1
            finally:
                path.write_bytes(raw)
    assert flips >= 3 * 8
    assert verify(str(saved)).ok


def test_verify_catches_bytes_that_decode_but_differ_from_what_was_saved(saved, tmp_path):
    hashes_file = saved / "zstore.hashes.json"
    original = hashes_file.read_text()
    doc = json.loads(original)
    key = next(iter(doc["objects"]))
    doc["objects"][key] = "0" * 64
    try:
        hashes_file.write_text(json.dumps(doc))
        assert verify(str(saved)).problems == [
            f"{key}: decodes, but not to the bytes that were saved"]
    finally:
        hashes_file.write_text(original)


def test_a_missing_object_is_reported_not_read_as_zeros(saved):
    victim = saved / "small" / "c" / "0"
    raw = victim.read_bytes()
    victim.unlink()
    try:
        assert verify(str(saved)).problems == ["small/c/0: missing"]
        with pytest.raises(zstore.CorruptCheckpointError, match="missing") as raised:
            zstore.load(str(saved))
        assert raised.value.key == "small/c/0" and raised.value.url == str(saved)
    finally:
        victim.write_bytes(raw)
