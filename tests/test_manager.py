"""CheckpointManager: step-<n> series, background saves, retention, incremental saves, resume."""

from __future__ import annotations

import json
import os
import threading
import uuid

import numpy as np
import pytest
import zarr

import zstore
from zstore.series import Step, doomed
from zstore.catalog import CheckpointEntry
from zstore.storage import Location


def _root() -> str:
    return f"memory://manager/{uuid.uuid4().hex[:8]}"


def _state(value: float = 1.0) -> dict:
    return {"w": np.full((64, 32), value, np.float32), "b": np.arange(10, dtype=np.int64),
            "step": int(value), "config": {"lr": 0.1, "name": "run", "dims": (64, 32)}}


def test_each_step_is_a_checkpoint_that_plain_zarr_reads(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(5, _state(5.0))
    url = str(tmp_path / "run" / "step-5")
    assert mgr.url(5) == url
    assert np.array_equal(zstore.open(url)["w"][...], _state(5.0)["w"])
    group = zarr.open_group(url, mode="r")
    assert np.array_equal(group["b"][...], np.arange(10))


def test_steps_and_latest_skip_steps_that_never_committed(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    for step in (1, 2, 3):
        mgr.save(step, _state(step))
    os.remove(tmp_path / "run" / "step-3" / "zstore.commit.json")  # step 3 crashed
    root = tmp_path / "run" / "step-2" / "zarr.json"
    doc = json.loads(root.read_text())
    doc["attributes"]["zstore"]["metadata"] = {"tampered": True}
    root.write_text(json.dumps(doc))  # step 2's metadata changed after its commit
    assert mgr.steps() == [1] and mgr.latest_step() == 1
    step, state = mgr.restore()
    assert step == 1 and state["step"] == 1


def test_a_background_save_keeps_the_values_of_the_moment_it_was_called():
    mgr = zstore.CheckpointManager(_root())
    state = _state(1.0)
    mgr.save(1, state, blocking=False)
    state["w"][:] = -1  # the training loop moves on at once
    state["b"] += 100
    mgr.wait()
    _, restored = mgr.restore()
    assert (restored["w"] == 1.0).all() and np.array_equal(restored["b"], np.arange(10))


def test_a_background_save_snapshots_torch_tensors_too():
    torch = pytest.importorskip("torch")
    mgr = zstore.CheckpointManager(_root())
    model = torch.nn.Linear(8, 4)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    mgr.save(1, {"model": model.state_dict()}, blocking=False)
    with torch.no_grad():
        model.weight.add_(100)
    mgr.wait()
    _, restored = mgr.restore()
    assert all(torch.equal(restored["model"][k], v) for k, v in expected.items())


def test_bad_input_is_refused_in_the_callers_thread_before_anything_is_queued():
    mgr = zstore.CheckpointManager(_root())
    with pytest.raises(zstore.InvalidKeyError):
        mgr.save(1, {"../x": np.ones(2)}, blocking=False)
    with pytest.raises(zstore.UnsupportedTypeError):
        mgr.save(1, {"x": object()}, blocking=False)
    assert mgr.steps() == []


def test_a_background_error_surfaces_on_the_next_call_and_then_clears():
    mgr = zstore.CheckpointManager(_root())
    mgr.save(1, _state())
    future = mgr.save(1, _state(), blocking=False)  # step 1 is committed already
    with pytest.raises(zstore.CheckpointExistsError):
        future.result()
    with pytest.raises(zstore.CheckpointExistsError) as raised:
        mgr.save(2, _state())
    assert any("step 1" in note for note in raised.value.__notes__)
    mgr.save(2, _state())  # seen once, the error is gone
    assert mgr.steps() == [1, 2]


def test_wait_reraises_a_background_error():
    mgr = zstore.CheckpointManager(_root())
    mgr.save(1, _state())
    mgr.save(1, _state(), blocking=False)
    with pytest.raises(zstore.CheckpointExistsError):
        mgr.wait()
    mgr.wait()  # nothing pending any more


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
    assert first.done()
    mgr.wait()
    assert mgr.steps() == [1, 2]


def test_keep_last_and_keep_every():
    mgr = zstore.CheckpointManager(_root(), keep_last=2)
    for step in range(1, 6):
        mgr.save(step, _state(step), blocking=False)
    mgr.wait()
    assert mgr.steps() == [4, 5]
    mgr = zstore.CheckpointManager(_root(), keep_last=2, keep_every=2)
    for step in range(1, 8):
        mgr.save(step, _state(step))
    assert mgr.steps() == [2, 4, 6, 7]


def _steps(*specs: tuple[int, bool]) -> list[Step]:
    return [Step(n, CheckpointEntry(f"step-{n}", f"x/step-{n}", done, 0, 0.0)) for n, done in specs]


def test_retention_rules_as_a_pure_function():
    assert doomed([], 1, None) == []
    assert doomed(_steps((1, False), (2, False)), 1, None) == []  # nothing committed: keep all
    steps = _steps((1, True), (2, False), (3, True), (4, True), (5, False))
    assert doomed(steps, 1, None) == [1, 2, 3]  # 5 may still be writing: kept
    assert doomed(steps, None, 3) == [2]  # keep_every alone keeps every committed step
    assert doomed(steps, 2, 1) == [2]
    assert 4 not in doomed(steps, 1, 1000)  # the newest committed step, always


def test_retention_removes_a_crashed_steps_leftovers(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"), keep_last=5)
    mgr.save(1, _state())
    mgr.save(2, _state())
    os.remove(tmp_path / "run" / "step-2" / "zstore.commit.json")
    mgr.save(3, _state())
    assert mgr.steps() == [1, 3]
    assert not (tmp_path / "run" / "step-2").exists()


def test_a_deletion_that_crashes_midway_never_leaves_a_complete_looking_step(tmp_path, monkeypatch):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(1, _state())
    mgr.save(2, _state())
    real = Location.remove_all
    calls = []

    async def crash_after_first(self, keys):
        calls.append(keys)
        if len(calls) > 1:
            raise OSError("killed")
        await real(self, keys)

    monkeypatch.setattr(Location, "remove_all", crash_after_first)
    with pytest.raises(OSError):
        mgr.delete(1)
    assert calls[0] == ["zstore.commit.json"]
    monkeypatch.undo()
    assert mgr.steps() == [2]
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.open(mgr.url(1))


def test_the_newest_committed_step_is_deleted_only_with_force():
    mgr = zstore.CheckpointManager(_root())
    mgr.save(1, _state())
    mgr.save(2, _state())
    with pytest.raises(ValueError, match="newest committed"):
        mgr.delete(2)
    mgr.delete(1)
    mgr.delete(2, force=True)
    assert mgr.steps() == []
    with pytest.raises(zstore.CheckpointNotFoundError):
        mgr.delete(7)


def _frozen_base(trained: float) -> dict:
    rng = np.random.default_rng(0)
    return {"base": rng.standard_normal((1024, 1024)).astype(np.float32),  # 4 MiB, frozen
            "head": np.full((16, 1024), trained, np.float32)}


def test_a_frozen_base_is_copied_on_the_server_not_uploaded(s3):
    mgr = zstore.CheckpointManager(s3.url("run"), storage_options=s3.storage_options)
    first = mgr.save(1, _frozen_base(1.0))
    s3.wire.clear()
    second = mgr.save(2, _frozen_base(2.0))
    head_bytes = 16 * 1024 * 4
    assert second.copied_objects >= 1 and s3.wire.copies == second.copied_objects
    assert s3.wire.bytes_received < head_bytes + 256 * 1024 < first.stored_bytes
    mgr.delete(1)  # the new step owns its copies
    _, state = mgr.restore()
    assert np.array_equal(state["base"], _frozen_base(0)["base"])
    assert (state["head"] == 2.0).all()


def test_locally_unchanged_objects_are_hard_links_and_survive_deleting_the_old_step(tmp_path):
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(1, _frozen_base(1.0))
    info = mgr.save(2, _frozen_base(2.0))
    assert info.copied_objects >= 1
    linked = [p for p in (tmp_path / "run" / "step-2" / "base").rglob("*")
              if p.is_file() and p.name != "zarr.json"]
    assert linked and all(os.stat(p).st_nlink == 2 for p in linked)
    mgr.delete(1)
    assert np.array_equal(mgr.restore()[1]["base"], _frozen_base(0)["base"])


def test_incremental_off_uploads_everything():
    mgr = zstore.CheckpointManager(_root(), incremental=False)
    mgr.save(1, _frozen_base(1.0))
    assert mgr.save(2, _frozen_base(1.0)).copied_objects == 0


def test_restore_a_given_step_with_its_python_state():
    mgr = zstore.CheckpointManager(_root())
    rng = np.random.default_rng(7)
    rng.standard_normal(3)
    state = {"w": np.ones(3), "rng": rng.bit_generator.state, "epoch": 3,
             "history": [0.5, float("inf"), None, "done", (1, 2)]}
    mgr.save(10, state)
    mgr.save(20, {"w": np.zeros(3)})
    step, restored = mgr.restore(step=10)
    assert step == 10
    assert restored["rng"] == rng.bit_generator.state  # 128-bit ints survive
    assert restored["history"] == state["history"] and restored["epoch"] == 3
    again = np.random.default_rng()
    again.bit_generator.state = restored["rng"]
    assert again.standard_normal() == rng.standard_normal()


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
    assert torch.equal(rest["rng"], rng) and rest["step"] == 1
    assert fresh.weight.data_ptr() == pointer and torch.equal(fresh.weight, model.weight)
    saved, loaded = opt.state_dict(), fresh_opt.state_dict()
    assert loaded["param_groups"][0]["lr"] == 0.01
    for index, entry in saved["state"].items():
        for key, value in entry.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)


def test_restore_into_a_module_saved_as_a_plain_state_dict():
    torch = pytest.importorskip("torch")
    source, target = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    mgr = zstore.CheckpointManager(_root())
    mgr.save(3, source.state_dict())
    assert mgr.restore(into=target)[0] == 3
    assert torch.equal(target.weight, source.weight)


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


@pytest.mark.parametrize("step", [-1, "3", True, 1.0])
def test_steps_are_non_negative_ints(step):
    with pytest.raises(ValueError, match="step"):
        zstore.CheckpointManager(_root()).save(step, _state())


def test_bad_settings_and_an_empty_root_are_refused():
    with pytest.raises(ValueError, match="keep_last"):
        zstore.CheckpointManager(_root(), keep_last=0)
    with pytest.raises(zstore.CheckpointNotFoundError, match="no committed step"):
        zstore.CheckpointManager(_root()).restore()


def test_leaving_the_context_waits_for_background_saves():
    root = _root()
    with zstore.CheckpointManager(root) as mgr:
        mgr.save(1, _state(), blocking=False)
    assert zstore.CheckpointManager(root).steps() == [1]


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
    assert calls[0] == ["zstore.commit.json"] and calls[-1] == ["zarr.json"]
    assert "zarr.json" not in calls[1] and len(calls) == 3
