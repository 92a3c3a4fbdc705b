"""Backends every storage test runs against: a local folder, memory://, and S3 on moto.

The S3 backend is moto's server over real HTTP (s3fs pointed at its endpoint),
wrapped in a WSGI middleware that counts every request the server receives, so
tests can state request counts as seen on the wire, not as zstore reports them.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

_ids = itertools.count()
logging.getLogger("werkzeug").setLevel(logging.ERROR)


@dataclass
class WireLog:
    """Requests the moto server answered: (method, path?query, has Range header)."""

    requests: list[tuple[str, str, bool]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.max_in_flight = 0

    def count(self, method: str | None = None, prefix: str = "") -> int:
        return sum(1 for m, p, _ in self.requests if (method is None or m == method)
                   and p.startswith(prefix))

    def methods(self) -> Counter[str]:
        return Counter(m for m, _, _ in self.requests)


class MotoS3:
    """An in-process moto S3 server on 127.0.0.1 with a request log."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.log = WireLog()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            query = environ.get("QUERY_STRING", "")
            path = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
            entry = (environ["REQUEST_METHOD"], path, "HTTP_RANGE" in environ)
            with self.log.lock:
                self.log.in_flight += 1
                self.log.max_in_flight = max(self.log.max_in_flight, self.log.in_flight)
            try:
                return app(environ, start_response)
            finally:
                with self.log.lock:
                    self.log.in_flight -= 1
                    self.log.requests.append(entry)

        self._server = make_server("127.0.0.1", 0, counting, threaded=True,
                                   request_handler=MotoRequestHandler)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "key": "testing", "secret": "testing",
                "client_kwargs": {"region_name": "us-east-1"}}

    def new_bucket(self) -> str:
        import boto3

        name = f"zstore-test-{next(_ids)}-{uuid.uuid4().hex[:6]}"
        boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1"
                     ).create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


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
