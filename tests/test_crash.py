"""Crash consistency: a save killed with SIGKILL at any point leaves either no commit marker or a
complete checkpoint, never touches another checkpoint, and saving again to the URL works
without mixing old and new objects.

Saves run in processes forked from a forkserver that has zstore imported, so each kill point
costs a fork, not an interpreter start. Kill points are (a) before each storage mutation of a
save in turn (every object write, delete, conditional create and server-side copy: data,
metadata, commit; of plain saves, overwrites and incremental steps of a series), by a child that
kills itself there, and (b) at random moments, by the parent. Local disk and S3 on moto.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import numpy as np
import pytest

import zstore
from zstore._storage import CountingStore, Location

CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["zstore", "numpy", "zarr", "fsspec"])
KILLS = {"points": 0, "torn": 0}
# every way a save changes storage: object writes, deletes, conditional creates, server copies
MUTATIONS = [(CountingStore, "set"), (CountingStore, "delete"), (Location, "put"),
             (Location, "put_new"), (Location, "copy_from")]


def _tree(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tree = {f"w{i}": rng.standard_normal((40, 50)).astype(np.float32) for i in range(6)}
    tree["big"] = rng.standard_normal((600, 100)).astype(np.float32)
    tree["step"] = seed
    return tree


def _kill_before_mutation(n: int) -> None:
    """Make this process SIGKILL itself just before its ``n``-th storage mutation (1-based)."""
    count = [0]

    def counted(method):
        async def wrapper(*args, **kwargs):
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return await method(*args, **kwargs)
        return wrapper

    for owner, name in MUTATIONS:
        setattr(owner, name, counted(getattr(owner, name)))


def _child(url: str, options: dict, seed: int, overwrite: bool, kill_at: int, ready) -> None:
    if kill_at:
        _kill_before_mutation(kill_at)
    ready.set()
    zstore.save(_tree(seed), url, overwrite=overwrite, storage_options=options)


def _run_save(url: str, options: dict, seed: int, overwrite: bool, kill_at: int = 0,
              kill_after: float | None = None) -> int:
    ready = CTX.Event()
    proc = CTX.Process(target=_child, args=(url, options, seed, overwrite, kill_at, ready))
    proc.start()
    if kill_after is not None:
        ready.wait(30)
        time.sleep(kill_after)
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it finished first
    proc.join(60)
    return proc.exitcode


def _same(loaded: dict, seed: int) -> bool:
    expected = _tree(seed)
    return loaded.keys() == expected.keys() and all(
        np.array_equal(loaded[k], v) for k, v in expected.items())


def _check(url: str, options: dict, allowed_seeds: tuple[int, ...]) -> str:
    """'absent', or the seed the complete checkpoint at ``url`` holds (a torn one fails)."""
    try:
        loaded = zstore.load(url, storage_options=options)
    except (zstore.IncompleteCheckpointError, zstore.CheckpointNotFoundError):
        return "absent"
    for seed in allowed_seeds:
        if _same(loaded, seed):
            return str(seed)
    KILLS["torn"] += 1
    raise AssertionError(f"{url} opened as complete but holds neither of {allowed_seeds}")


def _mutations_of(save) -> int:
    """How many storage mutations ``save()`` makes."""
    count = [0]
    real = [getattr(owner, name) for owner, name in MUTATIONS]

    def counted(method):
        async def wrapper(*args, **kwargs):
            count[0] += 1
            return await method(*args, **kwargs)
        return wrapper

    try:
        for (owner, name), method in zip(MUTATIONS, real):
            setattr(owner, name, counted(method))
        save()
    finally:
        for (owner, name), method in zip(MUTATIONS, real):
            setattr(owner, name, method)
    return count[0]


def _mutations_of_a_save(tmp_path) -> int:
    """Of an overwrite: deletes, lease, placeholder, metadata, data, root, marker."""
    zstore.save(_tree(0), str(tmp_path / "count"))
    return _mutations_of(lambda: zstore.save(_tree(1), str(tmp_path / "count"), overwrite=True))


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path) -> tuple[str, dict]:
    """A folder, or a bucket on the moto server (which lives on in this process while the
    killed saver's requests stop mid-flight), and the options to reach it."""
    if request.param == "local":
        return str(tmp_path), {}
    server = request.getfixturevalue("moto_s3")
    return f"s3://{server.new_bucket()}", server.storage_options


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-url", "overwrite"])
def test_a_kill_before_any_write_of_a_save_never_tears_a_checkpoint(tmp_path, where, overwrite):
    mutations = _mutations_of_a_save(tmp_path)
    base, options = where
    previous = f"{base}/previous"
    zstore.save(_tree(0), previous, storage_options=options)
    for kill_at in range(1, mutations + 2):
        url = f"{base}/k{kill_at}"
        if overwrite:
            zstore.save(_tree(1), url, storage_options=options)
        code = _run_save(url, options, 2, overwrite, kill_at=kill_at)
        assert code in (-signal.SIGKILL, 0), code
        KILLS["points"] += code == -signal.SIGKILL
        state = _check(url, options, (1, 2) if overwrite else (2,))
        if code == 0:
            assert state == "2"
        assert _check(previous, options, (0,)) == "0"
        zstore.save(_tree(3), url, overwrite=True, storage_options=options)  # only new objects
        assert _check(url, options, (3,)) == "3"


def _save_seconds(base: str, options: dict) -> float:
    """How long a save takes in a freshly forked child, from its start signal to its exit."""
    ready = CTX.Event()
    proc = CTX.Process(target=_child, args=(f"{base}/timing", options, 0, False, 0, ready))
    proc.start()
    ready.wait(30)
    started = time.monotonic()
    proc.join(60)
    return time.monotonic() - started


@pytest.mark.parametrize("rounds", [pytest.param(40, id="40"),
                                    pytest.param(200, id="200", marks=pytest.mark.slow)])
def test_kills_at_random_moments_never_tear_a_checkpoint(where, rounds):
    base, options = where
    pick = random.Random(rounds)
    window = _save_seconds(base, options)
    url = f"{base}/ckpt"
    zstore.save(_tree(0), url, storage_options=options)
    committed = 0
    killed = 0
    for round_ in range(rounds):
        seed = round_ + 1
        code = _run_save(url, options, seed, True, kill_after=pick.uniform(0, window))
        killed += code == -signal.SIGKILL
        state = _check(url, options, (committed, seed))
        if state != "absent":
            committed = int(state)
        else:  # the old marker went first: saving again must give exactly the new tree
            zstore.save(_tree(seed), url, overwrite=True, storage_options=options)
            committed = seed
    KILLS["points"] += killed
    assert killed >= rounds // 2, f"only {killed} of {rounds} saves were killed before finishing"


def test_a_crashed_step_never_becomes_the_step_a_run_resumes_from(tmp_path):
    root = str(tmp_path / "run")
    mgr = zstore.CheckpointManager(root)
    mgr.save(1, _tree(1))
    pick = random.Random(1)
    for _ in range(10):
        code = _run_save(mgr.url(2), {}, 2, False, kill_after=pick.uniform(0, 0.2))
        latest = mgr.latest_step()
        assert latest in (1, 2)
        step, state = mgr.restore()
        assert step == latest and _same(state, latest)
        if latest == 2:
            assert code in (0, -signal.SIGKILL)
            break
    mgr.save(3, _tree(3))  # the series goes on; leftovers of step 2 do not block it
    assert mgr.latest_step() == 3 and _same(mgr.restore()[1], 3)


def _next_step() -> dict:
    """Step 2 of a fine-tune: two arrays trained, the rest as in step 1 (copied, not uploaded)."""
    tree = _tree(1)
    tree.update({k: v for k, v in _tree(2).items() if k in ("w0", "big")})
    return tree


def _series_child(root: str, kill_at: int) -> None:
    _kill_before_mutation(kill_at)
    zstore.CheckpointManager(root).save(2, _next_step())


def test_a_kill_at_any_mutation_of_an_incremental_step_keeps_the_series(tmp_path):
    zstore.CheckpointManager(str(tmp_path / "count")).save(1, _tree(1))
    mutations = _mutations_of(lambda: zstore.CheckpointManager(str(tmp_path / "count")).save(
        2, _next_step()))
    for kill_at in range(1, mutations + 2):
        root = str(tmp_path / f"run{kill_at}")
        mgr = zstore.CheckpointManager(root)
        mgr.save(1, _tree(1))
        proc = CTX.Process(target=_series_child, args=(root, kill_at))
        proc.start()
        proc.join(60)
        assert proc.exitcode in (0, -signal.SIGKILL), proc.exitcode
        KILLS["points"] += proc.exitcode == -signal.SIGKILL
        step, state = mgr.restore()
        assert step == 2 or proc.exitcode != 0
        expected = _next_step() if step == 2 else _tree(1)
        complete = state.keys() == expected.keys() and all(
            np.array_equal(state[k], v) for k, v in expected.items())
        KILLS["torn"] += not complete
        assert complete, f"step {step} opened torn after a kill before mutation {kill_at}"
        assert _same(mgr.restore(1)[1], 1)
        mgr.save(3, _next_step())  # the series goes on, copying from the newest complete step
        assert all(np.array_equal(mgr.restore(3)[1][k], v) for k, v in _next_step().items())


def test_zz_report_kill_points():
    print(f"\nSIGKILL points in this module: {KILLS['points']}, torn checkpoints opened: "
          f"{KILLS['torn']}")
    assert KILLS["torn"] == 0 and KILLS["points"] > 0
