"""Endpoints that cannot be reached, and buckets that do not exist: each fails at once with one
line that names it, and nothing is printed at interpreter exit.

A refused connection or an unknown host is no transient fault: retrying it only delays the
error (37 s before the endpoint was probed). Each process check runs in a fresh interpreter,
so its stderr shows what the user would see, exit included.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import zstore
from zstore._storage import resolve

BOUND = 10  # seconds: retrying a refused connection took 37 s (API) and 53 s (CLI)


def closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_python(script: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args],
                          capture_output=True, text=True, timeout=120)
    return done, time.perf_counter() - started


CALLS = """
    import sys, numpy as np, zstore
    options = {"endpoint_url": sys.argv[1], "key": "x", "secret": "y"}
    for call in (lambda: zstore.save({"w": np.ones(3)}, "s3://b/x", storage_options=options),
                 lambda: zstore.open("s3://b/x", storage_options=options),
                 lambda: zstore.load("s3://b/x", storage_options=options)):
        try:
            call()
        except zstore.StorageFailedError as e:
            print(e)
"""


@pytest.mark.parametrize("endpoint, reason", [
    (None, "connection refused"),  # a closed port on this machine
    ("http://no-such-host.invalid:9000", "unknown host"),  # .invalid never resolves (RFC 6761)
])
def test_an_unreachable_endpoint_fails_at_once_naming_it_and_exits_quietly(endpoint, reason):
    endpoint = endpoint or f"http://127.0.0.1:{closed_port()}"
    done, seconds = run_python(CALLS, endpoint)
    assert seconds < BOUND
    assert done.stdout.splitlines() == [
        f"cannot connect to S3 endpoint {endpoint} (for 's3://b/x'): {reason}; "
        "check endpoint_url in storage_options"] * 3
    assert done.stderr == ""


def test_the_cli_reports_a_refused_connection_in_one_line_at_once():
    endpoint = f"http://127.0.0.1:{closed_port()}"
    done, seconds = run_python(
        "import sys; from zstore._cli import main; sys.exit(main(sys.argv[1:]))",
        f"-oendpoint_url={endpoint}", "-okey=x", "-osecret=y", "info", "s3://b/x")
    assert seconds < BOUND
    assert done.returncode != 0
    [line] = done.stderr.splitlines()
    assert line.endswith(f"cannot connect to S3 endpoint {endpoint} (for 's3://b/x'): "
                         "connection refused; check endpoint_url in storage_options")


def test_an_endpoint_that_stops_listening_is_named_once_the_retries_are_spent():
    # It accepted the first connection, so requests go out and are retried; the error that
    # ends them names the endpoint, and the requests still retrying end quietly at exit.
    done, _ = run_python("""
        import socket, zstore
        listener = socket.create_server(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        options = {"endpoint_url": endpoint, "key": "x", "secret": "y",
                   "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}}}
        zstore._storage.location.resolve("s3://b/x", options)
        listener.close()
        try:
            zstore.open("s3://b/x", storage_options=options)
        except zstore.StorageFailedError as e:
            print(str(e).replace(endpoint, "ENDPOINT"))
    """)
    assert done.stdout.splitlines() == [
        "cannot connect to S3 endpoint ENDPOINT (for 's3://b/x'): connection refused; "
        "check endpoint_url in storage_options"]
    assert done.stderr == ""


def test_a_save_and_load_on_s3_exit_quietly():
    done, _ = run_python("""
        import numpy as np, zstore
        from zstore.testing import MotoS3
        server = MotoS3()
        url = f"s3://{server.new_bucket()}/x"
        zstore.save({"w": np.ones(3)}, url, storage_options=server.storage_options)
        print(zstore.load(url, storage_options=server.storage_options)["w"].sum())
    """)
    assert done.stdout == "3.0\n"
    assert done.stderr == ""


def test_an_endpoint_behind_a_proxy_is_not_probed_from_here(monkeypatch):
    # The proxy reaches the endpoint, not this machine: a direct connect proves nothing.
    endpoint = f"http://127.0.0.1:{closed_port()}"
    options = {"endpoint_url": endpoint, "key": "x", "secret": "y"}
    with pytest.raises(zstore.StorageFailedError, match="connection refused"):
        resolve("s3://b/x", options)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    resolve("s3://b/x", options)


@pytest.mark.parametrize("call", ["open", "load"])
def test_reading_from_a_missing_bucket_says_the_bucket_does_not_exist_as_a_save_does(s3, call):
    url = "s3://no-such-bucket-zstore/run/step-1"
    with pytest.raises(zstore.InvalidURLError) as saving:
        zstore.save({"w": np.ones(2)}, url, storage_options=s3.storage_options)
    with pytest.raises(zstore.CheckpointNotFoundError) as reading:
        getattr(zstore, call)(url, storage_options=s3.storage_options)
    reason = str(saving.value).split(": ", 1)[1]
    assert "bucket does not exist" in reason
    assert str(reading.value) == f"no checkpoint at {url!r}: {reason}"


def test_a_missing_checkpoint_in_an_existing_bucket_does_not_blame_the_bucket(s3):
    with pytest.raises(zstore.CheckpointNotFoundError) as reading:
        zstore.open(s3.url("never-saved"), storage_options=s3.storage_options)
    assert "bucket does not exist" not in str(reading.value)
