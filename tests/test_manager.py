"""CheckpointManager: step-<n> series, background saves, retention, incremental saves, resume."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid

import numpy as np
import pytest
import zarr

import zstore
from zstore._read import CheckpointEntry
from zstore._series import Step, doomed
from zstore._storage import Location

MARKER = "zstore.commit.json"


def _root() -> str:
    return f"memory://manager/{uuid.uuid4().hex}"


def _state(value: float = 1.0) -> dict:
    return {"w": np.full((64, 32), value, np.float32), "b": np.arange(10, dtype=np.int64),
            "step": int(value), "config": {"lr": 0.1, "name": "run", "dims": (64, 32)}}


def _frozen_base(trained: float) -> dict:
    rng = np.random.default_rng(0)
    return {"base": rng.standard_normal((1024, 1024)).astype(np.float32),  # 4 MiB, frozen
            "head": np.full((16, 1024), trained, np.float32)}


HEAD_BYTES = 16 * 1024 * 4
BASE = _frozen_base(0)["base"]


def _shards(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")


# layout


def test_each_step_is_a_checkpoint_that_zstore_and_plain_zarr_open_on_their_own(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(5, _state(5.0))
    url = str(tmp_path / "run" / "step-5")
    assert mgr.url(5) == url
    assert sorted(os.listdir(tmp_path / "run")) == ["step-5"]
    assert {"zarr.json", MARKER} <= set(os.listdir(url))
    alone = zstore.open(url).load()
    assert np.array_equal(alone["w"], _state(5.0)["w"]) and alone["config"]["dims"] == (64, 32)
    group = zarr.open_group(url, mode="r")
    assert np.array_equal(group["w"][...], _state(5.0)["w"])
    assert np.array_equal(group["b"][...], np.arange(10))


# which steps count


def test_a_step_without_its_commit_marker_is_not_listed_and_restore_takes_the_one_before(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    for step in (1, 2, 3):
        mgr.save(step, _state(step))
    os.remove(tmp_path / "run" / "step-3" / MARKER)  # step 3's save never committed
    assert mgr.steps() == [1, 2] and mgr.latest_step() == 2
    step, state = mgr.restore()
    assert step == 2 and state["step"] == 2 and (state["w"] == 2.0).all()


def test_a_step_whose_root_metadata_changed_after_its_commit_is_not_complete(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(1, _state(1))
    mgr.save(2, _state(2))
    root = tmp_path / "run" / "step-2" / "zarr.json"
    doc = json.loads(root.read_text())
    doc["attributes"]["zstore"]["metadata"] = {"tampered": True}
    root.write_text(json.dumps(doc))  # valid zstore JSON, but not the one the marker hashed
    assert mgr.steps() == [1] and mgr.latest_step() == 1
    assert mgr.restore()[0] == 1
    with pytest.raises(zstore.CorruptCheckpointError, match="commit marker") as raised:
        mgr.restore(step=2)
    assert raised.value.url == mgr.url(2) and raised.value.key == "zarr.json"


def test_a_step_still_being_written_is_not_listed_until_its_marker_lands(monkeypatch):
    mgr = zstore.CheckpointManager(_root())
    mgr.save(1, _state(1))
    real_put_new, release, reached = Location.put_new, threading.Event(), threading.Event()

    async def slow_commit(self, key, data):
        if key == MARKER:
            reached.set()
            await asyncio.to_thread(release.wait, 5)
        await real_put_new(self, key, data)

    monkeypatch.setattr(Location, "put_new", slow_commit)
    future = mgr.save(2, _state(2), blocking=False)
    try:
        assert reached.wait(5)  # everything but the marker of step 2 is written
        assert mgr.steps() == [1] and mgr.latest_step() == 1
        assert mgr.restore()[0] == 1
    finally:
        release.set()
    future.result(timeout=5)
    assert mgr.steps() == [1, 2]


def test_steps_are_ordered_by_number_not_by_name():
    mgr = zstore.CheckpointManager(_root(), keep_last=2)
    for step in (100, 9, 10, 0):
        mgr.save(step, _state())
    assert mgr.steps() == [10, 100] and mgr.latest_step() == 100


def test_folders_that_are_not_zstore_steps_are_ignored_and_never_deleted(tmp_path):
    run = tmp_path / "run"
    mgr = zstore.CheckpointManager(str(run), keep_last=1)
    (run / "step-01").mkdir(parents=True)  # not a step name
    (run / "step-01" / "zarr.json").write_text("{}")
    (run / "step-7").mkdir()  # a step name, but a plain zarr group
    (run / "step-7" / "zarr.json").write_text(
        '{"zarr_format":3,"node_type":"group","attributes":{}}')
    (run / "step-8").mkdir()
    (run / "step-8" / "zarr.json").write_bytes(b"\xff{ truncated")
    (run / "notes.txt").write_text("mine")
    for step in (1, 2, 3):
        mgr.save(step, _state(step))
    assert mgr.steps() == [3]
    assert sorted(os.listdir(run)) == ["notes.txt", "step-01", "step-3", "step-7", "step-8"]


def test_a_step_whose_root_metadata_is_json_of_another_shape_does_not_break_the_series(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(1, _state(1))
    (tmp_path / "run" / "step-2").mkdir()
    (tmp_path / "run" / "step-2" / "zarr.json").write_text(
        '{"zarr_format":3,"node_type":"group","attributes":{"zstore":"a note"}}')
    assert mgr.steps() == [1]
    assert mgr.restore()[0] == 1


# background saves


def test_a_background_save_keeps_the_values_of_the_moment_it_was_called():
    mgr = zstore.CheckpointManager(_root())
    state = _state(1.0)
    state["nested"] = [np.ones(5, np.float64), {"deep": np.zeros((2, 3), np.int32)}]
    mgr.save(1, state, blocking=False)
    state["w"][:] = -1  # the training loop moves on at once
    state["b"] += 100
    state["nested"][0] *= 7
    state["nested"][1]["deep"][...] = 9
    mgr.wait()
    _, restored = mgr.restore()
    assert (restored["w"] == 1.0).all() and np.array_equal(restored["b"], np.arange(10))
    assert (restored["nested"][0] == 1.0).all() and (restored["nested"][1]["deep"] == 0).all()


def test_a_background_error_surfaces_on_the_next_save_then_clears():
    mgr = zstore.CheckpointManager(_root())
    mgr.save(1, _state())
    future = mgr.save(1, _state(), blocking=False)  # step 1 is committed already
    with pytest.raises(zstore.CheckpointCommittedError):
        future.result()
    with pytest.raises(zstore.CheckpointCommittedError) as raised:
        mgr.save(2, _state())
    assert raised.value.url == mgr.url(1)
    assert any("background save of step 1" in note for note in raised.value.__notes__)
    assert mgr.steps() == [1]  # the call that raised saved nothing
    mgr.save(2, _state())  # seen once, the error is gone
    mgr.wait()
    assert mgr.steps() == [1, 2]


def test_wait_reraises_a_background_error_and_counts_the_others():
    mgr = zstore.CheckpointManager(_root(), max_pending=3)
    mgr.save(1, _state())
    mgr.save(2, _state())
    mgr.save(1, _state(), blocking=False)
    mgr.save(3, _state(3), blocking=False)
    mgr.save(2, _state(), blocking=False)
    with pytest.raises(zstore.CheckpointCommittedError) as raised:
        mgr.wait()
    assert raised.value.url == mgr.url(1)
    assert any("step 1" in n and "1 more" in n for n in raised.value.__notes__)
    mgr.wait()  # nothing pending any more
    assert mgr.steps() == [1, 2, 3]


def test_the_next_save_waits_while_max_pending_saves_are_in_flight(monkeypatch):
    mgr = zstore.CheckpointManager(_root(), max_pending=1)
    release = threading.Event()
    real_write = mgr._write

    def slow_write(*args):
        release.wait(5)
        return real_write(*args)

    monkeypatch.setattr(mgr, "_write", slow_write)
    first = mgr.save(1, _state(), blocking=False)
    threading.Timer(0.2, release.set).start()
    mgr.save(2, _state(), blocking=False)  # blocks until the first is done
    assert first.done() and first.exception() is None
    mgr.wait()
    assert mgr.steps() == [1, 2]


def test_leaving_the_context_waits_for_background_saves():
    root = _root()
    with zstore.CheckpointManager(root) as mgr:
        future = mgr.save(1, _state(), blocking=False)
    assert future.done()
    assert zstore.CheckpointManager(root).steps() == [1]


# retention


def test_keep_last_keeps_the_newest_steps():
    mgr = zstore.CheckpointManager(_root(), keep_last=2)
    for step in range(1, 6):
        mgr.save(step, _state(step), blocking=False)
    mgr.wait()
    assert mgr.steps() == [4, 5]


def test_keep_every_also_keeps_the_multiples():
    mgr = zstore.CheckpointManager(_root(), keep_last=2, keep_every=2)
    for step in range(1, 8):
        mgr.save(step, _state(step))
    assert mgr.steps() == [2, 4, 6, 7]


def test_retention_never_deletes_the_newest_committed_step():
    mgr = zstore.CheckpointManager(_root(), keep_last=1)
    mgr.save(5, _state(5))
    info = mgr.save(3, _state(3))  # an older step saved late: it is the one that goes
    assert info.url.endswith("step-3")
    assert mgr.steps() == [5] and mgr.restore()[1]["step"] == 5


def _steps(*specs: tuple[int, bool]) -> list[Step]:
    return [Step(n, CheckpointEntry(f"step-{n}", f"x/step-{n}", done, 0, 0.0)) for n, done in specs]


def test_retention_rules_as_a_pure_function():
    assert doomed([], 1, None) == []
    assert doomed(_steps((1, False), (2, False)), 1, 1) == []  # nothing committed: delete nothing
    steps = _steps((1, True), (2, False), (3, True), (4, True), (5, False))
    assert doomed(steps, 1, None) == [1, 2, 3]  # 5 is newer than the newest committed: kept
    assert doomed(steps, 2, None) == [1, 2]
    assert doomed(steps, None, 3) == [2]  # keep_every alone keeps every committed step
    assert doomed(steps, None, None) == [2]
    assert doomed(steps, 1, 3) == [1, 2]
    assert doomed(steps, 10, None) == [2]
    only = _steps((7, True))
    assert doomed(only, 1, 1000) == [] and doomed(only, None, 2) == []


def test_retention_removes_a_crashed_steps_leftovers(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"), keep_last=5)
    mgr.save(1, _state())
    mgr.save(2, _state())
    os.remove(tmp_path / "run" / "step-2" / MARKER)
    mgr.save(3, _state())
    assert mgr.steps() == [1, 3]
    assert not (tmp_path / "run" / "step-2").exists()


def test_retention_keeps_incomplete_steps_newer_than_the_newest_committed(tmp_path):
    run = tmp_path / "run"
    zstore.CheckpointManager(str(run)).save(3, _state(3))
    os.remove(run / "step-3" / MARKER)  # a save of step 3 that has not committed (yet)
    mgr = zstore.CheckpointManager(str(run), keep_last=1)
    mgr.save(1, _state(1))
    mgr.save(2, _state(2))
    assert mgr.apply_retention() == []
    assert mgr.steps() == [2] and (run / "step-3" / "zarr.json").exists()


def test_retention_spares_an_older_incomplete_step_another_saver_is_still_writing(tmp_path):
    run = tmp_path / "run"
    mgr = zstore.CheckpointManager(str(run), keep_last=1)
    mgr.save(1, _state(1))
    zstore.CheckpointManager(str(run)).save(2, _state(2))
    os.remove(run / "step-2" / MARKER)
    lease = run / "step-2" / "zstore.lease.json"  # held by a live process (this one)
    lease.write_text(json.dumps({"token": "other", "host": socket.gethostname(),
                                 "pid": os.getpid(), "expires": time.time() + 60}))
    mgr.save(3, _state(3))
    assert mgr.steps() == [3] and (run / "step-2" / "zarr.json").exists()
    lease.unlink()  # that saver gave up
    assert mgr.apply_retention() == [2]
    assert not (run / "step-2").exists()


@pytest.mark.parametrize("surfaces_at", ["wait", "next save", "close"])
def test_a_failed_retention_is_reported_as_such_not_as_a_failed_save(tmp_path, monkeypatch,
                                                                      surfaces_at):
    root = str(tmp_path / "run")
    for step in (1, 2):
        zstore.CheckpointManager(root).save(step, _state(step))
    mgr = zstore.CheckpointManager(root, keep_last=1)
    real = Location.remove_all

    async def step_1_cannot_be_deleted(self, keys):
        if keys and self.url.rstrip("/").endswith("step-1"):
            raise OSError(5, "injected: deleting step-1 failed")
        await real(self, keys)

    monkeypatch.setattr(Location, "remove_all", step_1_cannot_be_deleted)
    future = mgr.save(3, _state(3), blocking=False)  # commits, then retention drops 1 and 2
    with pytest.raises(zstore.RetentionError) as raised:
        if surfaces_at == "wait":
            mgr.wait()
        elif surfaces_at == "next save":
            future.exception()  # done, its error not yet seen by the manager
            mgr.save(4, _state(4))
        else:
            mgr.close()
    error = raised.value
    assert error.step == 3 and error.not_deleted == [1] and error.url == root
    assert isinstance(error.errors[1], zstore.StorageFailedError)
    assert error.__cause__ is error.errors[1]
    assert isinstance(error, OSError)  # as the deletion's own error was
    message = "\n".join([str(error), *getattr(error, "__notes__", [])])
    assert "retention after step 3" in message and "[1] could not be deleted" in message
    assert "step 3 is committed" in message and "injected" in message
    assert "background save of step 3" not in message
    monkeypatch.undo()
    assert mgr.steps() == [1, 3]  # step 2 was deleted all the same
    assert zstore.load(mgr.url(3))["step"] == 3  # the save itself committed
    if surfaces_at != "close":
        mgr.save(4, _state(4))  # retention runs again and now deletes step 1 too
        assert mgr.steps() == [4]


# deleting


def test_a_deletion_that_crashes_midway_never_leaves_a_complete_looking_step(tmp_path, monkeypatch):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(1, _state())
    mgr.save(2, _state())
    real = Location.remove_all
    calls = []

    async def crash_after_first(self, keys):
        calls.append(list(keys))
        if len(calls) > 1:
            raise OSError("killed")
        await real(self, keys)

    monkeypatch.setattr(Location, "remove_all", crash_after_first)
    with pytest.raises(OSError):
        mgr.delete(1)
    assert calls[0] == [MARKER]
    monkeypatch.undo()
    assert (tmp_path / "run" / "step-1" / "zarr.json").exists()  # the rest is still there
    assert mgr.steps() == [2]
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.open(mgr.url(1))
    mgr.delete(1)  # an incomplete step is deleted without force
    assert not (tmp_path / "run" / "step-1").exists()


def test_a_deletion_removes_the_commit_marker_first_and_the_root_metadata_last(tmp_path,
                                                                                monkeypatch):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(1, _state())
    mgr.save(2, _state())
    real, calls = Location.remove_all, []

    async def recorded(self, keys):
        calls.append(sorted(keys))
        await real(self, keys)

    monkeypatch.setattr(Location, "remove_all", recorded)
    mgr.delete(1)
    assert calls[0] == [MARKER] and calls[-1] == ["zarr.json"]
    assert "zarr.json" not in calls[1] and len(calls) == 3
    assert not (tmp_path / "run" / "step-1").exists()


def test_the_newest_committed_step_is_deleted_only_with_force():
    mgr = zstore.CheckpointManager(_root())
    mgr.save(1, _state())
    mgr.save(2, _state())
    with pytest.raises(ValueError, match="newest committed"):
        mgr.delete(2)
    assert mgr.steps() == [1, 2]
    mgr.delete(1)
    mgr.delete(2, force=True)
    assert mgr.steps() == []
    with pytest.raises(zstore.CheckpointNotFoundError):
        mgr.delete(7)


# incremental saves


def test_a_frozen_base_is_copied_on_the_server_not_uploaded(s3):
    mgr = zstore.CheckpointManager(s3.url("run"), storage_options=s3.storage_options)
    first = mgr.save(1, _frozen_base(1.0))
    assert first.copied_objects == 0 and first.uploaded_bytes == first.stored_bytes
    s3.wire.clear()
    second = mgr.save(2, _frozen_base(2.0))
    assert second.copied_objects >= 1 and s3.wire.copies == second.copied_objects
    assert s3.wire.bytes_received < HEAD_BYTES + 256 * 1024 < first.stored_bytes
    assert s3.wire.bytes_sent < 256 * 1024  # nor downloaded to be uploaded again
    assert second.copied_bytes > first.stored_bytes - HEAD_BYTES
    assert second.uploaded_bytes <= s3.wire.bytes_received
    mgr.delete(1)  # the new step owns its copies
    assert mgr.steps() == [2]
    _, state = mgr.restore()
    assert np.array_equal(state["base"], BASE) and (state["head"] == 2.0).all()


def test_locally_unchanged_objects_are_hard_links_and_survive_deleting_the_old_step(tmp_path):
    run = tmp_path / "run"
    mgr = zstore.CheckpointManager(str(run))
    mgr.save(1, _frozen_base(1.0))
    info = mgr.save(2, _frozen_base(2.0))
    assert info.copied_objects >= 1 and info.copied_bytes > 0
    old, new = _shards(run / "step-1" / "base"), _shards(run / "step-2" / "base")
    assert new and [p.relative_to(run / "step-2") for p in new] == \
        [p.relative_to(run / "step-1") for p in old]
    assert all(os.stat(p).st_nlink == 2 and os.path.samefile(p, q) for p, q in zip(new, old))
    assert all(os.stat(p).st_nlink == 1 for p in _shards(run / "step-2" / "head"))  # rewritten
    mgr.delete(1)
    assert all(os.stat(p).st_nlink == 1 for p in new)
    step, state = mgr.restore()
    assert step == 2 and np.array_equal(state["base"], BASE) and (state["head"] == 2.0).all()


def test_incremental_off_uploads_everything(tmp_path):
    run = tmp_path / "run"
    mgr = zstore.CheckpointManager(str(run), incremental=False)
    mgr.save(1, _frozen_base(1.0))
    info = mgr.save(2, _frozen_base(1.0))
    assert info.copied_objects == 0 and info.copied_bytes == 0
    assert info.uploaded_bytes == info.stored_bytes > BASE.nbytes // 2
    assert all(os.stat(p).st_nlink == 1 for p in _shards(run / "step-2"))


def test_retention_deleting_each_base_leaves_every_kept_step_whole(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"), keep_last=1)
    for step in (1, 2, 3):
        info = mgr.save(step, _frozen_base(float(step)), blocking=False)
    mgr.wait()
    assert info.result().copied_objects >= 1  # copied from step 2, deleted right after
    assert mgr.steps() == [3]
    step, state = mgr.restore()
    assert step == 3 and np.array_equal(state["base"], BASE) and (state["head"] == 3.0).all()


def test_a_save_after_force_deleting_the_newest_step_copies_from_the_one_before(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(1, _frozen_base(1.0))
    mgr.save(2, _frozen_base(2.0))
    mgr.delete(2, force=True)
    info = mgr.save(3, _frozen_base(3.0))
    assert info.copied_objects >= 1
    assert np.array_equal(mgr.restore()[1]["base"], BASE)


def test_a_save_still_commits_when_the_previous_step_lost_an_object(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(1, _frozen_base(1.0))
    os.remove(_shards(tmp_path / "run" / "step-1" / "base")[0])  # e.g. a lifecycle rule
    mgr.save(2, _frozen_base(2.0))
    assert mgr.latest_step() == 2
    assert np.array_equal(mgr.restore()[1]["base"], BASE)


# resuming


def test_restore_a_given_step_with_its_python_state():
    mgr = zstore.CheckpointManager(_root())
    rng = np.random.default_rng(7)
    rng.standard_normal(3)
    state = {"w": np.ones(3), "rng": rng.bit_generator.state, "epoch": 3, "loss": 0.25,
             "name": "run-a", "history": [0.5, float("inf"), None, "done", (1, 2)],
             "nested": {"a": {"b": [1, (2.5, "x")]}, 7: "int key"}}
    mgr.save(10, state)
    mgr.save(20, {"w": np.zeros(3), "epoch": 6})
    assert mgr.restore()[0] == 20 and mgr.restore()[1]["epoch"] == 6
    step, restored = mgr.restore(step=10)
    assert step == 10
    assert restored["rng"] == rng.bit_generator.state  # 128-bit ints survive
    assert restored["rng"]["state"]["state"] > 2**64
    assert restored["history"] == state["history"] and restored["nested"] == state["nested"]
    assert type(restored["epoch"]) is int and type(restored["loss"]) is float
    assert type(restored["history"][4]) is tuple and restored["name"] == "run-a"
    again = np.random.default_rng()
    again.bit_generator.state = restored["rng"]
    assert again.standard_normal() == rng.standard_normal()


def test_restoring_a_step_that_is_missing_or_uncommitted_names_the_problem(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(1, _state())
    mgr.save(2, _state())
    os.remove(tmp_path / "run" / "step-2" / MARKER)
    with pytest.raises(zstore.IncompleteCheckpointError):
        mgr.restore(step=2)
    with pytest.raises(zstore.CheckpointNotFoundError):
        mgr.restore(step=99)


@pytest.mark.parametrize("step", [-1, "3", True, 1.0, None])
def test_steps_are_non_negative_ints(step):
    mgr = zstore.CheckpointManager(_root())
    with pytest.raises(ValueError, match="step"):
        mgr.save(step, _state())
    if step is not None:  # restore(step=None) means the newest
        mgr.save(1, _state())
        with pytest.raises(ValueError, match="step"):
            mgr.restore(step=step)
    assert mgr.steps() == ([] if step is None else [1])


@pytest.mark.parametrize("setting", [{"keep_last": 0}, {"keep_last": -1}, {"keep_every": 0},
                                     {"keep_last": 2.0}, {"max_pending": 0}])
def test_bad_settings_are_refused(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        zstore.CheckpointManager(_root(), **setting)


def test_an_empty_root_has_nothing_to_restore(tmp_path):
    for root in (_root(), str(tmp_path / "nothing-yet")):
        mgr = zstore.CheckpointManager(root)
        assert mgr.steps() == [] and mgr.latest_step() is None
        with pytest.raises(zstore.CheckpointNotFoundError, match="no committed step") as raised:
            mgr.restore()
        assert raised.value.url == mgr.root


# torch (each test skips without it)


def test_a_background_save_snapshots_torch_tensors_too():
    torch = pytest.importorskip("torch")
    mgr = zstore.CheckpointManager(_root())
    model = torch.nn.Linear(8, 4)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    half = torch.ones(5, dtype=torch.bfloat16)
    counter = torch.tensor(3)
    mgr.save(1, {"model": model.state_dict(), "t": t, "cols": t[:, 1], "half": half,
                 "counter": counter}, blocking=False)
    with torch.no_grad():
        model.weight.add_(100)
        model.bias.zero_()
    t.add_(100)
    half.mul_(3)
    counter.add_(1)
    mgr.wait()
    _, restored = mgr.restore()
    assert all(torch.equal(restored["model"][k], v) for k, v in expected.items())
    assert torch.equal(restored["t"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert torch.equal(restored["cols"], torch.tensor([1.0, 5.0, 9.0]))
    assert torch.equal(restored["half"], torch.ones(5, dtype=torch.bfloat16))
    assert int(restored["counter"]) == 3


def test_restore_into_a_model_and_optimizer_in_place():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    mgr = zstore.CheckpointManager(_root())
    rng = torch.get_rng_state()
    mgr.save(1, {"model": model.state_dict(), "optim": opt.state_dict(), "rng": rng, "step": 1})
    fresh = torch.nn.Linear(6, 3)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.5)
    pointer = fresh.weight.data_ptr()
    step, rest = mgr.restore(into={"model": fresh, "optim": fresh_opt})
    assert step == 1 and set(rest) == {"rng", "step"}
    assert rest["rng"].dtype == torch.uint8 and torch.equal(rest["rng"], rng) and rest["step"] == 1
    assert fresh.weight.data_ptr() == pointer
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    saved, loaded = opt.state_dict(), fresh_opt.state_dict()
    assert loaded["param_groups"][0]["lr"] == 0.01
    assert set(loaded["state"]) == set(saved["state"]) == {0, 1}
    for index, entry in saved["state"].items():
        assert set(loaded["state"][index]) == set(entry)
        for key, value in entry.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)
    assert saved["state"][0]["step"].ndim == 0
    torch.set_rng_state(rest["rng"])
    after = torch.rand(3)
    torch.set_rng_state(rng)
    assert torch.equal(after, torch.rand(3))


def test_restore_into_a_module_saved_as_a_plain_state_dict():
    torch = pytest.importorskip("torch")
    source, target = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    mgr = zstore.CheckpointManager(_root())
    mgr.save(3, source.state_dict())
    pointer = target.weight.data_ptr()
    assert mgr.restore(into=target) == (3, {})
    assert target.weight.data_ptr() == pointer
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)


def test_restore_into_checks_every_target_before_changing_anything():
    torch = pytest.importorskip("torch")
    mgr = zstore.CheckpointManager(_root())
    mgr.save(1, {"model": torch.nn.Linear(2, 2).state_dict()})
    target = torch.nn.Linear(2, 2)
    before = target.weight.clone()
    with pytest.raises(KeyError, match="optim"):
        mgr.restore(into={"model": target, "optim": torch.optim.SGD(target.parameters(), 0.1)})
    with pytest.raises(TypeError, match="cannot fill"):
        mgr.restore(into={"model": object()})
    assert torch.equal(target.weight, before)


def test_a_closed_manager_refuses_to_save():
    mgr = zstore.CheckpointManager(_root())
    mgr.close()
    with pytest.raises(ValueError, match="closed"):
        mgr.save(1, _state())


def test_an_error_leaving_the_block_is_not_masked_by_a_failed_background_save():
    root = _root()
    zstore.CheckpointManager(root).save(1, _state())
    with pytest.raises(KeyError, match="the user's own"):
        with zstore.CheckpointManager(root) as mgr:
            mgr.save(1, _state(), blocking=False)  # fails: step 1 exists
            raise KeyError("the user's own")


def test_background_saves_copy_into_the_buffers_of_a_finished_save(tmp_path):
    import tracemalloc

    state = {"w": np.arange(2 << 20, dtype=np.float32)}  # 8 MiB
    with zstore.CheckpointManager(str(tmp_path / "run"), incremental=False) as mgr:
        for step in (1, 2):  # with one save pending at most, two sets of buffers take turns
            mgr.save(step, state, blocking=False)
            mgr.wait()
        state["w"][0] = 3.0
        tracemalloc.start()
        try:
            mgr.save(3, state, blocking=False)
            _, copying = tracemalloc.get_traced_memory()
            mgr.wait()
        finally:
            tracemalloc.stop()
        assert copying < 1 << 20, copying  # no new 8 MiB buffer: a finished save's was reused
        state["w"][0] = 4.0  # the snapshot is the manager's own copy, not a view of ``state``
        assert mgr.restore(3)[1]["w"][0] == 3.0
