"""Backends every storage test runs against: a local folder, memory://, and S3 on moto.

The S3 backend is moto's server over real HTTP (s3fs pointed at its endpoint),
behind a middleware that logs every request it answers (``zstore.testing``), so
tests state request counts as seen on the wire, not as zstore reports them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings

from zstore.testing import MotoS3, WireLog

# Property tests run the same examples on every run (CI must not flake on a new draw);
# HYPOTHESIS_PROFILE=explore draws fresh ones, to look for counterexamples by hand.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    yield server
    server.stop()


@dataclass
class Backend:
    """Where a test's checkpoints go: ``url(name)`` plus the options to reach it."""

    name: str
    base: str
    storage_options: dict[str, Any]
    wire: WireLog | None = None

    def url(self, name: str = "ckpt") -> str:
        return f"{self.base}/{name}"


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Backend:
    if request.param == "local":
        return Backend("local", str(tmp_path), {})
    if request.param == "memory":
        return Backend("memory", f"memory://zstore-tests/{uuid.uuid4().hex}", {})
    server: MotoS3 = request.getfixturevalue("moto_s3")
    return Backend("s3", f"s3://{server.new_bucket()}", server.storage_options, server.log)


@pytest.fixture
def s3(moto_s3: MotoS3) -> Backend:
    """The S3 backend alone, for tests that count requests on the wire."""
    return Backend("s3", f"s3://{moto_s3.new_bucket()}", moto_s3.storage_options, moto_s3.log)
