"""The storage edge: URL resolution, conditional create, listing, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from zarr.core.sync import sync

import zstore
from zstore._storage.conditional import get_versioned, remove, replace
from zstore._storage.location import resolve


def test_put_new_refuses_to_replace_an_existing_object(backend):
    location = resolve(backend.url(), backend.storage_options)
    sync(location.put_new("marker", b"first"))
    with pytest.raises(FileExistsError):
        sync(location.put_new("marker", b"second"))
    assert sync(location.get("marker")) == b"first"


def test_replace_and_remove_act_only_on_the_version_last_seen(backend):
    location = resolve(backend.url(), backend.storage_options)
    first = sync(location.put_new("lease", b"first"))
    assert sync(get_versioned(location, "lease")) == (b"first", first)
    second = sync(replace(location, "lease", b"second", first))
    assert second is not None and second != first
    assert sync(replace(location, "lease", b"third", first)) is None  # a stale version
    assert sync(remove(location, "lease", first)) is False
    assert sync(get_versioned(location, "lease")) == (b"second", second)
    assert sync(remove(location, "lease", second)) is True
    assert sync(get_versioned(location, "lease")) is None
    assert sync(replace(location, "lease", b"fourth", second)) is None  # gone: not recreated
    assert sync(location.get("lease")) is None


def test_sizes_lists_every_object_with_its_size(backend):
    location = resolve(backend.url(), backend.storage_options)
    sync(location.put("a/b/c", b"12345"))
    sync(location.put("d", b"1"))
    assert sync(location.sizes()) == {"a/b/c": 5, "d": 1}


def test_sizes_of_a_missing_prefix_is_empty(backend):
    assert sync(resolve(backend.url("absent"), backend.storage_options).sizes()) == {}


def test_a_listing_sees_checkpoints_written_by_another_client(s3):
    """A job polling for new steps must see what other processes wrote since its last look."""
    from zstore._read.catalog import find_checkpoints

    zstore.save({"w": np.ones(3)}, s3.url("step-0"), storage_options=s3.storage_options)
    assert len(find_checkpoints(s3.base, storage_options=s3.storage_options)) == 1
    other_client = {**s3.storage_options, "default_block_size": 7 * 2**20}  # a separate s3fs
    zstore.save({"w": np.ones(3)}, s3.url("step-1"), storage_options=other_client)
    found = find_checkpoints(s3.base, storage_options=s3.storage_options)
    assert [(c.name, c.complete) for c in found] == [("step-0", True), ("step-1", True)]


def test_s3_defaults_avoid_a_head_before_each_get(s3):
    zstore.save({"w": np.ones((100, 100))}, s3.url(), storage_options=s3.storage_options)
    w = zstore.open(s3.url(), storage_options=s3.storage_options)["w"]
    s3.wire.clear()
    w[3]
    assert "HEAD" not in s3.wire.methods()


def test_caller_storage_options_win_over_defaults(s3):
    location = resolve(s3.url(), {**s3.storage_options, "max_concurrency": 4})
    assert location.fs.max_concurrency == 4
