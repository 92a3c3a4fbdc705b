"""Peers side by side: a whole model, and one layer of it, loaded from S3 through zstore and
through what users pick for the same model as safetensors or in tensorizer's format.

The peers read the same model from the same server (runai the safetensors peer's file):

- ``safetensors+s3fs``: ``model.safetensors`` through s3fs: the whole file by
  ``cat_file`` (a HEAD, then 50 MiB ranges at once) and ``safetensors.torch.load(bytes)``;
  one layer by ranged reads: the header's length, the header, then that layer's byte
  ranges (``cat_ranges``, concurrently);
- ``runai-streamer``: ``SafetensorsStreamer`` (``runai-model-streamer`` with
  ``runai-model-streamer-s3``: C++, ranged GETs) on the same file; one layer through its
  ``tensor_names`` filter;
- ``tensorizer``: CoreWeave's format, serialized once with ``TensorSerializer``; loaded by
  ``TensorDeserializer`` (presigned URLs streamed by the ``curl`` binary), one layer
  through its ``filter_func`` (it still reads past the tensors it skips).

Requests and bytes: zstore's from ``zstore.io_stats()`` (on moto, the same as its wire
log); the peers' on moto's wire (``MotoS3.log``; bytes are response Content-Lengths, what
the server was asked to send: for a stream closed early, as tensorizer's first GET, more
than went over the wire); SeaweedFS keeps no such log, so "n/a" there. moto reads a whole
object for every ranged GET, which charges the peers that read one large file by ranges
more than a real store would (runai's client even asks for some ranges twice there);
SeaweedFS is the fairer server for them.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

import zstore
from benchmarks import workloads
from benchmarks.measure import Stat, interleave, ratio, timed
from benchmarks.report import Report, Row, seconds
from benchmarks.systems import Target, safetensors_blob, touch
from zstore._format.tensors import numpy_to_torch
from zstore.testing import WireLog

REGION = "us-east-1"
# runai's switches for an S3 endpoint that is not AWS's (its endpoint and keys go in
# S3Credentials): path-style addresses (it managed without here, the endpoints being IP
# addresses) and no EC2 instance-metadata lookups. Set around its calls only.
RUNAI_ENV = {"RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0", "AWS_EC2_METADATA_DISABLED": "true"}
Loaded = dict[str, Any]
Counts = tuple[int | None, int | None]  # requests and bytes read; None: not counted


class Peer:
    """A loader of one copy of the model: ``prepare`` writes it (untimed), ``load`` reads
    it whole (``names`` None) or only the tensors named."""

    name = ""

    def __init__(self, target: Target) -> None:
        self.target = target

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def load(self, names: list[str] | None, glob: str) -> Loaded:
        raise NotImplementedError


class Zstore(Peer):
    name = "zstore"

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        zstore.save(state, self.target.url, storage_options=self.target.options, overwrite=True)

    def load(self, names: list[str] | None, glob: str) -> Loaded:
        return dict(zstore.load(self.target.url, storage_options=self.target.options,
                                keys=None if names is None else [glob], framework="torch"))


class SafetensorsS3fs(Peer):
    name = "safetensors+s3fs"
    DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
              "I64": "int64", "I32": "int32", "U8": "uint8", "BOOL": "bool"}

    @property
    def path(self) -> str:
        return f"{self.target.url}/model.safetensors"

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        self.target.fs().pipe_file(self.path, safetensors_blob(state))

    def load(self, names: list[str] | None, glob: str) -> Loaded:
        import torch
        from safetensors.torch import load

        fs = self.target.fs()
        if names is None:
            return load(fs.cat_file(self.path))
        size = struct.unpack("<Q", fs.cat_file(self.path, start=0, end=8))[0]
        header = json.loads(fs.cat_file(self.path, start=8, end=8 + size))
        spans = [header[k]["data_offsets"] for k in names]
        blobs = fs.cat_ranges([self.path] * len(names), [8 + size + a for a, _ in spans],
                              [8 + size + b for _, b in spans])
        return {k: torch.frombuffer(bytearray(blob), dtype=getattr(
                    torch, self.DTYPES[header[k]["dtype"]])).reshape(header[k]["shape"])
                for k, blob in zip(names, blobs)}


class RunaiStreamer(SafetensorsS3fs):
    """Reads the ``model.safetensors`` that ``SafetensorsS3fs`` wrote on the same target."""

    name = "runai-streamer"

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        import runai_model_streamer  # type: ignore[import-untyped]  # noqa: F401
        import runai_model_streamer_s3  # type: ignore[import-untyped]  # noqa: F401  (S3)

    def load(self, names: list[str] | None, glob: str) -> Loaded:
        from runai_model_streamer import SafetensorsStreamer
        from runai_model_streamer.s3_utils.s3_utils import (  # type: ignore[import-untyped]
            S3Credentials,
        )

        options = self.target.options
        credentials = S3Credentials(access_key_id=options["key"],
                                    secret_access_key=options["secret"], region_name=REGION,
                                    endpoint=options["endpoint_url"])
        with _environ(RUNAI_ENV), SafetensorsStreamer() as streamer:
            streamer.stream_file(self.path, s3_credentials=credentials, device="cpu",
                                 tensor_names=names)
            return dict(streamer.get_tensors())


class Tensorizer(Peer):
    name = "tensorizer"

    @property
    def uri(self) -> str:
        return f"{self.target.url}/model.tensors"

    def _stream(self, mode: str) -> Any:
        from tensorizer import stream_io  # type: ignore[import-untyped]

        options = self.target.options
        # force_http: an explicit http:// endpoint is refused otherwise ("Non-HTTPS
        # endpoint URLs are not allowed")
        return stream_io.open_stream(self.uri, mode, s3_access_key_id=options["key"],
                                     s3_secret_access_key=options["secret"],
                                     s3_endpoint=options["endpoint_url"], force_http=True,
                                     s3_region_name=REGION)

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        from tensorizer import TensorSerializer

        serializer = TensorSerializer(self._stream("wb"))  # a temporary file, uploaded on close
        serializer.write_state_dict({k: numpy_to_torch(np.ascontiguousarray(v))
                                     for k, v in state.items()})
        serializer.close()

    def load(self, names: list[str] | None, glob: str) -> Loaded:
        from tensorizer import TensorDeserializer

        wanted = None if names is None else set(names)
        only: Callable[[Any], bool] | None = None if wanted is None else wanted.__contains__
        with TensorDeserializer(self._stream("rb"), device="cpu", filter_func=only) as tensors:
            return dict(tensors.items())


@contextmanager
def _environ(variables: dict[str, str]) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def one_layer(state: dict[str, np.ndarray]) -> tuple[str, list[str]]:
    """The glob and the names of one transformer block's tensors: block 3 where there is
    one (``layers.3.`` in the synthetic model, ``encoder.layer.3.`` in MiniLM), else the
    last."""
    blocks: dict[tuple[str, int], list[str]] = {}
    for name in state:
        match = re.match(r"(.*?\blayers?\.)(\d+)\.", name)
        if match:
            blocks.setdefault((match[1], int(match[2])), []).append(name)
    (prefix, index), names = next(((k, v) for k, v in blocks.items() if k[1] == 3),
                                  max(blocks.items(), key=lambda kv: kv[0][1]))
    return f"{prefix}{index}.*", names


def _check(loaded: Loaded, state: dict[str, np.ndarray], names: list[str]) -> None:
    """What a peer loaded is what was saved: the same names, and the largest tensor bit for
    bit."""
    import torch

    if set(loaded) != set(names):
        raise ValueError(f"loaded {len(loaded)} tensors, expected {len(names)}")
    name = max(names, key=lambda k: state[k].nbytes)
    if not torch.equal(loaded[name], numpy_to_torch(np.ascontiguousarray(state[name]))):
        raise ValueError(f"{name}: not the tensor saved")


def _counts(peer: Peer, names: list[str] | None, glob: str, wire: WireLog | None,
            state: dict[str, np.ndarray]) -> Counts:
    """Requests and bytes of one load (None where not counted); checks what it loaded."""
    if wire is not None:
        wire.clear()
    with zstore.io_stats() as io:
        loaded = peer.load(names, glob)
    _check(loaded, state, list(state) if names is None else names)
    if isinstance(peer, Zstore):
        return io.requests, io.bytes_read
    if wire is None:
        return None, None
    return len(wire.requests), wire.bytes_sent


def _load_time(peer: Peer, names: list[str] | None, glob: str) -> Callable[[int], float]:
    """One timed load, every loaded page touched (as ``throughput`` times its loads)."""
    return lambda _: timed(lambda: touch(peer.load(names, glob)))[0]


def _left_out(report: Report, backend: str, label: str, what: str, error: Exception) -> None:
    reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    print(f"    peers: {what} left out on {backend} {label}: {reason}", file=sys.stderr,
          flush=True)
    report.add(Row("peers", backend, label, f"{what}: not run", "", reason, None,
                   {"error": reason}))


def _figure(stat: Stat, counts: Counts, base: Counts | None = None) -> str:
    """Time, requests and MB read; with ``base`` (zstore's counts), each as a ratio to it."""
    requests, nbytes = counts
    shown = [f"{requests} req" if requests is not None else "req n/a",
             f"{nbytes / 1e6:.0f} MB" if nbytes is not None else "MB n/a"]
    if base is not None:
        shown = [text + (f" ({mine / theirs:.2f}x)" if mine is not None and theirs else "")
                 for text, mine, theirs in zip(shown, counts, base)]
    return f"{seconds(stat)}, " + ", ".join(shown)


def compare(report: Report, backend: str, label: str, state: dict[str, np.ndarray],
            target: Target, wire: WireLog | None, reps: int) -> None:
    """Each peer writes its copy of ``state`` under ``target``; each case is loaded by every
    peer once, counted and checked, then timed in ``reps`` interleaved rounds."""
    ours = Zstore(Target(f"{target.url}/zstore", target.options))
    ours.prepare(state)
    peers: list[Peer] = [ours]
    safetensors = Target(f"{target.url}/safetensors", target.options)
    others: list[Peer] = [SafetensorsS3fs(safetensors), RunaiStreamer(safetensors),
                          Tensorizer(Target(f"{target.url}/tensorizer", target.options))]
    for peer in others:
        try:
            peer.prepare(state)
        except Exception as error:  # a peer that cannot run here is reported, not fatal
            _left_out(report, backend, label, peer.name, error)
            continue
        peers.append(peer)
    glob, layer = one_layer(state)
    for case, names in (("whole model", None), (f"one layer {glob}", layer)):
        asked = workloads.nbytes(state if names is None else {k: state[k] for k in names})
        counts = {ours.name: _counts(ours, names, glob, wire, state)}
        for peer in peers[1:]:
            try:
                counts[peer.name] = _counts(peer, names, glob, wire, state)
            except Exception as error:
                _left_out(report, backend, label, f"{case}: {peer.name}", error)
        running = [p for p in peers if p.name in counts]
        stats = interleave({p.name: _load_time(p, names, glob) for p in running}, reps)
        print(f"    {backend} {label} {case}: "
              + ", ".join(f"{k} {v.median:.2f}s" for k, v in stats.items()),
              file=sys.stderr, flush=True)
        mine = stats["zstore"]
        for peer in running[1:]:
            theirs = stats[peer.name]
            report.add(Row("peers", backend, label, f"{case}: zstore vs {peer.name}",
                           _figure(mine, counts["zstore"]),
                           f"{peer.name} " + _figure(theirs, counts[peer.name],
                                                     counts["zstore"]),
                           ratio(theirs, mine),
                           {"bytes_asked": asked, "zstore": mine.as_dict(),
                            "baseline": theirs.as_dict(),
                            "requests": {"zstore": counts["zstore"][0],
                                         peer.name: counts[peer.name][0]},
                            "bytes_read": {"zstore": counts["zstore"][1],
                                           peer.name: counts[peer.name][1]}}))


def peers(report: Report, backends: Any, backend: str, layers: int, vocab: int,
          reps: int) -> None:
    """The synthetic transformer (``layers`` x ``vocab``, bf16) and, where its package is
    installed, the real MiniLM-L6 weights (fp32 as shipped), on ``backend`` ("s3": moto,
    or "seaweed") of the benchmark's ``backends``."""
    states = {"bf16 synthetic": workloads.transformer("bf16", layers, vocab)}
    real = workloads.minilm("fp32")
    if real is not None:
        states["fp32 MiniLM"] = real
    wire = backends.s3.log if backend == "s3" and backends.s3 is not None else None
    for label, state in states.items():
        target = backends.target(backend, f"peers-{label.replace(' ', '-')}")
        try:
            compare(report, backend, label, state, target, wire, reps)
        finally:
            backends.remove(target)
