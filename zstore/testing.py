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
import threading
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
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_sent = 0
            self.bytes_received = 0
            self.copies = 0
            self.max_in_flight = 0

    def methods(self) -> Counter[str]:
        """Requests by HTTP method; bucket listings count as ``LIST``, batch deletes
        (``POST ?delete``, how s3fs deletes) as ``DELETE``."""
        return Counter("LIST" if "list-type" in p else "DELETE" if p.endswith("?delete") else m
                       for m, p, _ in self.requests)


class MotoS3:
    """moto's S3 server on 127.0.0.1, with a ``WireLog`` of every request."""

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
                self.log.in_flight += 1
                self.log.max_in_flight = max(self.log.max_in_flight, self.log.in_flight)
            def counted_start(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
                length = next((v for k, v in headers if k.lower() == "content-length"), "0")
                with self.log.lock:
                    self.log.bytes_sent += int(length) if environ["REQUEST_METHOD"] == "GET" else 0
                return start_response(status, headers, *args)

            try:
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
