"""The zstore command: ls, info and verify, with storage options from flags or AWS_* vars;
how it is started, its options and help, and how it ends when its reader goes away."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import zstore
from zstore._cli import build_parser, main
from zstore._compat import sync
from zstore._format import COMMIT_MARKER
from zstore._storage import resolve


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
    assert lines[0].split() == ["name", "state", "stored", "age"]
    assert lines[1].split()[:2] == ["step-1", "committed"]
    assert lines[2].split()[:3] == ["step-2", "uncommitted:", "no"]


def test_ls_of_one_checkpoint_lists_its_arrays(saved, capsys):
    assert main([*cli_flags(saved.storage_options), "ls", saved.url("step-1")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "shape", "dtype", "stored"]
    assert lines[1].split()[:4] == ["model/w", "(20,", "30)", "float32"]
    assert lines[-1].startswith("1 array + 0 inline values, 2.3 KiB logical")


def test_info_describes_every_array_and_totals(saved, capsys):
    assert main([*cli_flags(saved.storage_options), "info", saved.url("step-1")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("model/w"))
    assert "(20, 30)" in row and "float32" in row and "2.3 KiB" in row
    assert '{"step": 1}' in out and "1 array + 0 inline values, 2.3 KiB logical" in out


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
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["w", "(3,)", "float64"]


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
    with pytest.raises(zstore.CorruptCheckpointError, match="crc32c") as raised:
        zstore.open(url, storage_options=opts)["a"].numpy()
    assert raised.value.array == "a" and raised.value.key == "a/c/0/0"
    assert raised.value.url == url


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


def run_cli(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
    """``python -m zstore ARGS`` in a fresh process, as a shell would start it."""
    return subprocess.run([sys.executable, "-m", "zstore", *args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120)


def test_python_dash_m_zstore_runs_the_command(tmp_path):
    zstore.save({"w": np.ones(3)}, str(tmp_path / "ckpt"))
    done = run_cli("ls", str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[:3] == ["w", "(3,)", "float64"]


def test_version_prints_the_package_version():
    done = run_cli("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"zstore {zstore.__version__}")


def test_storage_options_work_after_the_command(saved, capsys):
    assert main(["info", saved.url("step-1"), *cli_flags(saved.storage_options)]) == 0
    assert "1 array + 0 inline values" in capsys.readouterr().out


def test_storage_options_before_and_after_the_command_add_up(s3, capsys):
    zstore.save({"w": np.ones(3)}, s3.url(), storage_options=s3.storage_options)
    flags = cli_flags(s3.storage_options)
    assert main([*flags[:1], "info", s3.url(), *flags[1:]]) == 0
    assert "(3,)" in capsys.readouterr().out


def test_version_works_after_the_command_too(capsys):
    with pytest.raises(SystemExit) as done:
        main(["ls", "--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"zstore {zstore.__version__}"


def all_actions(parser: argparse.ArgumentParser, path: str = "zstore"):
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_actions(sub, f"{path} {name}")


def test_every_option_and_argument_has_help():
    missing = [f"{path} {action.option_strings or action.dest}"
               for path, action in all_actions(build_parser()) if not action.help]
    assert missing == []


@pytest.fixture
def listing(tmp_path):
    """A run of one checkpoint with a few dozen arrays: output of many lines."""
    zstore.save({f"layer.{i}.weight": np.ones(2, np.float32) for i in range(40)},
                str(tmp_path / "run" / "step-1"))
    return tmp_path / "run"


@pytest.mark.parametrize("command", [["ls", "{run}"], ["info", "{run}/step-1"]])
def test_output_into_a_closed_pipe_ends_quietly(listing, command):
    """``zstore ls ... | head -1``: a reader that stopped reading is no error worth a
    traceback. The pipe's reading end is closed before zstore writes, so every run sees it."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = run_cli(*[c.format(run=listing) for c in command], stdout=write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.parametrize("command", ["ls {run}", "info {run}/step-1"])
def test_piping_into_head_prints_the_first_line_and_no_traceback(listing, command):
    done = subprocess.run(
        f"{shlex.quote(sys.executable)} -m zstore {command.format(run=listing)} | head -1",
        shell=True, capture_output=True, text=True, timeout=120)
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 1


def test_arrays_and_inline_values_are_counted_alike_everywhere(tmp_path, capsys):
    """A save, the checkpoint it opens as, and `zstore info`/`ls` name the same counts:
    stored arrays (a tied tensor once) and inline values (0-d tensors, numpy scalars)."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    opt.step()  # AdamW state: exp_avg, exp_avg_sq per parameter, and a 0-d `step` tensor
    tree = {"model": model.state_dict(), "tied": model.weight, "optim": opt.state_dict(),
            "epoch": 3, "scale": np.float32(0.5)}
    url = str(tmp_path / "ckpt")
    counts = "6 arrays + 3 inline values"
    info = zstore.save(tree, url)
    assert (info.arrays, info.inline_values) == (6, 3)
    assert str(info).startswith(counts) and "inline_values=3" in repr(info)
    assert f"{counts}, " in repr(zstore.open(url))
    for command in ("info", "ls"):
        assert main([command, url]) == 0
        assert capsys.readouterr().out.splitlines()[-1].startswith(f"{counts}, ")
