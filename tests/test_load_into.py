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
