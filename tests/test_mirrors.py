"""Tiered and replicated series: a CheckpointManager saves each step on its fast tier (a local
folder here), then copies it to its mirrors (moto's S3 server, or another folder) in the
background; reads fall back to a mirror, retention runs per tier, and a copy cut short
never opens as a committed step."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import zstore
from zstore.testing import Faults

CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["zstore", "numpy", "zarr", "fsspec"])
BASE = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)  # 2 MiB


def _state(step: int) -> dict:
    """A fine-tune's step: a frozen base, a trained head, a step counter."""
    return {"base": BASE, "head": np.full((16, 1024), step, np.float32), "step": step}


def _same(state: dict, step: int) -> bool:
    return (np.array_equal(state["base"], BASE) and (state["head"] == step).all()
            and state["step"] == step)


def _folder_mirror(tmp_path: pathlib.Path, **retention) -> zstore.Mirror:
    return zstore.Mirror(str(tmp_path / "mirror"), **retention)


def _s3_mirror(s3) -> zstore.Mirror:
    return zstore.Mirror(s3.url("run"), storage_options=s3.storage_options)


def _data_objects(step: pathlib.Path, array: str) -> list[pathlib.Path]:
    return sorted(p for p in (step / array / "c").rglob("*") if p.is_file())


@dataclass
class _RefusePutsAfter(Faults):
    """Let the first ``allowed`` PUTs through, then answer every PUT 403 (AccessDenied)."""

    allowed: int = 3

    def draw(self, method: str) -> str | None:
        with self._lock:
            if method == "PUT" and self.allowed > 0:
                self.allowed -= 1
                return None
        return super().draw(method)


def _restore_with_warnings(mgr: zstore.CheckpointManager, **kwargs) -> tuple:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step, state = mgr.restore(**kwargs)
    return step, state, [str(w.message) for w in caught if w.category is RuntimeWarning]


# saving


def test_a_save_returns_once_the_fast_tier_committed_and_wait_once_the_mirror_did(
        tmp_path, s3, moto_s3):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=[_s3_mirror(s3)])
    moto_s3.faults = Faults(rate=1.0, kinds=("slow",), delay=0.25, methods=("PUT",))
    try:
        info = mgr.save(1, _state(1))  # the mirror's PUTs take 0.25 s each from now on
        assert info.url == mgr.url(1) and _same(zstore.load(mgr.url(1)), 1)
        with pytest.raises((zstore.CheckpointNotFoundError, zstore.IncompleteCheckpointError)):
            zstore.open(s3.url("run/step-1"), storage_options=s3.storage_options)
        mgr.wait()
    finally:
        moto_s3.faults = Faults()
    assert _same(zstore.load(s3.url("run/step-1"), storage_options=s3.storage_options), 1)
    assert mgr.tiers() == {1: [mgr.root, s3.url("run")]}


def test_wait_reraises_a_failed_copy_and_the_fast_step_stays_committed(tmp_path, moto_s3):
    nowhere = zstore.Mirror("s3://no-such-bucket-for-mirrors/run",
                            storage_options=moto_s3.storage_options)
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=[nowhere])
    with pytest.warns(RuntimeWarning, match="mirroring step 1 failed"):
        mgr.save(1, _state(1), blocking=False).result()  # the save itself succeeded
        with pytest.raises(zstore.ZStoreError, match="bucket does not exist") as raised:
            mgr.wait()
    notes = "\n".join(raised.value.__notes__)
    assert f"mirroring step 1 to {nowhere.url!r}" in notes and mgr.root in notes
    mgr.wait()  # seen once, the error is gone
    step, state = mgr.restore()
    assert step == 1 and _same(state, 1)


def test_a_copy_failing_midway_never_opens_and_is_tried_again_before_the_next(
        tmp_path, s3, moto_s3):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), keep_last=1,
                                   mirrors=[_s3_mirror(s3)])
    # the mirror step's lease, its placeholder zarr.json and one object land, then no more
    moto_s3.faults = _RefusePutsAfter(rate=1.0, kinds=("403",), methods=("PUT",), allowed=3)
    try:
        with pytest.warns(RuntimeWarning), pytest.raises(zstore.StorageAccessError):
            mgr.save(1, _state(1))
            mgr.wait()
    finally:
        moto_s3.faults = Faults()
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.open(s3.url("run/step-1"), storage_options=s3.storage_options)
    moto_s3.faults = Faults(rate=1.0, kinds=("403",), methods=("PUT",))  # still down
    try:
        with pytest.warns(RuntimeWarning), pytest.raises(zstore.StorageAccessError):
            mgr.save(2, _state(2))  # step 1's copy is tried again first: both fail
            mgr.wait()
    finally:
        moto_s3.faults = Faults()
    assert mgr.tiers() == {1: [mgr.root], 2: [mgr.root]}  # keep_last=1 waits for the copies
    mgr.save(3, _state(3))  # the mirror is back: steps 1 and 2 are copied, then 3
    mgr.wait()
    for step in (1, 2, 3):
        assert _same(zstore.load(s3.url(f"run/step-{step}"), storage_options=s3.storage_options),
                     step)
    assert mgr.tiers() == {1: [s3.url("run")], 2: [s3.url("run")], 3: [mgr.root, s3.url("run")]}


def _save_and_mirror(fast: str, mirror_url: str, options: dict) -> None:
    mgr = zstore.CheckpointManager(fast, mirrors=[zstore.Mirror(mirror_url,
                                                                storage_options=options)])
    mgr.save(1, _state(1))
    mgr.wait()


def test_a_copy_killed_midway_never_opens_and_the_next_save_mirrors(tmp_path, s3, moto_s3):
    mirror, fast = _s3_mirror(s3), str(tmp_path / "fast")
    moto_s3.faults = Faults(rate=1.0, kinds=("slow",), delay=0.3, methods=("PUT",))
    s3.wire.clear()  # the log is the server's: it holds the earlier tests' requests
    try:
        child = CTX.Process(target=_save_and_mirror, args=(fast, mirror.url, s3.storage_options))
        child.start()
        deadline = time.monotonic() + 30
        while not any(m == "PUT" and ("/step-1/head/c/" in p or "/step-1/base/c/" in p)
                      for m, p, _ in list(s3.wire.requests)):
            assert time.monotonic() < deadline and child.is_alive()
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)  # some objects copied, the commit marker not yet
        child.join(30)
    finally:
        moto_s3.faults = Faults()
    assert child.exitcode == -signal.SIGKILL
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.open(s3.url("run/step-1"), storage_options=s3.storage_options)
    mgr = zstore.CheckpointManager(fast, mirrors=[mirror])
    assert mgr.tiers() == {1: [fast]}
    mgr.save(2, _state(2))
    mgr.wait()
    assert _same(zstore.load(s3.url("run/step-2"), storage_options=s3.storage_options), 2)


def test_unchanged_objects_are_copied_on_the_mirrors_server(tmp_path, s3):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=[_s3_mirror(s3)])
    mgr.save(1, _state(1))
    mgr.wait()
    s3.wire.clear()
    mgr.save(2, _state(2))  # only the head changed
    mgr.wait()
    head = _state(2)["head"].nbytes
    assert s3.wire.copies >= 1  # the base's objects: CopyObject from the mirror's step 1
    assert s3.wire.bytes_received < head + 64 * 1024 < BASE.nbytes
    assert s3.wire.bytes_sent < 64 * 1024  # nothing downloaded to be uploaded again
    assert _same(zstore.load(s3.url("run/step-2"), storage_options=s3.storage_options), 2)


# listing and retention


def test_steps_lists_the_steps_committed_on_any_tier(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), keep_last=1,
                                   mirrors=[_folder_mirror(tmp_path)])
    for step in (1, 2, 3):
        mgr.save(step, _state(step), blocking=False)
    mgr.wait()
    mirror = str(tmp_path / "mirror")
    assert mgr.steps() == [1, 2, 3] and mgr.latest_step() == 3
    assert mgr.tiers() == {1: [mirror], 2: [mirror], 3: [mgr.root, mirror]}


def test_each_tier_keeps_steps_by_its_own_retention_rules(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), keep_last=1,
                                   mirrors=[_folder_mirror(tmp_path, keep_last=3)])
    for step in (1, 2, 3, 4):
        mgr.save(step, _state(step), blocking=False)
    mgr.wait()
    assert zstore.CheckpointManager(mgr.root).steps() == [4]
    assert zstore.CheckpointManager(str(tmp_path / "mirror")).steps() == [2, 3, 4]


def test_the_fast_tier_keeps_a_step_until_its_copy_to_the_mirror_finished(tmp_path, s3,
                                                                          moto_s3):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), keep_last=1, mirrors=[_s3_mirror(s3)])
    moto_s3.faults = Faults(rate=1.0, kinds=("slow",), delay=0.1, methods=("PUT",))
    try:
        for step in (1, 2, 3):
            mgr.save(step, _state(step))  # committed locally; the copies queue behind
        assert mgr.apply_retention() == []  # every step is still a copy's source
        assert zstore.CheckpointManager(mgr.root).steps() == [1, 2, 3]
        mgr.wait()  # no copy lost its source
    finally:
        moto_s3.faults = Faults()
    assert zstore.CheckpointManager(mgr.root).steps() == [3]
    assert mgr.tiers() == {1: [s3.url("run")], 2: [s3.url("run")], 3: [mgr.root, s3.url("run")]}


def test_delete_removes_a_step_from_every_tier(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=[_folder_mirror(tmp_path)])
    for step in (1, 2):
        mgr.save(step, _state(step))
    mgr.wait()
    mgr.delete(1)
    assert mgr.tiers() == {2: [mgr.root, str(tmp_path / "mirror")]}
    assert not (tmp_path / "fast" / "step-1").exists()
    assert not (tmp_path / "mirror" / "step-1").exists()


def test_ls_with_mirrors_shows_which_tiers_hold_each_step(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), keep_last=1,
                                   mirrors=[_folder_mirror(tmp_path)])
    for step in (1, 2):
        mgr.save(step, _state(step))
    mgr.wait()
    mirror = str(tmp_path / "mirror")
    out = subprocess.run([sys.executable, "-m", "zstore", "ls", mgr.root, "--mirror", mirror],
                         capture_output=True, text=True, check=True).stdout
    lines = [line.split() for line in out.splitlines() if line.strip()]
    assert lines[1][:2] == ["step-2", "committed"]  # the root's own listing, as without --mirror
    tiers = lines[lines.index(["step", mgr.root, mirror]) + 1:]
    assert tiers == [["step-1", "-", "committed"], ["step-2", "committed", "committed"]]


# restoring


def test_a_lost_fast_tier_restores_the_newest_step_from_the_mirror(tmp_path):
    mirrors = [_folder_mirror(tmp_path)]
    with zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=mirrors) as mgr:
        for step in (1, 2):
            mgr.save(step, _state(step))
    shutil.rmtree(tmp_path / "fast")  # the machine and its disk are gone
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=mirrors)
    assert mgr.steps() == [1, 2]
    step, state, warned = _restore_with_warnings(mgr)
    assert step == 2 and _same(state, 2) and not warned  # nothing damaged: only not there
    mgr.save(3, _state(3))  # the series goes on, on both tiers
    mgr.wait()
    assert mgr.tiers()[3] == [mgr.root, str(tmp_path / "mirror")]


def test_a_damaged_fast_copy_is_restored_from_the_mirror_with_a_warning(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=[_folder_mirror(tmp_path)])
    mgr.save(1, _state(1))
    mgr.wait()
    damaged = _data_objects(tmp_path / "fast" / "step-1", "head")[0]
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped bit fails its chunk's crc32c
    damaged.write_bytes(bytes(raw))
    step, state, warned = _restore_with_warnings(mgr)
    assert step == 1 and _same(state, 1)
    assert len(warned) == 1 and "CorruptCheckpointError" in warned[0] and "crc32c" in warned[0]
    assert mgr.root in warned[0] and str(tmp_path / "mirror") in warned[0]


def test_a_fast_copy_with_an_object_cut_short_is_passed_over_before_loading(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=[_folder_mirror(tmp_path)])
    mgr.save(1, _state(1))
    mgr.wait()
    short = _data_objects(tmp_path / "fast" / "step-1", "base")[0]
    short.write_bytes(short.read_bytes()[:-100])  # a copy cut short: the listing shows it
    step, state, warned = _restore_with_warnings(mgr)
    assert step == 1 and _same(state, 1)
    assert len(warned) == 1 and "cut short" in warned[0] and "'base'" in warned[0]


def test_a_fast_copy_missing_an_object_is_restored_from_the_mirror_with_a_warning(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=[_folder_mirror(tmp_path)])
    mgr.save(1, _state(1))
    mgr.wait()
    _data_objects(tmp_path / "fast" / "step-1", "base")[0].unlink()
    step, state, warned = _restore_with_warnings(mgr)
    assert step == 1 and _same(state, 1)
    assert len(warned) == 1 and "missing" in warned[0]


def test_a_load_into_targets_that_meets_fast_tier_damage_is_redone_from_the_mirror(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    mgr = zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=[_folder_mirror(tmp_path)])
    mgr.save(1, {"model": model.state_dict(), "epoch": 3})
    mgr.wait()
    # the second layer's weights: a load meets them after filling other tensors, or not
    weights = next((tmp_path / "fast" / "step-1").rglob("*.weight/c/1/0/0"))
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    target = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    step, rest, warned = _restore_with_warnings(mgr, into={"model": target})
    assert step == 1 and rest == {"epoch": 3} and len(warned) == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 target.state_dict().values()))


# settings


@pytest.mark.parametrize("setting", [{"keep_last": 0}, {"keep_every": -1}, {"keep_last": 1.5},
                                     {"keep_last": True}, {"url": ""}])
def test_bad_mirror_settings_are_refused(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        zstore.Mirror(**{"url": "memory://m/run", **setting})


def test_a_mirror_overlapping_the_fast_tier_is_refused(tmp_path):
    for url in (str(tmp_path / "fast"), str(tmp_path / "fast" / "copies"), str(tmp_path)):
        with pytest.raises(ValueError, match="overlaps"):
            zstore.CheckpointManager(str(tmp_path / "fast"), mirrors=[zstore.Mirror(url)])


def test_a_mirrors_repr_never_shows_its_storage_options():
    mirror = zstore.Mirror("s3://b/run", storage_options={"secret": "hunter2"}, keep_last=3)
    assert "hunter2" not in repr(mirror) and "keep_last=3" in repr(mirror)
