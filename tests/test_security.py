"""Security: loading runs no code, secrets are never stored, encryption settings pass through,
and malformed metadata (fuzzed) only ever raises zstore's own errors."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import boto3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zstore
from zstore._compat import sync
from zstore._format import COMMIT_MARKER, HASHES, LEASE, ROOT
from zstore._read.verify import verify
from zstore._storage import resolve

PACKAGE = Path(zstore.__file__).parent


def test_the_library_has_no_pickle_eval_or_exec():
    pattern = re.compile(r"\b(import pickle|pickle\.|cloudpickle|eval\(|exec\(|__import__\()")
    offenders = [f"{path.name}:{n}" for path in PACKAGE.glob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == []


def _client(s3):
    return boto3.client("s3", endpoint_url=s3.storage_options["endpoint_url"],
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        region_name="us-east-1")


def _objects(client, bucket: str, prefix: str) -> list[str]:
    found = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return [o["Key"] for o in found]


@pytest.mark.parametrize("sse", [
    {"ServerSideEncryption": "AES256"},
    {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/zstore-test"},
], ids=["sse-s3", "sse-kms"])
def test_server_side_encryption_applies_to_every_object(s3, sse):
    options = dict(s3.storage_options, s3_additional_kwargs=sse)
    bucket = s3.url().split("/")[2]
    mgr = zstore.CheckpointManager(s3.url("run"), storage_options=options)
    mgr.save(1, {"w": np.ones((300, 300)), "b": np.arange(5)})
    mgr.save(2, {"w": np.ones((300, 300)), "b": np.arange(6)})  # copies objects from step 1
    client = _client(s3)
    keys = _objects(client, bucket, "run/")
    assert any("/w/c/" in k for k in keys) and any(k.endswith(COMMIT_MARKER) for k in keys)
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption") == sse["ServerSideEncryption"], key
    assert mgr.restore()[1]["b"].tolist() == list(range(6))


def test_credentials_are_never_written_into_a_checkpoint(s3):
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    options = dict(s3.storage_options, secret=secret, key="AKIAEXAMPLE123")
    # moto accepts any credentials; these are the ones s3fs signs with
    zstore.save({"w": np.ones(3)}, s3.url(), storage_options=options,
                metadata={"note": "run config"})
    client = _client(s3)
    bucket = s3.url().split("/")[2]
    for key in _objects(client, bucket, "ckpt/"):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert secret.encode() not in body and b"AKIAEXAMPLE123" not in body, key


def test_bad_storage_options_are_named_without_echoing_a_secret(s3):
    options = dict(s3.storage_options, secret="hunter2-secret", no_such_option=1)
    with pytest.raises(zstore.InvalidURLError, match="no_such_option") as raised:
        zstore.save({"w": np.ones(2)}, s3.url(), storage_options=options)
    assert "hunter2-secret" not in str(raised.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                        children, max_size=4),
    max_leaves=20)


def _valid_root() -> dict:
    url = "memory://fuzz/template"
    zstore.save({"a": np.arange(6.0).reshape(2, 3), "n": {"s": np.int64(3), "x": [1, "t"]}},
                url, overwrite=True, metadata={"labels": {0: "a"}, "runs": [{1: 2}]})
    return json.loads(sync(resolve(url).get(ROOT)))


TEMPLATE = _valid_root()
PATHS: list[tuple] = []


def _collect(node, path=()):
    PATHS.append(path)
    if isinstance(node, dict):
        for key, child in node.items():
            _collect(child, (*path, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _collect(child, (*path, i))


_collect(TEMPLATE)


def _replace(doc, path, value):
    if not path:
        return value
    copy = json.loads(json.dumps(doc))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


def _open_committed(root: bytes) -> None:
    """Store ``root`` with a commit marker that vouches for it, then open and read it all."""
    location = resolve("memory://fuzz/case")
    marker = json.dumps({"format": 1, "committed": 0.0,
                         "zarr_json_sha256": hashlib.sha256(root).hexdigest()}).encode()
    sync(location.put(ROOT, root))
    sync(location.put(COMMIT_MARKER, marker))
    ckpt = zstore.open("memory://fuzz/case")
    ckpt.load()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(PATHS), value=json_values)
def test_fuzzed_manifests_raise_only_zstore_errors(where, value):
    root = json.dumps(_replace(TEMPLATE, where, value)).encode()
    try:
        _open_committed(root)
    except zstore.ZStoreError:
        pass


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_as_metadata_raise_only_zstore_errors(raw):
    try:
        _open_committed(raw)
    except zstore.ZStoreError:
        pass


@settings(max_examples=200, deadline=None)
@given(marker=json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200))
def test_fuzzed_commit_markers_raise_only_zstore_errors(marker):
    location = resolve("memory://fuzz/marker")
    sync(location.put(ROOT, json.dumps(TEMPLATE).encode()))
    sync(location.put(COMMIT_MARKER, marker))
    with pytest.raises(zstore.ZStoreError):
        zstore.open("memory://fuzz/marker")


DEEP = b"[" * 100_000 + b"]" * 100_000  # past Python's recursion limit when parsed


@pytest.mark.parametrize("key", [ROOT, COMMIT_MARKER, HASHES, LEASE])
def test_json_nested_too_deeply_in_any_stored_object_raises_only_zstore_errors(tmp_path, key):
    tree = {"w": np.arange(6.0)}
    mgr = zstore.CheckpointManager(str(tmp_path / "run"))
    mgr.save(1, tree)
    mgr.save(2, tree)
    damaged = tmp_path / "run" / "step-2"
    (damaged / key).write_bytes(DEEP)
    if key == ROOT:  # a marker that vouches for it: only parsing stands in the way
        (damaged / COMMIT_MARKER).write_text(json.dumps(
            {"format": 1, "committed": 0.0, "zarr_json_sha256": hashlib.sha256(DEEP).hexdigest()}))
    url = mgr.url(2)
    for next_step in (lambda: zstore.load(url), lambda: verify(url), mgr.steps, mgr.restore,
                      lambda: zstore.save(tree, str(tmp_path / "next"), base=url),
                      lambda: zstore.save(tree, url, overwrite=True)):
        try:
            next_step()
        except zstore.ZStoreError:
            pass
    assert 1 in zstore.CheckpointManager(str(tmp_path / "run")).steps()
