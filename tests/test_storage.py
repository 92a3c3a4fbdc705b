"""The storage edge: URL resolution, conditional create, listing, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import zstore
from zstore._compat import sync
from zstore._storage import get_versioned, remove, replace, resolve


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
    from zstore._read import find_checkpoints

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


# --- backends: chosen once, by protocol -------------------------------------------------------


@pytest.mark.parametrize("url, kind", [
    ("/some/folder", "LocalBackend"), ("file:///some/folder", "LocalBackend"),
    ("memory://bucket/x", "ThreadedBackend"), ("s3://bucket/x", "S3Backend"),
    ("s3a://bucket/x", "S3Backend")])
def test_resolve_chooses_the_backend_by_the_urls_protocol(url, kind):
    location = resolve(url, {"key": "x", "secret": "y"} if url.startswith("s3") else None)
    assert type(location.backend).__name__ == kind
    assert location.writes_in_threads == (kind != "S3Backend")


def test_an_unregistered_async_filesystem_compares_then_writes(tmp_path):
    """The generic backend, for gcs, azure and the like, driven here over memory's async
    wrapper: replace and remove still act only on the version last seen."""
    from zstore._storage import FsspecBackend, open_store

    backend = FsspecBackend(open_store(f"memory://generic/{tmp_path.name}", {}))
    first = sync(backend.put_new("lease", b"first"))
    with pytest.raises(FileExistsError):
        sync(backend.put_new("lease", b"again"))
    second = sync(backend.replace("lease", b"second", first))
    assert second is not None and sync(backend.replace("lease", b"third", first)) is None
    assert sync(backend.remove("lease", first)) is False
    assert sync(backend.get_versioned("lease")) == (b"second", second)
    assert sync(backend.remove("lease", second)) is True and sync(backend.get("lease")) is None


def test_a_local_save_imports_no_s3_client(tmp_path):
    import subprocess
    import sys

    script = ("import sys, numpy as np, zstore; "
              f"zstore.save({{'w': np.ones(3)}}, {str(tmp_path / 'c')!r}); zstore.load("
              f"{str(tmp_path / 'c')!r}); print(sorted({{'s3fs', 'botocore', 'aiobotocore'}} "
              "& set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_zstore_leaves_the_s3_filesystems_the_rest_of_the_process_uses_alone(s3):
    """zstore runs s3fs with fewer retries of its own: on its own instance, never on the one
    fsspec hands everyone else for the same options."""
    import fsspec
    from s3fs import S3FileSystem

    options = resolve(s3.url(), s3.storage_options).fs.storage_options  # what zstore passes
    theirs = fsspec.filesystem("s3", **options)
    plain = fsspec.filesystem("s3", **s3.storage_options)
    zstore.save({"w": np.ones(3)}, s3.url(), storage_options=s3.storage_options)
    zstore.load(s3.url(), storage_options=s3.storage_options)
    location = resolve(s3.url(), s3.storage_options)
    ours = type(location.fs).retries  # zstore's own subclass of S3FileSystem
    assert theirs.retries == plain.retries == S3FileSystem.retries != ours
    assert location.fs is not theirs and location.fs.retries == ours
    assert location.fs is resolve(s3.url("other"), s3.storage_options).fs  # shared by zstore


# --- foreign errors: mapped by type, S3's by the code the server answered ----------------------


def _client_error(code: str, message: str, status: int = 400):
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    error = ClientError({"Error": {"Code": code, "Message": message},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    return translate_boto_error(error)  # as s3fs raises it: the ClientError is its cause


URL = "s3://bucket/ckpt"


def test_s3_answers_are_told_apart_by_their_code_not_their_message():
    from zstore._storage import is_precondition_failure, translate

    quota = translate(URL, _client_error("QuotaExceeded", "Bucket full", 403))
    assert isinstance(quota, zstore.StorageFailedError) and "quota is used up" in str(quota)
    full = translate(URL, _client_error("XMinioStorageFull", "Storage full", 507))
    assert isinstance(full, zstore.StorageFailedError) and "quota is used up" in str(full)
    denied = translate(URL, _client_error("AccessDenied", "no quota for you", 403))
    assert isinstance(denied, zstore.StorageAccessError) and denied.url == URL
    assert "check the credentials" in str(denied) and "quota is used up" not in str(denied)
    assert is_precondition_failure(_client_error("PreconditionFailed", "x", 412))
    assert is_precondition_failure(_client_error("ConditionalRequestConflict", "x", 409))
    assert not is_precondition_failure(_client_error("InternalError", "PreconditionFailed", 500))
    assert not is_precondition_failure(OSError("At least one of the pre-conditions ..."))


def test_foreign_errors_become_zstore_errors_naming_the_url():
    import errno

    import aiohttp
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    from zstore._storage import RejectedOptions, translate

    cases = [
        (NoCredentialsError(), zstore.StorageAccessError, "check the credentials"),
        (PermissionError("denied"), zstore.StorageAccessError, "check the credentials"),
        (FileNotFoundError("The specified bucket does not exist"), zstore.InvalidURLError,
         "does the bucket or parent folder exist"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), zstore.StorageFailedError,
         "quota is used up"),
        (OSError(errno.EIO, "We encountered an internal error"), zstore.StorageFailedError,
         "after retries"),
        (ConnectionClosedError(endpoint_url="http://h:9"), zstore.StorageFailedError,
         "after retries"),
        (aiohttp.ClientPayloadError("cut off"), zstore.StorageFailedError, "after retries"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/x",
                                 error=ConnectionRefusedError(111, "refused")),
         zstore.StorageFailedError,
         ("cannot connect to S3 endpoint http://127.0.0.1:9 (for 's3://bucket/ckpt'): "
          "connection refused")),
        (RejectedOptions("unexpected keyword argument 'no_such_option'"),
         zstore.InvalidURLError, "storage_options for 's3://bucket/ckpt' were not accepted"),
    ]
    for error, kind, says in cases:
        mapped = translate(URL, error)
        assert isinstance(mapped, kind) and mapped.url == URL, (error, mapped)
        assert says in str(mapped) and URL in str(mapped), (error, mapped)
    saving = translate(URL, OSError(errno.EIO, "reset"), saving=True)
    assert str(saving).endswith("a save stopped by it commits nothing")
    assert saving.__cause__ is not None  # a failure keeps its traceback; a refusal does not
    assert translate(URL, PermissionError("denied")).__cause__ is None
    for passes in (ValueError("bad data"), TypeError("a bug"), FileExistsError("lease"),
                   zstore.CorruptCheckpointError("damaged")):
        assert translate(URL, passes) is None
