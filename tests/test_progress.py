"""Progress bars: shown when asked (or on a terminal for big work), silent otherwise."""

from __future__ import annotations

import numpy as np
import pytest

import zstore

TREE = {"a": np.ones((512, 512), np.float32), "b": np.zeros(1000)}


def test_a_save_and_a_load_show_a_bar_when_asked(tmp_path, capsys):
    pytest.importorskip("tqdm")
    zstore.save(TREE, str(tmp_path / "c"), progress=True)
    saved = capsys.readouterr().err
    zstore.load(str(tmp_path / "c"), progress=True)
    loaded = capsys.readouterr().err
    assert "saving" in saved and "1.01M/1.01M" in saved and "100%" in saved
    assert "loading" in loaded and "100%" in loaded


def test_no_bar_unless_asked_or_on_a_terminal(tmp_path, capsys):
    zstore.save(TREE, str(tmp_path / "c"))
    zstore.load(str(tmp_path / "c"))
    zstore.save(TREE, str(tmp_path / "d"), progress=False)
    assert capsys.readouterr().err == ""


def test_loading_into_a_model_shows_a_bar_too(tmp_path, capsys):
    pytest.importorskip("tqdm")
    torch = pytest.importorskip("torch")
    zstore.save({"w": torch.ones(64, 64)}, str(tmp_path / "c"))
    zstore.load(str(tmp_path / "c"), into={"w": torch.zeros(64, 64)}, progress=True)
    assert "loading" in capsys.readouterr().err
