"""`zstore ls`: says what the commit marker proves and no more, checks intactness on request,
finds checkpoints below a prefix to a bounded depth, and leaves nothing it found out."""

from __future__ import annotations

import re

import numpy as np
import pytest

import zstore
from tests.test_cli import cli_flags
from zstore._cli import main
from zstore._compat import sync
from zstore._format import COMMIT_MARKER, ROOT
from zstore._storage import resolve

TREE = {"w": np.arange(600, dtype=np.float32).reshape(20, 30), "s": np.float32(2)}


def ls(backend, *args: str) -> int:
    return main(["ls", *args, *cli_flags(backend.storage_options)])


def rows(out: str) -> dict[str, str]:
    """The table's rows by name: everything after the name, blanks squeezed."""
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()[1:]
            if line.strip() and not line.startswith("search stopped")}


def remove(backend, url: str, *keys: str) -> None:
    sync(resolve(url, backend.storage_options).remove_all(list(keys)))


def test_ls_says_committed_not_complete_for_a_checkpoint_missing_a_shard(backend, capsys):
    zstore.save(TREE, backend.url("step-1"), storage_options=backend.storage_options)
    remove(backend, backend.url("step-1"), "w/c/0/0")
    assert ls(backend, backend.base) == 0
    state = rows(capsys.readouterr().out)["step-1"]
    assert state.startswith("committed") and "complete" not in state


def test_ls_verify_tells_intact_from_damaged_and_exits_1(backend, capsys):
    for name in ("step-1", "step-2"):
        zstore.save(TREE, backend.url(name), storage_options=backend.storage_options)
    remove(backend, backend.url("step-2"), "w/c/0/0")
    assert ls(backend, backend.base, "--verify") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "verify"
    found = rows("\n".join(lines))
    assert found["step-1"].endswith("intact")
    assert found["step-2"].endswith("damaged: 1 problem")


def test_ls_verify_of_one_checkpoint_reads_every_object(backend, capsys):
    zstore.save(TREE, backend.url(), storage_options=backend.storage_options)
    assert ls(backend, backend.url(), "--verify") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "intact"
    remove(backend, backend.url(), "w/c/0/0")
    assert ls(backend, backend.url(), "--verify") == 1
    assert capsys.readouterr().out.splitlines()[-1] == "damaged: 1 problem"


def test_ls_lists_a_commit_marker_without_zarr_json(backend, capsys):
    zstore.save(TREE, backend.url("step-1"), storage_options=backend.storage_options)
    remove(backend, backend.url("step-1"), ROOT)
    assert ls(backend, backend.base) == 0
    assert rows(capsys.readouterr().out)["step-1"].startswith(
        f"damaged: {COMMIT_MARKER} without {ROOT}")


def test_ls_lists_objects_that_are_in_no_checkpoint(backend, capsys):
    zstore.save(TREE, backend.url("run/step-1"), storage_options=backend.storage_options)
    location = resolve(backend.base, backend.storage_options)
    sync(location.put("run/notes.txt", b"hello"))
    for i in range(7):
        sync(location.put(f"scratch/part-{i}", b"x"))
    assert ls(backend, backend.base) == 0
    found = rows(capsys.readouterr().out)
    assert found["run/step-1"].startswith("committed")
    assert found["run/notes.txt"].startswith("a file, not a checkpoint")
    assert found["scratch/"].startswith("7 objects, not in any checkpoint")


def test_ls_lists_zarr_data_that_zstore_did_not_write(backend, capsys):
    location = resolve(backend.base, backend.storage_options)
    sync(location.put(f"plain/{ROOT}", b'{"zarr_format": 3, "node_type": "group"}'))
    assert ls(backend, backend.base) == 0
    assert rows(capsys.readouterr().out)["plain"] == "zarr group, not a zstore checkpoint - -"


def test_ls_finds_checkpoints_below_a_prefix_down_to_the_depth_bound(s3, capsys):
    for name in ("run1/step-1", "team/run2/step-10", "team/run2/step-9", "a/b/c/step-1"):
        zstore.save(TREE, s3.url(name), storage_options=s3.storage_options)
    assert ls(s3, s3.base) == 0
    out = capsys.readouterr().out
    assert list(rows(out)) == ["run1/step-1", "team/run2/step-9", "team/run2/step-10"]
    assert "search stopped 3 folder level(s) down; 1 folder(s) not searched: a/b/c" in out
    assert ls(s3, s3.base, "--depth", "4") == 0
    out = capsys.readouterr().out
    assert "a/b/c/step-1" in rows(out) and "search stopped" not in out


def column_starts(lines: list[str]) -> list[list[int]]:
    return [[m.start() for m in re.finditer(r"(?<=  )\S", line)] for line in lines]


def test_ls_columns_are_aligned(s3, capsys):
    tree = {"w": TREE["w"], "a/much/longer/name": np.zeros((3, 4, 5), np.int8)}
    for name in ("r/step-1", "a-much-longer-run-name/step-100"):
        zstore.save(tree, s3.url(name), storage_options=s3.storage_options)
    remove(s3, s3.url("r/step-1"), COMMIT_MARKER)
    for url in (s3.base, s3.url("a-much-longer-run-name/step-100")):
        assert main([*cli_flags(s3.storage_options), "ls", url]) == 0
        lines = capsys.readouterr().out.splitlines()[:3]
        starts = column_starts(lines)
        assert len(starts[0]) == 3
        assert all(row[:3] == starts[0] for row in starts), lines


def test_ls_of_a_safetensors_file_says_what_it_is_and_fails(tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "model.safetensors"
    safetensors.save_file({"w": np.zeros(4, np.float32)}, str(path))
    assert main(["ls", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is a safetensors file, not a zstore checkpoint" in err and "zstore plan" in err


def test_ls_of_any_other_file_says_it_is_not_a_checkpoint(backend, capsys):
    sync(resolve(backend.base, backend.storage_options).put("notes.txt", b"hello"))
    assert ls(backend, backend.url("notes.txt")) == 2
    assert "is a file, not a zstore checkpoint" in capsys.readouterr().err


def test_ls_of_a_place_that_does_not_exist_fails(tmp_path, capsys):
    assert main(["ls", str(tmp_path / "nowhere")]) == 2
    assert "nothing is there" in capsys.readouterr().err


def test_ls_of_an_empty_folder_says_so(tmp_path, capsys):
    assert main(["ls", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"no checkpoints under {tmp_path}"
