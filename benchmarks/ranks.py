"""Benchmark section ``ranks``: a multi-rank save and load against PyTorch DCP.

Four processes joined by gloo on 127.0.0.1 hold an FSDP2-style state (every matrix a
DTensor sharded along dim 0, norms and biases replicated plain tensors) of the synthetic
transformer. Each round, interleaved: zstore saves (collective) and DCP saves
(``FileSystemWriter`` locally, ``FsspecWriter`` on S3) the same state, then each loads it
back into DTensors of the same placements. A figure is the slowest rank's time
(everything between two barriers). Reported with it: zstore's requests and bytes per rank
(max / mean, from ``zstore.io_stats``), the read amplification of the load (bytes every
rank read / bytes stored), and the balance of the bytes the ranks wrote.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from functools import partial
from typing import Any

import numpy as np

from benchmarks import workloads
from benchmarks.measure import Stat, ratio
from benchmarks.report import Report, Row, seconds

WORLD = 4


def ranks(report: Report, backends: Any, names: list[str], layers: int, vocab: int,
          reps: int) -> None:
    import torch.multiprocessing as mp

    targets = []
    for backend in names:
        zs, dcp = backends.target(backend, "ranks-zstore"), backends.target(backend, "ranks-dcp")
        targets.append((backend, zs.url, dcp.url, zs.options))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_rank, args=(rank, port, targets, layers, vocab, reps,
                                                     results)) for rank in range(WORLD)]
    for p in processes:
        p.start()
    found: dict[int, Any] = {}
    deadline = time.monotonic() + 3600
    while len(found) < WORLD and time.monotonic() < deadline:
        if all(not p.is_alive() for p in processes) and results.empty():
            break
        try:
            rank, value = results.get(timeout=5)
        except Exception:
            continue
        found[rank] = value
    for p in processes:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    if 0 not in found or isinstance(found[0], str):
        print(f"    ranks: failed: {found.get(0) or found}", file=sys.stderr)
        return
    for backend, figures in found[0].items():
        _report(report, backend, figures)


def _report(report: Report, backend: str, figures: dict[str, Any]) -> None:
    size = figures["bytes"]
    label = f"{WORLD} ranks, {size / 2**20:.0f} MiB"
    for op in ("save", "load"):
        mine, theirs = Stat(figures[("zstore", op)]), Stat(figures[("dcp", op)])
        io = figures[f"io {op}"]
        report.add(Row("ranks", backend, label, f"{op}: zstore vs dcp",
                       f"{size / mine.median / 1e6:.0f} MB/s {seconds(mine)}; per rank "
                       f"{io['requests']} requests, {io['bytes'] / 1e6:.1f} MB (max/mean "
                       f"{io['balance']:.2f})",
                       f"dcp {size / theirs.median / 1e6:.0f} MB/s {seconds(theirs)}",
                       ratio(theirs, mine),
                       {"bytes": size, "zstore": mine.as_dict(), "baseline": theirs.as_dict(),
                        "io": io}))
    report.add(Row("ranks", backend, label, "load: bytes read / bytes stored",
                   f"{figures['amplification']:.3f}", "", None,
                   {"amplification": figures["amplification"]}))
    report.add(Row("ranks", backend, label, "bytes written per rank, max / mean",
                   f"{figures['balance']:.3f} ({figures['rank_bytes']})", "goal <= 1.1", None,
                   {"rank_bytes": figures["rank_bytes"]}))


def _state(layers: int, vocab: int) -> tuple[dict[str, Any], Any]:
    """The FSDP2-style state every rank holds, and a maker of empty targets like it."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from zstore._format.tensors import numpy_to_torch

    mesh = init_device_mesh("cpu", (WORLD,))
    full = {k: numpy_to_torch(np.ascontiguousarray(v))
            for k, v in workloads.transformer("bf16", layers, vocab).items()}

    def place(value: Any) -> Any:
        return distribute_tensor(value, mesh, [Shard(0)]) if value.ndim > 1 else value

    state = {k: place(v) for k, v in full.items()}
    return state, lambda: {k: place(torch.zeros_like(v)) for k, v in full.items()}


def _rank(rank: int, port: int, targets: list[tuple[str, str, str, dict[str, Any]]],
          layers: int, vocab: int, reps: int, results: Any) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=1800))
    try:
        found = {backend: _measure(rank, backend, zs, dc, options, layers, vocab, reps)
                 for backend, zs, dc, options in targets}
        results.put((rank, found))
    except Exception as e:  # reported by the parent
        results.put((rank, f"{type(e).__name__}: {e}"))
        raise


def _measure(rank: int, backend: str, zs_url: str, dcp_url: str, options: dict[str, Any],
             layers: int, vocab: int, reps: int) -> dict[Any, Any]:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    import zstore

    state, empty = _state(layers, vocab)
    local = "://" not in zs_url
    size = sum(v.numel() * v.element_size() for v in state.values())
    figures: dict[Any, Any] = {(s, op): [] for s in ("zstore", "dcp") for op in ("save", "load")}
    io: dict[str, Any] = {}

    def slowest(call: Any) -> tuple[float, Any]:
        dist.barrier()
        start = time.perf_counter()
        out = call()
        took = time.perf_counter() - start
        times: list[float] = [0.0] * WORLD
        dist.all_gather_object(times, took)
        return max(times), out

    def writer() -> Any:
        return (FileSystemWriter(dcp_url) if local
                else FsspecWriter(dcp_url, single_file_per_rank=False, **options))

    def reader() -> Any:
        return FileSystemReader(dcp_url) if local else FsspecReader(dcp_url, **options)

    for _ in range(reps):
        with zstore.io_stats() as saved:
            took, info = slowest(lambda: zstore.save(state, zs_url, storage_options=options))
        figures[("zstore", "save")].append(took)
        took, _ = slowest(lambda: dcp.save(state, storage_writer=writer()))
        figures[("dcp", "save")].append(took)
        with zstore.io_stats() as loaded:
            took, _ = slowest(partial(zstore.load, zs_url, storage_options=options,
                                      into=empty()))
        figures[("zstore", "load")].append(took)
        took, _ = slowest(partial(dcp.load, empty(), storage_reader=reader()))
        figures[("dcp", "load")].append(took)
        _clean(rank, zs_url, dcp_url, options)
    per_rank: list[Any] = [None] * WORLD
    dist.all_gather_object(per_rank, ((saved.puts, saved.bytes_written),
                                      (loaded.gets, loaded.bytes_read)))
    for i, op in enumerate(("save", "load")):
        requests = [r[i][0] for r in per_rank]
        nbytes = [r[i][1] for r in per_rank]
        io[f"io {op}"] = {"requests": max(requests), "bytes": max(nbytes),
                          "balance": max(nbytes) / (sum(nbytes) / WORLD)}
    figures.update(io)
    figures["bytes"] = size
    figures["amplification"] = sum(r[1][1] for r in per_rank) / info.stored_bytes
    figures["rank_bytes"] = list(info.rank_bytes)
    figures["balance"] = info.rank_balance
    return figures


def _clean(rank: int, zs_url: str, dcp_url: str, options: dict[str, Any]) -> None:
    """Rank 0 removes both checkpoints between rounds, outside the timings."""
    import shutil

    import fsspec
    import torch.distributed as dist

    if rank == 0:
        for url in (zs_url, dcp_url):
            if "://" not in url:
                shutil.rmtree(url, ignore_errors=True)
                continue
            fs = fsspec.core.url_to_fs(url, **options)[0]
            paths = fs.find(url)
            if paths:
                fs.rm(paths)
        if "://" not in dcp_url:
            os.makedirs(dcp_url, exist_ok=True)
    dist.barrier()
