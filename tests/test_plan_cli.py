"""`zstore plan` and `zstore calibrate`, and the backend profiles they use."""

from __future__ import annotations

import json
from dataclasses import replace

import fsspec
import numpy as np
import pytest

import zstore
from tests.test_cli import cli_flags
from zstore._cli import main
from zstore._plan import BUILTIN, BackendProfile, named_profile, profile_for, store_profile


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSTORE_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def test_plan_explains_a_saved_checkpoint_with_its_real_sizes(s3, capsys):
    embed = np.random.default_rng(0).standard_normal((4000, 256), dtype=np.float32)
    zstore.save({"embed": embed}, s3.url(), storage_options=s3.storage_options,
                access={"embed": "rows"})
    code = main([*cli_flags(s3.storage_options), "plan", s3.url(), "--access", "embed=rows",
                 "-a", "embed=split(1,2)"])
    out = capsys.readouterr().out
    assert code == 0
    assert "backend s3" in out and "stored  " in out and "stored~" not in out
    row = next(line for line in out.splitlines() if line.strip().startswith("rows"))
    assert row.split()[1] == "2"  # shard index + one inner chunk
    assert "split(1,2)" in out


def test_plan_of_a_safetensors_file_needs_only_its_header(tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "model.safetensors"
    safetensors.save_file({"wte": np.zeros((50257, 64), np.float16),
                           "ln.bias": np.zeros(64, np.float32)}, str(path))
    assert main(["plan", str(path), "--target", "s3://bucket/run", "-a", "wte=rows"]) == 0
    out = capsys.readouterr().out
    assert "wte" in out and "50257x64" in out and "float16" in out and "backend s3" in out
    assert "2 arrays" in out


def test_plan_rejects_a_malformed_access_flag(tmp_path, capsys):
    zstore.save({"w": np.ones((4, 4))}, str(tmp_path / "c"))
    assert main(["plan", str(tmp_path / "c"), "--access", "rows"]) == 2
    assert "GLOB=PATTERN" in capsys.readouterr().err


def test_plan_of_a_file_that_is_not_safetensors_is_named(tmp_path, capsys):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\xff" * 64)
    assert main(["plan", str(bad)]) == 2
    assert "junk.safetensors" in capsys.readouterr().err


def test_calibrate_measures_the_moto_server_and_stores_a_profile(s3, config_dir, capsys):
    code = main([*cli_flags(s3.storage_options), "calibrate", s3.url("scratch"),
                 "--name", "moto", "--size", str(256 << 10)])
    assert code == 0
    profile = named_profile("moto")
    assert 0 < profile.latency < 1 and profile.bandwidth > 1e6 and profile.concurrency >= 1
    stored = json.loads((config_dir / "profiles" / "moto.json").read_text())
    assert stored["name"] == "moto" and stored["cpu_speed"] == profile.cpu_speed > 0
    fs = fsspec.filesystem("s3", **s3.storage_options, use_listings_cache=False)
    assert fs.find(s3.base) == [], "scratch objects are deleted"
    plan = zstore.plan({"w": np.zeros((4096, 4096), np.float32)}, backend="moto")
    assert plan.profile == profile


def test_a_calibrated_cpu_speed_scales_the_cpu_part_of_the_predicted_times():
    tree = {"w": np.zeros((2048, 1024), np.float32), "b": np.zeros(1024, np.float32)}
    reference, slower, slowest = (
        zstore.plan(tree, backend=replace(BUILTIN["local"], cpu_speed=speed), codec="blosc")
        for speed in (1.0, 0.5, 0.25))
    # the I/O part stays, the CPU part doubles with each halving of the speed
    for seconds in (lambda p: p.load_seconds[1], lambda p: p.save_seconds[1]):
        cpu_part = seconds(slower) - seconds(reference)
        assert cpu_part > 0
        assert seconds(slowest) - seconds(slower) == pytest.approx(2 * cpu_part)


def test_a_stored_profile_replaces_the_builtin_of_its_name():
    slow = BackendProfile("s3", latency=0.5, bandwidth=1e6, concurrency=2)
    store_profile(slow)
    assert profile_for("s3://bucket/x") == slow
    assert profile_for("/tmp/x") == BUILTIN["local"]


def test_a_damaged_profile_file_is_named(config_dir):
    (config_dir / "profiles").mkdir(parents=True)
    (config_dir / "profiles" / "s3.json").write_text("{not json")
    with pytest.raises(zstore.ZStoreError, match="s3.json"):
        profile_for("s3://bucket/x")
