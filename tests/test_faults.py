"""Faults on S3, injected by the moto server itself: errors, resets, lost answers, slow and hung
responses. Saves and loads retry through them and give back exact data, or fail cleanly within a
bounded time with no commit marker, and the previous checkpoint stays intact.

Every test adds what it injected to ``INJECTED``; the last test of the module prints the total
(docs/reliability.md quotes it).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

import zstore
from zstore.testing import Faults, MotoS3

INJECTED: Counter[str] = Counter()


@pytest.fixture
def faulty(moto_s3: MotoS3) -> Iterator[MotoS3]:
    try:
        yield moto_s3
    finally:
        INJECTED.update(moto_s3.faults.injected)
        moto_s3.faults = Faults()  # off again for every other test


def _options(server: MotoS3, read_timeout: float = 2, attempts: int = 10) -> dict:
    options = dict(server.storage_options)
    options["config_kwargs"] = {"read_timeout": read_timeout, "connect_timeout": 2,
                                "retries": {"max_attempts": attempts, "mode": "standard"}}
    return options


def _tree(seed: int, arrays: int = 24) -> dict:
    rng = np.random.default_rng(seed)
    return {f"layer{i}": rng.standard_normal((64, 96)).astype(np.float32) for i in range(arrays)}


def _round_trips(server: MotoS3, bucket: str, rounds: int, options: dict, first: int = 0
                 ) -> None:
    for r in range(first, first + rounds):
        tree = _tree(r)
        url = f"s3://{bucket}/ckpt-{r}"
        zstore.save(tree, url, storage_options=options)
        loaded = zstore.load(url, storage_options=options)
        assert all(np.array_equal(loaded[k], v) for k, v in tree.items()), f"round {r}"
        ckpt = zstore.open(url, storage_options=options)
        assert np.array_equal(ckpt["layer3"][5:9, ::7], tree["layer3"][5:9, ::7])


@pytest.mark.parametrize("kinds, rate, rounds", [(("503", "500"), 0.05, 2),
                                                 (("reset", "lost"), 0.2, 3)])
def test_saves_and_loads_retry_through_errors_and_dropped_connections(faulty, kinds, rate, rounds):
    bucket = faulty.new_bucket("faults")
    faulty.faults = Faults(rate=rate, kinds=kinds, seed=len(kinds[0]))
    _round_trips(faulty, bucket, rounds, _options(faulty))
    assert faulty.faults.total >= 5, faulty.faults.injected


def test_slow_and_hung_responses_are_timed_out_and_retried(faulty):
    bucket = faulty.new_bucket("faults")
    faulty.faults = Faults(rate=0.05, kinds=("slow", "hang"), delay=1.2, seed=3)
    _round_trips(faulty, bucket, 1, _options(faulty, read_timeout=0.8))
    assert faulty.faults.injected["hang"] + faulty.faults.injected["slow"] >= 3


def test_a_save_that_cannot_finish_fails_fast_and_commits_nothing(faulty):
    bucket = faulty.new_bucket("faults")
    options = _options(faulty, attempts=1)  # s3fs still retries a SlowDown 5 times itself
    zstore.save(_tree(0), f"s3://{bucket}/previous", storage_options=options)
    faulty.faults = Faults(rate=1.0, kinds=("503",))
    started = time.monotonic()
    with pytest.raises(zstore.StorageFailedError, match="after retries.*commits nothing"):
        zstore.save(_tree(1), f"s3://{bucket}/next", storage_options=options)
    assert time.monotonic() - started < 20
    faulty.faults = Faults()
    with pytest.raises((zstore.CheckpointNotFoundError, zstore.IncompleteCheckpointError)):
        zstore.open(f"s3://{bucket}/next", storage_options=options)
    loaded = zstore.load(f"s3://{bucket}/previous", storage_options=options)
    assert all(np.array_equal(loaded[k], v) for k, v in _tree(0).items())


def test_a_hung_save_stops_at_its_deadline_without_committing(faulty):
    bucket = faulty.new_bucket("faults")
    options = _options(faulty, read_timeout=30)
    faulty.faults = Faults(rate=1.0, kinds=("hang",), delay=5)
    started = time.monotonic()
    with pytest.raises(zstore.SaveTimeoutError) as raised:
        zstore.save(_tree(1), f"s3://{bucket}/next", storage_options=options, timeout=1.5)
    assert raised.value.timeout == 1.5 and raised.value.url == f"s3://{bucket}/next"
    assert time.monotonic() - started < 4
    faulty.faults = Faults()
    with pytest.raises((zstore.CheckpointNotFoundError, zstore.IncompleteCheckpointError)):
        zstore.open(f"s3://{bucket}/next", storage_options=options)


def _faults_from_the_first_data_write(monkeypatch, server: MotoS3, faults: Faults) -> None:
    import zstore._write.writer as writer

    real = writer._write_array

    async def then_faults(*args):
        server.faults = faults  # the lease, placeholder and metadata are written by now
        await real(*args)

    monkeypatch.setattr(writer, "_write_array", then_faults)


def test_a_quota_error_midway_fails_cleanly_and_keeps_the_previous_checkpoint(
        faulty, monkeypatch):
    bucket = faulty.new_bucket("quota")
    options = _options(faulty)
    zstore.save(_tree(0), f"s3://{bucket}/c", storage_options=options)
    _faults_from_the_first_data_write(
        monkeypatch, faulty, Faults(rate=1.0, kinds=("quota",), methods=("PUT",)))
    with pytest.raises((zstore.StorageAccessError, zstore.StorageFailedError),
                       match="QuotaExceeded.*quota is used up"):
        zstore.save(_tree(1), f"s3://{bucket}/d", storage_options=options)
    monkeypatch.undo()
    faulty.faults = Faults()
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.open(f"s3://{bucket}/d", storage_options=options)
    loaded = zstore.load(f"s3://{bucket}/c", storage_options=options)
    assert all(np.array_equal(loaded[k], v) for k, v in _tree(0).items())
    zstore.save(_tree(1), f"s3://{bucket}/d", storage_options=options)  # room again
    loaded = zstore.load(f"s3://{bucket}/d", storage_options=options)
    assert all(np.array_equal(loaded[k], v) for k, v in _tree(1).items())


def test_writes_stuck_in_flight_are_cancelled_when_the_lease_lapses(faulty, monkeypatch):
    bucket = faulty.new_bucket("stuck")
    options = _options(faulty, read_timeout=30)
    _faults_from_the_first_data_write(  # every PUT hangs, the lease's renewals included
        monkeypatch, faulty, Faults(rate=1.0, kinds=("hang",), methods=("PUT",), delay=8))
    started = time.monotonic()
    with (zstore.configure(lease_ttl=1.0),  # the fence lapses 0.75 s after a renewal
          pytest.raises(zstore.LeaseLostError, match="not renewed") as raised):
        zstore.save(_tree(1), f"s3://{bucket}/c", storage_options=options)
    assert raised.value.url == f"s3://{bucket}/c"
    assert time.monotonic() - started < 5  # not the 30 s read timeout of the stuck requests
    faulty.faults = Faults()
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.open(f"s3://{bucket}/c", storage_options=options)


def test_storage_failures_while_reading_are_zstore_errors_naming_the_checkpoint(
        faulty, monkeypatch):
    import zstore._read.verify as verify_module

    bucket = faulty.new_bucket("reads")
    url, options = f"s3://{bucket}/c", _options(faulty, attempts=1)
    zstore.save(_tree(0), url, storage_options=options)
    ckpt = zstore.open(url, storage_options=options)
    faulty.faults = Faults(rate=1.0, kinds=("403",), methods=("GET",))
    with pytest.raises(zstore.StorageAccessError, match="check the credentials") as raised:
        ckpt["layer3"][0]
    assert raised.value.url == url
    faulty.faults = Faults(rate=1.0, kinds=("500",), methods=("GET",))
    with pytest.raises(zstore.StorageFailedError, match="internal error") as failed:
        ckpt.load()
    assert failed.value.url == url
    opened = verify_module.open_checkpoint

    def open_then_fail(*args, **kwargs):
        checkpoint = opened(*args, **kwargs)
        faulty.faults = Faults(rate=1.0, kinds=("reset",), methods=("GET",))
        return checkpoint

    faulty.faults = Faults()
    monkeypatch.setattr(verify_module, "open_checkpoint", open_then_fail)
    with pytest.raises(zstore.StorageFailedError) as failed:  # not "damaged": it is not
        verify_module.verify(url, storage_options=options)
    assert failed.value.url == url
    faulty.faults = Faults()  # faults meant to end a read are not counted as survived


def test_a_checkpoint_series_survives_faults(faulty):
    bucket = faulty.new_bucket("faults")
    options = _options(faulty)
    faulty.faults = Faults(rate=0.15, kinds=("reset", "lost"), seed=5)
    mgr = zstore.CheckpointManager(f"s3://{bucket}/run", keep_last=2, storage_options=options)
    for step in range(1, 5):
        mgr.save(step, _tree(step, arrays=8), blocking=False)
    mgr.wait()
    faulty.faults = Faults()
    assert mgr.steps() == [3, 4]
    step, state = mgr.restore()
    assert step == 4 and all(np.array_equal(state[k], v) for k, v in _tree(4, 8).items())


@pytest.mark.slow
def test_a_thousand_faults_and_no_corrupt_result(faulty):
    bucket = faulty.new_bucket("faults")
    # server errors cost a backoff each (botocore's, up to seconds): a fifth of the mix
    faulty.faults = Faults(rate=0.25, kinds=("503", "500", "reset", "lost", "reset", "lost",
                                             "reset", "lost", "reset", "lost"), seed=11)
    rounds = 0
    while faulty.faults.total < 1000:
        _round_trips(faulty, bucket, 1, _options(faulty), first=rounds)
        rounds += 1
    assert rounds >= 5


def test_zz_report_the_faults_survived():
    print(f"\nfaults injected and survived in this module: {sum(INJECTED.values())} "
          f"{dict(INJECTED)}")
    assert sum(INJECTED.values()) > 0
