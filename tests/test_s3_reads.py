"""S3 reads through obstore, writes through s3fs; s3fs reads where obstore cannot say the
caller's options, or where asked to; both decode the same bytes."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import zstore
from zstore._storage import obstore_config

ENDPOINT = {"endpoint_url": "http://127.0.0.1:9000", "key": "k", "secret": "s",
            "config_kwargs": {"connect_timeout": 10, "read_timeout": 60,
                              "retries": {"max_attempts": 8}}}


def _tree() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    tree = {f"layers.{i}.w": rng.standard_normal((96, 64), dtype=np.float32)
            .astype(ml_dtypes.bfloat16) for i in range(6)}  # one stacked array
    tree["embed"] = rng.standard_normal((3000, 256), dtype=np.float32)  # sharded, 3 MiB
    tree["fp8"] = rng.standard_normal(1000).astype(ml_dtypes.float8_e4m3fn)
    return tree


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_loads_read_through_obstore_and_saves_write_through_s3fs(s3):
    tree = _tree()
    s3.wire.clients.clear()
    zstore.save(tree, s3.url(), storage_options=s3.storage_options, access={"embed": "rows"})
    written = dict(s3.wire.clients)
    s3.wire.clients.clear()
    loaded = zstore.load(s3.url(), storage_options=s3.storage_options)
    assert all(_same(loaded[k], v) for k, v in tree.items())
    assert set(s3.wire.clients) == {("GET", "obstore")}, s3.wire.clients
    assert written[("PUT", "botocore")] > 0 and ("PUT", "obstore") not in written


@pytest.mark.parametrize("reader", ["obstore", "s3fs"])
def test_each_reader_reads_every_kind_of_region_bit_for_bit_in_the_same_requests(s3, reader):
    tree = _tree()
    zstore.save(tree, s3.url(), storage_options=s3.storage_options, access={"embed": "rows"})
    with zstore.configure(s3_reader=reader):
        s3.wire.clear()
        loaded = zstore.load(s3.url(), storage_options=s3.storage_options)
        full = s3.wire.methods()
        assert set(s3.wire.clients) == {("GET", "botocore" if reader == "s3fs" else "obstore")}
        ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
        s3.wire.clear()
        rows = ckpt["embed"][[5, 2999, 1234]]
        member = ckpt["layers.4.w"][10:20]
        partial = s3.wire.methods()
    assert all(_same(loaded[k], v) for k, v in tree.items())
    assert _same(rows, tree["embed"][[5, 2999, 1234]])
    assert _same(member, tree["layers.4.w"][10:20])
    plan = zstore.plan(tree, backend="s3", access={"embed": "rows"})
    assert full == {"GET": plan.load_requests}  # the plan's count, whichever client reads
    assert set(partial) == {"GET"} and partial["GET"] <= 2 * 3 + 2


def test_a_reader_asked_for_where_it_cannot_serve_names_the_fix(s3):
    options = {**s3.storage_options, "profile": "training"}  # a profile: botocore alone
    zstore.save({"w": np.ones(4)}, s3.url(), storage_options=s3.storage_options)
    with zstore.configure(s3_reader="obstore"), pytest.raises(
            zstore.InvalidURLError, match="s3_reader='obstore'.*s3_reader='auto'"):
        zstore.open(s3.url(), storage_options=options)


def test_options_obstore_takes_say_where_and_as_whom_to_read():
    config = obstore_config("bucket", "run/step-1", {**ENDPOINT, "token": "t"})
    assert config is not None
    assert config["bucket"] == "bucket" and config["prefix"] == "run/step-1"
    assert config["config"] == {"region": "us-east-1", "access_key_id": "k",
                                "secret_access_key": "s", "session_token": "t",
                                "endpoint": "http://127.0.0.1:9000",
                                "virtual_hosted_style_request": False}
    assert config["client_options"] == {"connect_timeout": "10s", "read_timeout": "60s",
                                        "allow_http": True}
    assert config["retry_config"]["max_retries"] == 8  # botocore's max_attempts: retries


def test_botocore_retry_settings_become_obstore_retries_however_botocore_left_them():
    said = {**ENDPOINT, "config_kwargs": {**ENDPOINT["config_kwargs"],
                                          "retries": {"total_max_attempts": 4}}}
    config = obstore_config("b", "", said)
    assert config is not None and config["retry_config"]["max_retries"] == 3
    assert config["prefix"] is None


@pytest.mark.parametrize("extra", [
    {"profile": "training"},                                    # credentials botocore finds
    {"s3_additional_kwargs": {"SSECustomerKey": "x" * 32}},     # a key every GET must send
    {"client_kwargs": {"verify": False}},                       # TLS settings for botocore
    {"config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "proxies": {"http": "p"}}},
    {"key": None, "secret": None},                              # no credentials given
])
def test_options_obstore_cannot_say_keep_reads_on_s3fs(extra, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    assert obstore_config("b", "p", {**ENDPOINT, **extra}) is None


def test_aws_without_a_region_is_left_to_s3fs_which_asks_where_the_bucket_lives(monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    aws = {k: v for k, v in ENDPOINT.items() if k != "endpoint_url"}
    assert obstore_config("b", "p", aws) is None
    config = obstore_config("b", "p", {**aws, "client_kwargs": {"region_name": "eu-west-1"}})
    assert config is not None
    assert config["config"]["region"] == "eu-west-1"
    assert config["config"]["virtual_hosted_style_request"] is True


def test_credentials_from_the_environment_or_none_at_all_for_a_public_bucket(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    bare = {k: v for k, v in ENDPOINT.items() if k not in ("key", "secret")}
    config = obstore_config("b", "p", bare)
    assert config is not None and "access_key_id" not in config["config"]  # obstore reads env
    public = obstore_config("b", "p", {**bare, "anon": True})
    assert public is not None and public["config"]["skip_signature"] is True
