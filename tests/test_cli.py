"""The zstore command: ls, info and verify, with storage options from flags or AWS_* vars."""

from __future__ import annotations

import numpy as np
import pytest
from zarr.core.sync import sync

import zstore
from zstore.cli import main
from zstore.manifest import COMMIT_MARKER
from zstore.storage import resolve


def cli_flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        if isinstance(value, dict):
            flags += [f"-o{key}.{k}={v}" for k, v in value.items()]
        else:
            flags.append(f"-o{key}={value}")
    return flags


@pytest.fixture
def saved(backend):
    tree = {"model": {"w": np.arange(600, dtype=np.float32).reshape(20, 30)}, "step": 3}
    zstore.save(tree, backend.url("step-1"), storage_options=backend.storage_options,
                metadata={"step": 1})
    zstore.save(tree, backend.url("step-2"), storage_options=backend.storage_options)
    location = resolve(backend.url("step-2"), backend.storage_options)
    sync(location.remove_all([COMMIT_MARKER]))  # step-2 crashed before committing
    return backend


def test_ls_lists_checkpoints_with_their_state(saved, capsys):
    assert main([*cli_flags(saved.storage_options), "ls", saved.base]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["checkpoint", "state", "stored", "age"]
    assert lines[1].split()[:2] == ["step-1", "complete"]
    assert lines[2].split()[:2] == ["step-2", "INCOMPLETE"]


def test_ls_of_one_checkpoint_lists_its_arrays(saved, capsys):
    assert main([*cli_flags(saved.storage_options), "ls", saved.url("step-1")]) == 0
    assert capsys.readouterr().out.split() == ["model/w", "(20,", "30)", "float32"]


def test_info_describes_every_array_and_totals(saved, capsys):
    assert main([*cli_flags(saved.storage_options), "info", saved.url("step-1")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("model/w"))
    assert "(20, 30)" in row and "float32" in row and "2.3 KiB" in row
    assert '{"step": 1}' in out and "1 arrays, 2.3 KiB logical" in out


def test_info_of_an_incomplete_checkpoint_fails_with_the_reason(saved, capsys):
    assert main([*cli_flags(saved.storage_options), "info", saved.url("step-2")]) == 2
    assert "no commit marker" in capsys.readouterr().err


def test_verify_passes_on_an_intact_checkpoint(saved, capsys):
    assert main([*cli_flags(saved.storage_options), "verify", saved.url("step-1")]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_verify_reports_a_flipped_byte_and_a_missing_object(backend, capsys):
    url, opts = backend.url(), backend.storage_options
    zstore.save({"a": np.random.default_rng(0).standard_normal((600, 600)),
                 "b": np.ones((10, 10))}, url, storage_options=opts)
    location = resolve(url, opts)
    sizes = sync(location.sizes())
    shard = sorted(k for k in sizes if k.startswith("a/c/"))[0]
    data = bytearray(sync(location.get(shard)))
    data[len(data) // 3] ^= 0x40
    sync(location.put(shard, bytes(data)))
    sync(location.remove_all(["b/c/0/0"]))
    assert main([*cli_flags(opts), "verify", url]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {shard}: damaged (fails its crc32c check)" in out
    assert "FAIL b/c/0/0: missing" in out


def test_storage_options_come_from_aws_environment_variables(s3, monkeypatch, capsys):
    zstore.save({"w": np.ones(3)}, s3.url(), storage_options=s3.storage_options)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.storage_options["endpoint_url"])
    assert main(["ls", s3.url()]) == 0
    assert capsys.readouterr().out.split() == ["w", "(3,)", "float64"]


def test_malformed_storage_option_is_a_usage_error():
    with pytest.raises(SystemExit, match="key=value"):
        main(["-onovalue", "ls", "memory://x"])


def test_reading_a_damaged_chunk_raises_naming_the_array(backend):
    url, opts = backend.url(), backend.storage_options
    zstore.save({"a": np.random.default_rng(0).standard_normal((600, 600))}, url,
                storage_options=opts)
    location = resolve(url, opts)
    data = bytearray(sync(location.get("a/c/0/0")))
    data[100] ^= 0x01
    sync(location.put("a/c/0/0", bytes(data)))
    with pytest.raises(zstore.CorruptCheckpointError, match="array 'a'.*crc32c"):
        zstore.open(url, storage_options=opts)["a"].numpy()


@pytest.fixture
def series(tmp_path):
    manager = zstore.CheckpointManager(str(tmp_path / "run"))
    for step in (2, 10, 9, 100):
        manager.save(step, {"w": np.full(50, step, np.float32)})
    return manager


def test_ls_lists_a_series_steps_in_numeric_order(series, capsys):
    assert main(["ls", series.root]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == ["step-2", "step-9", "step-10", "step-100"]


def test_rm_refuses_the_newest_committed_step_without_force(series, capsys):
    assert main(["rm", f"{series.root}/step-100"]) == 2
    assert "newest committed step" in capsys.readouterr().err
    assert series.steps() == [2, 9, 10, 100]
    assert main(["rm", f"{series.root}/step-9"]) == 0
    assert main(["rm", "--force", f"{series.root}/step-100"]) == 0
    assert series.steps() == [2, 10]


def test_rm_applies_retention_rules_to_a_series(series, capsys):
    assert main(["rm", series.root, "--keep-last", "1", "--keep-every", "5"]) == 0
    assert series.steps() == [10, 100]
    assert "deleted [2, 9]" in capsys.readouterr().out


def test_rm_deletes_only_zstore_checkpoints(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    assert main(["rm", str(tmp_path / "data")]) == 2
    assert "no zstore checkpoint" in capsys.readouterr().err
    assert (tmp_path / "data" / "precious.txt").exists()
    zstore.save({"w": np.ones(3)}, str(tmp_path / "plain"))
    assert main(["rm", str(tmp_path / "plain")]) == 0
    with pytest.raises(zstore.CheckpointNotFoundError):
        zstore.open(str(tmp_path / "plain"))
