"""load(into=...): stream a checkpoint into an existing model, in place, checked first."""

from __future__ import annotations

import numpy as np
import pytest

import zstore

torch = pytest.importorskip("torch")


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(300, 32), torch.nn.Linear(32, 16),
                                torch.nn.LayerNorm(16))
    model.register_buffer("steps", torch.tensor(7))
    return model


def test_a_model_is_filled_in_place_from_a_saved_state_dict(tmp_path):
    source, target = _model(1), _model(2)
    zstore.save(source.state_dict(), str(tmp_path / "c"))
    before = {k: v.data_ptr() for k, v in target.state_dict().items()}
    report = zstore.load(str(tmp_path / "c"), into=target)
    assert report.missing_keys == [] and report.unexpected_keys == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
        assert target.state_dict()[key].data_ptr() == before[key], "same storage, no new tensors"


def test_a_prefix_selects_the_model_inside_a_training_checkpoint(s3):
    source, target = _model(1), _model(2)
    zstore.save({"model": source.state_dict(), "step": 3}, s3.url(),
                storage_options=s3.storage_options)
    zstore.load(s3.url(), storage_options=s3.storage_options, into=target, prefix="model/")
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_a_bf16_checkpoint_loads_into_fp32_parameters_with_a_cast(tmp_path):
    source, target = _model(1), _model(2)
    zstore.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                 for k, v in source.state_dict().items()}, str(tmp_path / "c"))
    zstore.load(str(tmp_path / "c"), into=target)
    weight = target.state_dict()["1.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, source.state_dict()["1.weight"].to(torch.bfloat16).float())


def test_mismatches_fail_before_any_parameter_changes(tmp_path):
    source = _model(1)
    state = dict(source.state_dict())
    state["1.weight"] = torch.zeros(16, 31)  # wrong shape
    del state["2.bias"]
    state["extra"] = torch.ones(2)
    zstore.save(state, str(tmp_path / "c"))
    target = _model(2)
    snapshot = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(zstore.StateMismatchError) as caught:
        zstore.load(str(tmp_path / "c"), into=target)
    message = str(caught.value)
    assert "1.weight: checkpoint (16, 31), target (16, 32)" in message
    assert "2.bias" in message and "extra" in message and "nothing was changed" in message
    assert all(torch.equal(target.state_dict()[k], v) for k, v in snapshot.items())


def test_non_strict_loads_reports_what_did_not_match(tmp_path):
    source = _model(1)
    state = {k: v for k, v in source.state_dict().items() if k != "2.bias"}
    state["extra"] = torch.ones(2)
    zstore.save(state, str(tmp_path / "c"))
    target = _model(2)
    report = zstore.load(str(tmp_path / "c"), into=target, strict=False)
    assert report.missing_keys == ["2.bias"] and report.unexpected_keys == ["extra"]
    assert torch.equal(target.state_dict()["0.weight"], source.state_dict()["0.weight"])


def test_a_plain_state_dict_of_tensors_can_be_the_target(tmp_path):
    zstore.save({"w": torch.arange(6.0).reshape(2, 3)}, str(tmp_path / "c"))
    target = {"w": torch.zeros(2, 3)}
    zstore.load(str(tmp_path / "c"), into=target)
    assert torch.equal(target["w"], torch.arange(6.0).reshape(2, 3))


def test_into_takes_only_modules_and_state_dicts(tmp_path):
    zstore.save({"w": np.ones(2)}, str(tmp_path / "c"))
    with pytest.raises(TypeError, match="torch.nn.Module or a state dict"):
        zstore.load(str(tmp_path / "c"), into=[1, 2])


def _mixed_model(dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A few dozen tensors of very different sizes, so staging buffers of several sizes
    are in flight and reused at once."""
    torch.manual_seed(seed)
    widths = [3, 96, 7, 64, 1, 48, 128, 5, 32, 17, 80, 2]
    layers = [torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:] + widths[:1])]
    layers += [torch.nn.LayerNorm(w) for w in widths]
    return torch.nn.Sequential(*layers).to(dtype)


@pytest.mark.parametrize("saved, target", [(torch.float32, torch.bfloat16),
                                           (torch.float32, torch.float16),
                                           (torch.bfloat16, torch.float32)])
def test_another_dtype_loads_the_values_load_state_dict_gives(tmp_path, saved, target):
    state = _mixed_model(saved, seed=1).state_dict()
    assert len(state) >= 30
    zstore.save(state, str(tmp_path / "c"))
    expected = _mixed_model(target, seed=2)
    expected.load_state_dict(state)  # torch's own cast
    model = _mixed_model(target, seed=2)
    report = zstore.load(str(tmp_path / "c"), into=model)
    assert sorted(report.loaded) == sorted(state)
    for key, value in expected.state_dict().items():
        got = model.state_dict()[key]
        assert got.dtype == target and torch.equal(got, value), key


def _damaged_checkpoint(tmp_path) -> tuple[str, dict[str, torch.Tensor], str]:
    """A checkpoint of 24 tensors, one of whose objects was deleted after it committed."""
    state = {f"t{i:02d}": torch.full((64, 64), float(i)) for i in range(24)}
    url = str(tmp_path / "c")
    zstore.save(state, url)
    lost = "t13"
    for chunk in (tmp_path / "c" / lost / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    return url, state, lost


def test_a_failure_midway_names_what_was_and_was_not_filled(tmp_path):
    url, state, lost = _damaged_checkpoint(tmp_path)
    target = {k: torch.full((64, 64), -1.0) for k in state}
    with pytest.raises(zstore.PartialLoadError) as caught:
        zstore.load(url, into=target, max_concurrency=2)
    error = caught.value
    assert isinstance(error.__cause__, zstore.CorruptCheckpointError)
    assert lost in error.partial and lost in str(error)
    assert sorted(error.loaded + error.partial + error.untouched) == sorted(state)
    assert error.loaded and error.untouched  # it stopped midway, and said where
    for key in error.loaded:
        assert torch.equal(target[key], state[key]), key
    for key in error.untouched:
        assert torch.equal(target[key], torch.full((64, 64), -1.0)), key


def test_a_staged_tensor_is_untouched_until_its_whole_read_succeeded(tmp_path):
    url, state, lost = _damaged_checkpoint(tmp_path)
    target = {k: torch.full((64, 64), -1.0, dtype=torch.float64) for k in state}  # cast: staged
    with pytest.raises(zstore.PartialLoadError) as caught:
        zstore.load(url, into=target, max_concurrency=2)
    assert lost in caught.value.untouched and not caught.value.partial
    assert torch.equal(target[lost], torch.full((64, 64), -1.0, dtype=torch.float64))


def test_a_failure_before_any_write_raises_the_cause_itself(tmp_path):
    url, state, lost = _damaged_checkpoint(tmp_path)
    target = {lost: torch.zeros(64, 64, dtype=torch.float64)}  # staged: nothing written yet
    with pytest.raises(zstore.CorruptCheckpointError):
        zstore.load(url, into=target, strict=False)


def test_a_failed_load_leaves_no_task_running(tmp_path, caplog):
    import gc

    url, state, _ = _damaged_checkpoint(tmp_path)
    target = {k: torch.zeros(64, 64) for k in state}
    with pytest.raises(zstore.PartialLoadError):
        zstore.load(url, into=target, max_concurrency=4)
    gc.collect()
    assert "Task was destroyed" not in caplog.text


def test_the_report_prints_as_counts_and_keeps_the_lists(tmp_path):
    source = _model(1)
    state = {k: v for k, v in source.state_dict().items() if k != "2.bias"}
    state["extra"] = torch.ones(2)
    zstore.save(state, str(tmp_path / "c"))
    report = zstore.load(str(tmp_path / "c"), into=_model(2), strict=False)
    assert repr(report) == ("<LoadReport: 5 loaded, 1 missing ('2.bias'), "
                            "1 unexpected ('extra')>")
    assert report.missing_keys == ["2.bias"] and len(report.loaded) == 5
    full = zstore.load(str(tmp_path / "c"), into={k: v.clone() for k, v in state.items()})
    assert repr(full) == f"<All keys matched successfully: {len(state)} loaded>"
