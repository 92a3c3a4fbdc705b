"""An S3 server inside this process, for tests, demos, notebooks and benchmarks.

``MotoS3`` runs moto's S3 server on 127.0.0.1 (any free port) behind a WSGI
middleware that logs every request it answers, so request counts can be taken
on the wire rather than from zstore's own bookkeeping. Needs ``moto[server]``
(``pip install 'zstore[dev]'``).

>>> server = MotoS3()
>>> bucket = server.new_bucket("doc")
>>> import numpy as np, zstore
>>> _ = zstore.save({"w": np.ones(3)}, f"s3://{bucket}/x", storage_options=server.storage_options)
>>> server.stop()
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WireLog:
    """Requests the server answered, as (method, path?query, has a Range header)."""

    requests: list[tuple[str, str, bool]] = field(default_factory=list)
    bytes_sent: int = 0  # response bodies of GETs, by their Content-Length
    bytes_received: int = 0  # request bodies (uploads), decoded length where chunk-signed
    copies: int = 0  # server-side copies (PUT with x-amz-copy-source), which carry no body
    clients: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, client)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_sent = 0
            self.bytes_received = 0
            self.copies = 0
            self.clients.clear()
            self.max_in_flight = 0

    def methods(self) -> Counter[str]:
        """Requests by HTTP method; bucket listings count as ``LIST``, batch deletes
        (``POST ?delete``, how s3fs deletes) as ``DELETE``."""
        return Counter("LIST" if "list-type" in p else "DELETE" if p.endswith("?delete") else m
                       for m, p, _ in self.requests)


_ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
               "<Message>{message}</Message><RequestId>zstore-fault</RequestId></Error>")
_ERRORS = {"503": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
           "500": ("500 Internal Server Error", "InternalError",
                   "We encountered an internal error."),
           "403": ("403 Forbidden", "AccessDenied", "Access Denied"),
           "quota": ("403 Forbidden", "QuotaExceeded", "Quota exceeded for this bucket")}


@dataclass
class Faults:
    """Faults the server injects into a fraction (``rate``) of the requests it receives.

    Kinds: ``"503"`` (SlowDown), ``"500"`` (InternalError), ``"403"`` (AccessDenied: wrong
    credentials, or with ``methods=("PUT", "POST", "DELETE")`` a read-only bucket) and
    ``"quota"`` (QuotaExceeded, as S3-compatible stores answer a full bucket) answered
    before the request is applied; ``"reset"``: the connection closed before it is
    applied; ``"lost"``: applied, then the connection closed (the client never learns it
    succeeded); ``"slow"``: applied, answered after ``delay`` seconds; ``"hang"``: the
    same, meant with a ``delay`` longer than the client's read timeout. Only requests
    whose HTTP method is in ``methods`` (all, when empty) are touched. ``injected`` counts
    what was done, by kind.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = ("503", "500", "reset", "lost")
    delay: float = 1.0
    methods: tuple[str, ...] = ()
    seed: int = 0
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self, method: str) -> str | None:
        with self._lock:
            if self.methods and method not in self.methods:
                return None
            if self.rate <= 0 or self._random.random() >= self.rate:
                return None
            kind = self._random.choice(self.kinds)
            self.injected[kind] += 1
            return kind

    @property
    def total(self) -> int:
        return sum(self.injected.values())


def _inject(kind: str, app: Any, environ: dict[str, Any], start_response: Any,
            delay: float) -> Any:
    if kind in _ERRORS:
        status, code, message = _ERRORS[kind]
        body = _ERROR_BODY.format(code=code, message=message).encode()
        start_response(status, [("Content-Type", "application/xml"),
                                ("Content-Length", str(len(body)))])
        return [body]
    if kind == "reset":
        return _close(environ, start_response)
    answer: list[Any] = []
    body = b"".join(app(environ, lambda *args: answer.append(args)))  # applied here
    if kind == "lost":
        return _close(environ, start_response)
    time.sleep(delay)  # "slow" and "hang"
    start_response(*answer[0])
    return [body]


def _client(user_agent: str) -> str:
    """The S3 client that sent a request, from its User-Agent: "botocore" (s3fs, boto3),
    "obstore" (the Rust client, which names itself object_store), else its first word."""
    agent = user_agent.lower()
    if "botocore" in agent:
        return "botocore"
    if "object_store" in agent or "obstore" in agent:
        return "obstore"
    return agent.split("/", 1)[0]


def _close(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Drop the connection; the server's write of the status then fails as a dropped one."""
    connection = environ.get("werkzeug.socket")
    if connection is not None:
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    start_response("500 Connection Dropped", [("Content-Length", "0")])
    return []


class MotoS3:
    """moto's S3 server on 127.0.0.1, with a ``WireLog`` of every request and optional
    ``faults`` (set ``server.faults.rate`` and ``kinds``; reset with
    ``server.faults = Faults()``)."""

    def __init__(self) -> None:
        try:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import make_server
        except ImportError:
            raise ImportError("MotoS3 needs moto's server: pip install 'moto[server]'") from None

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log
        self.log = WireLog()
        self.faults = Faults()
        app = DomainDispatcherApplication(create_backend_app)

        def logged(environ: dict[str, Any], start_response: Any) -> Any:
            query = environ.get("QUERY_STRING", "")
            path = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
            entry = (environ["REQUEST_METHOD"], path, "HTTP_RANGE" in environ)
            uploaded = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get(
                "CONTENT_LENGTH") or "0"
            with self.log.lock:
                self.log.bytes_received += int(uploaded)
                self.log.copies += "HTTP_X_AMZ_COPY_SOURCE" in environ
                self.log.clients[(entry[0], _client(environ.get("HTTP_USER_AGENT", "")))] += 1
                self.log.in_flight += 1
                self.log.max_in_flight = max(self.log.max_in_flight, self.log.in_flight)
            def counted_start(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
                length = next((v for k, v in headers if k.lower() == "content-length"), "0")
                with self.log.lock:
                    self.log.bytes_sent += int(length) if environ["REQUEST_METHOD"] == "GET" else 0
                return start_response(status, headers, *args)

            try:
                fault = self.faults.draw(environ["REQUEST_METHOD"])
                if fault is not None:
                    return _inject(fault, app, environ, counted_start, self.faults.delay)
                return app(environ, counted_start)
            finally:
                with self.log.lock:
                    self.log.in_flight -= 1
                    self.log.requests.append(entry)

        self._server = make_server("127.0.0.1", 0, logged, threaded=True,
                                   request_handler=MotoRequestHandler)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def storage_options(self) -> dict[str, Any]:
        """What ``zstore.save``/``open`` (and s3fs) need to reach this server."""
        return {"endpoint_url": self.endpoint_url, "key": "testing", "secret": "testing",
                "client_kwargs": {"region_name": "us-east-1"}}

    def new_bucket(self, prefix: str = "zstore") -> str:
        """Create a bucket with a fresh name and return that name."""
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1"
                     ).create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
