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
    with pytest.raises(zstore.SaveTimeoutError, match="within 1.5 s"):
        zstore.save(_tree(1), f"s3://{bucket}/next", storage_options=options, timeout=1.5)
    assert time.monotonic() - started < 4
    faulty.faults = Faults()
    with pytest.raises((zstore.CheckpointNotFoundError, zstore.IncompleteCheckpointError)):
        zstore.open(f"s3://{bucket}/next", storage_options=options)


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
