"""Concurrent writers and readers: one URL never gets two writers, readers always see whole data."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import threading
import time

import numpy as np
import pytest

import zstore
from zstore._compat import sync
from zstore._format import LEASE
from zstore._storage import resolve
from zstore._write import Lease
from zstore.errors import LeaseLostError


def _tree(value: int) -> dict:
    return {"a": np.full((512, 512), value, np.float32), "b": np.full(1000, value, np.int64)}


SPAWN = multiprocessing.get_context("spawn")


def _in_processes(target, arguments: list[tuple]) -> list:
    """Run ``target(*args, results)`` in one spawned process per ``args``; what each put on
    ``results``, in the order they finished."""
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, results)) for args in arguments]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    return outcomes


def _save_in_process(url: str, options: dict, value: int, barrier, results) -> None:
    barrier.wait()
    try:
        zstore.save(_tree(value), url, storage_options=options)
        results.put((value, "committed"))
    except zstore.CheckpointExistsError as e:
        results.put((value, f"refused: {type(e).__name__} for {e.url}"))


def test_two_processes_saving_to_one_url_exactly_one_commits(s3):
    for round_ in range(3):
        url = s3.url(f"race-{round_}")
        barrier = SPAWN.Barrier(2)
        outcomes = dict(_in_processes(
            _save_in_process, [(url, s3.storage_options, value, barrier) for value in (1, 2)]))
        winners = [v for v, outcome in outcomes.items() if outcome == "committed"]
        assert len(winners) == 1, outcomes
        loser = next(o for o in outcomes.values() if o != "committed")
        assert loser in (f"refused: LeaseHeldError for {url}",
                         f"refused: CheckpointCommittedError for {url}")
        loaded = zstore.load(url, storage_options=s3.storage_options)
        assert (loaded["a"] == winners[0]).all() and (loaded["b"] == winners[0]).all()


def test_a_live_lease_refuses_a_second_writer_and_names_it(tmp_path):
    url = str(tmp_path / "c")
    location = resolve(url)
    expires = time.time() + 60
    sync(location.put_new(LEASE, json.dumps(
        {"token": "x", "host": "trainer-7", "pid": 4242, "expires": expires}).encode()))
    with pytest.raises(zstore.LeaseHeldError, match="trainer-7.*4242") as raised:
        zstore.save(_tree(1), url)
    assert isinstance(raised.value, zstore.CheckpointExistsError)  # what callers caught so far
    assert raised.value.url == url and raised.value.expires == expires
    assert raised.value.holder["host"] == "trainer-7" and raised.value.holder["pid"] == 4242
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [LEASE]


def test_an_abandoned_lease_is_taken_over(tmp_path):
    url = str(tmp_path / "c")
    sync(resolve(url).put_new(LEASE, json.dumps(
        {"token": "x", "host": "dead", "pid": 1, "expires": time.time() - 1}).encode()))
    zstore.save(_tree(3), url)
    assert (zstore.load(url)["a"] == 3).all()
    assert not (tmp_path / "c" / LEASE).exists()


def test_a_save_whose_lease_was_taken_over_does_not_commit(tmp_path, monkeypatch):
    import zstore._write.writer as writer

    url = str(tmp_path / "c")
    real = writer._write_array

    async def stolen_midway(location, *args):
        await location.put(LEASE, json.dumps({"token": "thief", "expires": 1e12}).encode())
        await real(location, *args)

    monkeypatch.setattr(writer, "_write_array", stolen_midway)
    with pytest.raises(LeaseLostError, match="taken over") as raised:
        zstore.save(_tree(1), url)
    assert raised.value.url == url
    assert not isinstance(raised.value, FileExistsError)  # nothing exists: this save lost out
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.open(url)


def test_a_save_that_loses_the_commit_race_says_so_and_keeps_the_winners_marker(
        tmp_path, monkeypatch):
    url = str(tmp_path / "c")
    real = Lease.check
    winner = b'{"committed by": "another save"}'

    async def another_save_commits_first(self):
        await real(self)
        await self.location.put("zstore.commit.json", winner)

    monkeypatch.setattr(Lease, "check", another_save_commits_first)
    with pytest.raises(zstore.CommitRaceLostError) as raised:
        zstore.save(_tree(1), url)
    assert isinstance(raised.value, zstore.CheckpointExistsError) and raised.value.url == url
    assert (tmp_path / "c" / "zstore.commit.json").read_bytes() == winner


def _stale_lease(location) -> None:
    sync(location.put_new(LEASE, json.dumps(
        {"token": "crashed", "host": "gone", "pid": 1, "expires": time.time() - 1}).encode()))


def _take_over_in_process(url: str, options: dict, barrier, results) -> None:
    lease = Lease(resolve(url, options))
    barrier.wait()
    try:
        sync(lease.acquire())
        results.put(("holds", lease.token))
    except zstore.LeaseHeldError as e:
        results.put(("refused", f"held by {(e.holder or {}).get('token')}"))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_of_three_processes_taking_over_an_abandoned_lease_exactly_one_holds_it(
        where, tmp_path, moto_s3):
    options = moto_s3.storage_options if where == "s3" else {}
    base = f"s3://{moto_s3.new_bucket()}" if where == "s3" else str(tmp_path)
    for round_ in range(3):
        url = f"{base}/c{round_}"
        _stale_lease(resolve(url, options))
        barrier = SPAWN.Barrier(3)
        outcomes = _in_processes(_take_over_in_process, [(url, options, barrier)] * 3)
        holders = [detail for outcome, detail in outcomes if outcome == "holds"]
        assert len(holders) == 1, outcomes
        assert all(detail == f"held by {holders[0]}"  # the live holder: the winner
                   for outcome, detail in outcomes if outcome == "refused")
        stored = json.loads(sync(resolve(url, options).get(LEASE)))
        assert stored["token"] == holders[0]


def test_a_late_renewal_cannot_overwrite_the_successors_lease(backend):
    location = resolve(backend.url(), backend.storage_options)
    stalled = Lease(location)
    sync(stalled.acquire())
    successor = {"token": "successor", "host": "elsewhere", "pid": 7, "expires": 1e12}
    sync(location.put(LEASE, json.dumps(successor).encode()))  # took it over meanwhile
    sync(stalled.renew())
    assert json.loads(sync(location.get(LEASE))) == successor
    with pytest.raises(LeaseLostError, match="taken over") as raised:
        stalled.fence()
    assert raised.value.url == location.url
    sync(stalled.release())  # releases only its own version: the successor's lease stays
    assert json.loads(sync(location.get(LEASE))) == successor


def test_a_writer_that_cannot_renew_stops_writing_before_its_lease_may_be_taken(
        tmp_path, monkeypatch):
    import zstore._write.writer as writer

    async def unreachable(self) -> None:
        raise OSError("storage unreachable for the renewal")

    monkeypatch.setattr(Lease, "renew", unreachable)
    real, written = writer._write_array, []

    async def slow(location, path, *args):
        await asyncio.sleep(0.3)
        await real(location, path, *args)
        written.append(path)

    monkeypatch.setattr(writer, "_write_array", slow)
    tree = {f"a{i}": np.full(100, i, np.float32) for i in range(8)}
    url = str(tmp_path / "c")
    with (zstore.configure(lease_ttl=1.0),  # renewals every 0.25 s, fence at 0.75 s
          pytest.raises(LeaseLostError, match="not renewed for 1 s") as raised):
        zstore.save(tree, url, max_concurrency=1)
    assert raised.value.url == url
    assert 0 < len(written) < 8
    with pytest.raises(zstore.IncompleteCheckpointError) as opened:
        zstore.open(url)
    assert opened.value.url == url


def test_no_write_of_a_failed_save_lands_after_it_raised(backend, monkeypatch):
    import zstore._write.writer as writer

    url, options = backend.url(), backend.storage_options
    real = writer._write_array

    async def one_fails_others_lag(location, path, *args):
        if path == "a0":
            raise OSError(28, "No space left on device")
        await asyncio.sleep(0.5)  # still to write when the save raises
        await real(location, path, *args)

    monkeypatch.setattr(writer, "_write_array", one_fails_others_lag)
    with pytest.raises(zstore.StorageFailedError, match="No space left") as raised:
        zstore.save({f"a{i}": np.full(1000, 1.0) for i in range(8)}, url,
                    storage_options=options)
    assert raised.value.url == url
    monkeypatch.undo()
    retry = {f"a{i}": np.full(1000, 2.0) for i in range(8)}
    zstore.save(retry, url, storage_options=options)  # not refused: the lease was released
    time.sleep(1.0)  # long after the failed save's lagging writes would have landed
    loaded = zstore.load(url, storage_options=options)
    assert {k: float(v[0]) for k, v in loaded.items()} == {k: 2.0 for k in retry}
    assert all(np.array_equal(loaded[k], v) for k, v in retry.items())


def test_two_managers_on_one_root_never_mix_their_steps(s3):
    root = s3.url("shared-run")
    errors: list[BaseException] = []

    def train(value: int) -> None:
        mgr = zstore.CheckpointManager(root, keep_last=2, storage_options=s3.storage_options)
        for step in range(1, 6):
            try:
                mgr.save(step, _tree(value * 100 + step))
            except zstore.CheckpointExistsError:
                pass  # the other manager has (or is writing) this step
            except BaseException as e:  # noqa: BLE001 - any other error fails the test
                errors.append(e)

    threads = [threading.Thread(target=train, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    mgr = zstore.CheckpointManager(root, storage_options=s3.storage_options)
    assert mgr.latest_step() == 5
    for step in mgr.steps():
        state = mgr.restore(step)[1]
        value = state["a"][0, 0]
        assert value % 100 == step and (state["a"] == value).all() and (state["b"] == value).all()


def test_readers_in_threads_always_get_correct_slices(s3):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2048, 256)).astype(np.float32)
    zstore.save({"w": data}, s3.url(), storage_options=s3.storage_options,
                access={"w": "rows"})
    ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
    failures: list[str] = []
    reads = [0]
    deadline = time.monotonic() + 3

    def reader(seed: int) -> None:
        pick = random.Random(seed)
        while time.monotonic() < deadline:
            index = _random_slice(pick)
            try:
                if not np.array_equal(ckpt["w"][index], data[index]):
                    failures.append(f"wrong data at {index}")
            except Exception as e:  # noqa: BLE001 - an error is a failure, not a dead thread
                failures.append(f"{index}: {e!r}")
            reads[0] += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures and reads[0] > 50


def _random_slice(pick: random.Random) -> tuple[slice, slice]:
    lo = pick.randrange(2048)
    hi = pick.randrange(lo, min(2048, lo + 300)) + 1
    return slice(lo, hi), slice(pick.randrange(128), 256, pick.choice([1, 3]))


def _read_in_process(url: str, options: dict, seed: int, seconds: float, results) -> None:
    data = np.random.default_rng(0).standard_normal((2048, 256)).astype(np.float32)
    ckpt = zstore.open(url, storage_options=options)
    pick, reads, bad = random.Random(seed), 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        index = _random_slice(pick) if reads % 2 else sorted(pick.sample(range(2048), 5))
        bad += not np.array_equal(ckpt["w"][index], data[index])
        reads += 1
    results.put((reads, bad))


def test_readers_in_processes_always_get_correct_slices_and_rows(s3):
    data = np.random.default_rng(0).standard_normal((2048, 256)).astype(np.float32)
    zstore.save({"w": data}, s3.url(), storage_options=s3.storage_options, access={"w": "rows"})
    outcomes = _in_processes(_read_in_process,
                             [(s3.url(), s3.storage_options, i, 3.0) for i in range(3)])
    assert all(bad == 0 and reads >= 10 for reads, bad in outcomes), outcomes


def test_a_deadline_during_cleanup_still_stops_every_write_and_frees_the_url(monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    real = MemoryFileSystem.pipe_file

    def storage(self, path, value, *args, **kwargs):  # one shard write fails, one is slow
        if "/a/c" in path:
            raise OSError(5, "injected failure")
        if "/b/c" in path:
            time.sleep(1.0)
        return real(self, path, value, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", storage)
    url = "memory://deadline/ckpt"
    with pytest.raises((zstore.SaveTimeoutError, zstore.StorageFailedError)):
        zstore.save({"a": np.ones(1000, "f4"), "b": np.ones(1000, "f4")}, url, timeout=0.3)
    monkeypatch.undo()
    assert sync(resolve(url).get(LEASE)) is None  # released, not renewed on forever
    zstore.save({"a": np.zeros(1000, "f4"), "b": np.zeros(1000, "f4")}, url)
    time.sleep(1.0)  # the slow write of the failed save, had it outlived it, would land now
    loaded = zstore.load(url)
    assert not loaded["a"].any() and not loaded["b"].any()


def test_release_removes_its_own_lease_at_a_version_it_never_learnt(backend):
    location = resolve(backend.url(), backend.storage_options)
    lease = Lease(location)
    sync(lease.acquire())
    renewed = json.loads(sync(location.get(LEASE)))  # a renewal applied, its answer lost
    renewed["expires"] += 5
    sync(location.put(LEASE, json.dumps(renewed).encode()))
    sync(lease.release())
    assert sync(location.get(LEASE)) is None


def test_renewals_work_where_the_filesystem_refuses_flock(tmp_path, monkeypatch):
    import errno
    import fcntl

    def refused(*args):
        raise OSError(errno.EBADF, "Bad file descriptor")  # NFS, on a folder

    monkeypatch.setattr(fcntl, "flock", refused)
    location = resolve(str(tmp_path / "c"))
    with zstore.configure(lease_ttl=0.4):  # renewals every 0.1 s, fence at 0.3 s
        lease = Lease(location)  # a lease keeps the settings it started with
    sync(lease.acquire())
    for _ in range(3):
        sync(lease.renew())
        lease.fence()
    sync(lease.release())
    assert sync(location.get(LEASE)) is None


def test_a_commit_refused_by_the_fence_says_the_lease_lapsed(monkeypatch):
    import zstore._write.lease as lease_module

    async def renewal_fails(*args, **kwargs):
        raise OSError(5, "renewal failed")

    real = lease_module.get_versioned

    async def slow_check(*args, **kwargs):  # the check before the commit outlasts the fence
        await asyncio.sleep(1.0)
        return await real(*args, **kwargs)

    monkeypatch.setattr(lease_module, "replace", renewal_fails)
    monkeypatch.setattr(lease_module, "get_versioned", slow_check)
    with (zstore.configure(lease_ttl=1.0),
          pytest.raises(LeaseLostError, match="not renewed") as raised):
        zstore.save({"a": np.ones(10, "f4")}, "memory://fence/commit")
    assert raised.value.url == "memory://fence/commit"


def _write_after(location, seconds: float):
    """A coroutine: wait, then one write through the location's gate (a follower's)."""
    async def write() -> None:
        await asyncio.sleep(seconds)
        async with location.writing():
            await location.put("late-object", b"x")
    return write()


def test_a_follower_writes_on_while_its_leader_renews(tmp_path):
    """The other ranks of a multi-rank save write under rank 0's lease, past the fence of
    the first renewal they saw, for as long as rank 0 keeps renewing it."""
    location = resolve(str(tmp_path / "c"), {})
    with zstore.configure(lease_ttl=1.0):  # renewals every 0.25 s, fence 0.75 s
        leader, follower = Lease(location), Lease(resolve(str(tmp_path / "c"), {}))

        async def run() -> None:
            since = time.time()
            async with leader.held():
                async with follower.followed(leader.token, leader.version, since):
                    await _write_after(follower.location, 1.5)  # twice the fence

        sync(run())
    assert sync(location.get("late-object")) == b"x"


@pytest.mark.parametrize("how", ["taken over", "not renewed"])
def test_a_follower_stops_writing_when_its_leader_loses_the_lease(tmp_path, how):
    location = resolve(str(tmp_path / "c"), {})
    with zstore.configure(lease_ttl=1.0):
        leader, follower = Lease(location), Lease(resolve(str(tmp_path / "c"), {}))

        async def run() -> None:
            since = time.time()
            await leader.acquire()  # and never renews: stalled, or taken over
            if how == "taken over":
                successor = {"token": "successor", "host": "elsewhere", "pid": 7,
                             "expires": 1e12}
                await location.put(LEASE, json.dumps(successor).encode())
            async with follower.followed(leader.token, leader.version, since):
                await _write_after(follower.location, 1.0)  # past the fence

        with pytest.raises(LeaseLostError, match=how.split()[0]):
            sync(run())
    assert sync(location.get("late-object")) is None


def test_renewals_made_at_once_never_take_the_lease_for_lost(tmp_path):
    """A collective save renews the lease itself while ``held`` renews it in the
    background: two renewals at once must both succeed, one after the other."""
    import asyncio

    async def renew_at_once() -> None:
        lease = Lease(resolve(str(tmp_path / "ckpt")))
        await lease.acquire()
        await asyncio.gather(*(lease.renew() for _ in range(4)))
        lease.fence()  # raises LeaseLostError if a renewal lost to its twin
        await lease.release()

    sync(renew_at_once())
