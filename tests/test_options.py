"""zstore.Settings and zstore.configure: every tunable in one documented place, and the public
calls sharing one set of option names and defaults."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect

import numpy as np
import pytest

import zstore
from zstore._read import LazyTensor
from zstore._write import Lease

MiB = 1 << 20

# Every public call that saves or loads, and the options they share.
ENTRY_POINTS = {
    "zstore.save": zstore.save,
    "zstore.load": zstore.load,
    "Checkpoint.load": zstore.Checkpoint.load,
    "Checkpoint.read_many": zstore.Checkpoint.read_many,
    "CheckpointManager": zstore.CheckpointManager.__init__,
    "CheckpointManager.save": zstore.CheckpointManager.save,
    "CheckpointManager.restore": zstore.CheckpointManager.restore,
}
SHARED = {  # option: the entry points that must take it
    "max_concurrency": ["zstore.save", "zstore.load", "Checkpoint.load", "Checkpoint.read_many",
                        "CheckpointManager"],
    "progress": ["zstore.save", "zstore.load", "Checkpoint.load", "CheckpointManager"],
    "storage_options": ["zstore.save", "zstore.load", "CheckpointManager"],
}


def _keywords(function) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(function).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self"}


def test_every_public_call_takes_the_shared_options_with_one_default():
    for option, where in SHARED.items():
        lacking = [name for name in where if option not in _keywords(ENTRY_POINTS[name])]
        assert not lacking, f"{option}= is not taken by {lacking}"
    seen: dict[str, dict[str, object]] = {}  # option -> {entry point: default}
    for name, function in ENTRY_POINTS.items():
        for option, parameter in _keywords(function).items():
            if parameter.default is not inspect.Parameter.empty:
                seen.setdefault(option, {})[name] = parameter.default
    differing = {option: defaults for option, defaults in seen.items()
                 if len({repr(d) for d in defaults.values()}) > 1}
    assert not differing, f"one option, several defaults: {differing}"
    assert seen["max_concurrency"] == dict.fromkeys(SHARED["max_concurrency"], None)


def test_the_settings_are_documented_one_field_at_a_time():
    doc = inspect.getdoc(zstore.Settings)
    for f in dataclasses.fields(zstore.Settings):
        assert f"{f.name}: {f.metadata['unit']}" in doc, f.name
    assert zstore.Settings() == zstore.Settings(
        lease_ttl=60.0, lease_release_timeout=2.0, save_concurrency=8, load_concurrency=32,
        read_budget=64 * MiB, staging_budget=256 * MiB, s3_reader="auto")
    assert "Settings" in zstore.__all__ and "configure" in zstore.__all__


def test_derived_timings_follow_the_ttl():
    settings = zstore.Settings(lease_ttl=60.0)
    assert (settings.lease_renewal, settings.lease_fence) == (15.0, 45.0)
    assert zstore.Settings(lease_ttl=1.0).lease_fence == 0.75


def test_configure_as_a_context_manager_restores_what_was_there():
    before = zstore.Settings.current()
    with zstore.configure(lease_ttl=1.0, save_concurrency=2) as settings:
        assert settings is zstore.Settings.current()
        assert (settings.lease_ttl, settings.save_concurrency) == (1.0, 2)
        assert settings.read_budget == before.read_budget  # the others unchanged
        with zstore.configure(lease_ttl=5.0):
            assert zstore.Settings.current().lease_ttl == 5.0
        assert zstore.Settings.current().lease_ttl == 1.0
    assert zstore.Settings.current() == before


def test_configure_without_with_lasts_until_changed_again():
    before = zstore.Settings.current()
    try:
        zstore.configure(read_budget=8 * MiB)
        assert zstore.Settings.current().read_budget == 8 * MiB
    finally:
        zstore.configure(**dataclasses.asdict(before))
    assert zstore.Settings.current() == before


def test_unknown_names_and_bad_values_are_refused_and_change_nothing():
    before = zstore.Settings.current()
    with pytest.raises(TypeError, match="no setting 'lease_tll'.*'lease_ttl'"):
        zstore.configure(lease_tll=1.0)
    with pytest.raises(TypeError, match="no setting 'colour'.*lease_ttl"):
        zstore.configure(colour="blue")
    with pytest.raises(ValueError, match="lease_ttl must be a positive"):
        zstore.configure(lease_ttl=-1.0)
    with pytest.raises(ValueError, match="lease_release_timeout must be a positive"):
        zstore.configure(save_concurrency=2, lease_release_timeout=float("nan"))
    with pytest.raises(ValueError, match="save_concurrency must be at least 1"):
        zstore.configure(save_concurrency=0)
    with pytest.raises(TypeError, match="read_budget is a whole number of bytes"):
        zstore.configure(read_budget=1.5)
    with pytest.raises(TypeError, match="load_concurrency"):
        zstore.configure(load_concurrency=True)
    with pytest.raises(ValueError, match="lease_ttl"):
        zstore.Settings(lease_ttl=0)
    with pytest.raises(ValueError, match="s3_reader is one of 'auto', 'obstore', 's3fs', got"):
        zstore.configure(s3_reader="boto")
    assert zstore.Settings.current() == before


def test_a_bad_max_concurrency_fails_before_any_io(tmp_path):
    url = str(tmp_path / "c")
    with pytest.raises(ValueError, match="max_concurrency must be at least 1"):
        zstore.save({"a": np.ones(3)}, url, max_concurrency=0)
    assert not (tmp_path / "c").exists()
    zstore.save({"a": np.ones(3)}, url)
    with pytest.raises(TypeError, match="max_concurrency"):
        zstore.load(url, max_concurrency=2.5)
    with pytest.raises(ValueError, match="max_concurrency"):
        zstore.CheckpointManager(str(tmp_path / "run"), max_concurrency=0)


def test_a_save_takes_its_lease_timing_from_the_settings_when_it_starts(monkeypatch, tmp_path):
    seen = []
    real = Lease.acquire

    async def recording(self):
        seen.append((self.ttl, self.settings.lease_fence))
        await real(self)

    monkeypatch.setattr(Lease, "acquire", recording)
    with zstore.configure(lease_ttl=8.0):
        zstore.save({"a": np.ones(3)}, str(tmp_path / "a"))
    zstore.save({"a": np.ones(3)}, str(tmp_path / "b"))
    assert seen == [(8.0, 6.0), (60.0, 45.0)]


class _InFlight:
    """Counts the calls of an async function running at once, each made to take a while."""

    def __init__(self, delay: float = 0.05) -> None:
        self.now = self.peak = self.calls = 0
        self.delay = delay

    def wrap(self, real):
        async def counted(*args, **kwargs):
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
            try:
                await asyncio.sleep(self.delay)  # the others start meanwhile, if allowed
                return await real(*args, **kwargs)
            finally:
                self.now -= 1
        return counted


def _reads_in_flight(monkeypatch) -> _InFlight:
    counter = _InFlight()
    # the method every read of a load, load(into=) or read_many goes through
    monkeypatch.setattr(LazyTensor, "_read", counter.wrap(LazyTensor._read))
    return counter


TREE = {f"t{i:02d}": np.full((16, 16), float(i), np.float32) for i in range(12)}


def test_load_honours_max_concurrency_and_the_settings_default(tmp_path, monkeypatch):
    url = str(tmp_path / "c")
    zstore.save(TREE, url)
    counter = _reads_in_flight(monkeypatch)
    zstore.load(url, max_concurrency=1)
    assert (counter.peak, counter.calls) == (1, 12)
    counter.peak = 0
    with zstore.configure(load_concurrency=3):
        zstore.load(url)
    assert counter.peak == 3
    counter.peak = 0
    zstore.open(url).read_many(list(TREE), max_concurrency=2)
    assert counter.peak == 2
    counter.peak = 0
    zstore.load(url)
    assert counter.peak == len(TREE)  # the default, 32, leaves them all in flight together


def test_load_into_honours_max_concurrency_and_the_settings_default(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    url = str(tmp_path / "c")
    zstore.save({k: torch.from_numpy(v) for k, v in TREE.items()}, url)
    counter = _reads_in_flight(monkeypatch)
    direct = {k: torch.zeros(16, 16) for k in TREE}  # decoded straight into this memory
    staged = {k: torch.zeros(16, 16, dtype=torch.float64) for k in TREE}  # cast: staged
    for target in (direct, staged):
        counter.peak = 0
        zstore.load(url, into=target, max_concurrency=1)
        assert counter.peak == 1
        counter.peak = 0
        with zstore.configure(load_concurrency=2):
            zstore.load(url, into=target)
        assert counter.peak == 2
        assert all(torch.equal(target[k], torch.from_numpy(v).to(target[k].dtype))
                   for k, v in TREE.items())


def test_the_manager_passes_max_concurrency_to_its_saves_and_restores(tmp_path, monkeypatch):
    import zstore._write.writer as writer

    writes = _InFlight()
    monkeypatch.setattr(writer, "_write_array", writes.wrap(writer._write_array))
    reads = _reads_in_flight(monkeypatch)
    with zstore.CheckpointManager(str(tmp_path / "run"), max_concurrency=2) as mgr:
        mgr.save(1, TREE, blocking=False)
        mgr.wait()
        assert writes.peak == 2
        step, state = mgr.restore()
        assert step == 1 and reads.peak == 2
        assert all(np.array_equal(state[k], v) for k, v in TREE.items())


def test_settings_apply_to_background_saves_on_the_managers_thread(tmp_path, monkeypatch):
    import zstore._write.writer as writer

    writes = _InFlight()
    monkeypatch.setattr(writer, "_write_array", writes.wrap(writer._write_array))
    with zstore.CheckpointManager(str(tmp_path / "run")) as mgr:
        with zstore.configure(save_concurrency=1):
            mgr.save(1, TREE, blocking=False)
            mgr.wait()
        assert writes.peak == 1
        writes.peak = 0
        mgr.save(2, TREE)
        assert writes.peak == 8  # the default: 8 of the 12 arrays at once


def test_the_plans_memory_model_runs_at_the_concurrency_zstore_runs_at():
    tree = {f"a{i}": np.zeros((256, 1024), np.float32) for i in range(16)}  # 1 MiB each
    default = zstore.plan(tree, backend="s3", codec="none")  # where reads hold their objects
    load_memory, save_memory = default.load_memory, default.save_memory
    with zstore.configure(save_concurrency=1, load_concurrency=1, read_budget=1 * MiB):
        assert default.load_memory < load_memory
        assert default.save_memory < save_memory
    assert (default.load_memory, default.save_memory) == (load_memory, save_memory)


def test_the_docstrings_name_the_settings_default_and_the_s3fs_option_apart():
    doc = inspect.getdoc(zstore.save)
    assert "Settings.save_concurrency" in doc and "s3fs" in doc
    assert "Settings.load_concurrency" in inspect.getdoc(zstore.load)


def test_lease_ttl_is_read_at_lease_creation_not_import(tmp_path):
    from zstore._storage import resolve

    location = resolve(str(tmp_path / "c"))
    with zstore.configure(lease_ttl=0.4):
        lease = Lease(location)
    assert lease.settings.lease_renewal == pytest.approx(0.1)  # kept after the block
    assert Lease(location).ttl == 60.0
