"""Benchmark section ``convert``: a model converted, against reading it and writing it raw.

The workload's bf16 transformer as one ``.safetensors`` file on local disk. Each round,
interleaved: the baseline reads the whole file into memory and writes its bytes to a new
file (the least any conversion does); ``zstore.convert`` turns the file into a zstore
checkpoint; and ``zstore.convert`` exports that checkpoint back to a ``.safetensors``
file. Each figure is baseline time / conversion time (goal: at least 0.8, i.e. a
conversion within 1.25x of reading plus writing raw). Page cache warm for all three.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import zstore
from benchmarks.measure import interleave, ratio, timed
from benchmarks.report import Report, Row, seconds
from benchmarks.systems import safetensors_blob


def convert(report: Report, folder: Path, state: dict[str, np.ndarray], reps: int) -> None:
    root = folder / "convert"
    root.mkdir(parents=True, exist_ok=True)
    source = root / "model.safetensors"
    source.write_bytes(safetensors_blob(state))
    size = source.stat().st_size
    checkpoint = str(root / "ckpt")
    zstore.convert(str(source), checkpoint, overwrite=True)  # what the export reads

    buffer = bytearray(size)  # the baseline's memory, touched once outside its timings
    buffer[::4096] = b"\0" * len(buffer[::4096])

    def raw(_: int) -> float:
        target = root / "raw.bin"

        def copy() -> None:
            with open(source, "rb", buffering=0) as f:
                view, done = memoryview(buffer), 0
                while done < size:
                    done += f.readinto(view[done:]) or 0
            with open(target, "wb", buffering=0) as f:
                f.write(buffer)

        took, _ = timed(copy)
        target.unlink()
        return took

    def to_zstore(_: int) -> float:
        target = str(root / "converted")
        took, _ = timed(lambda: zstore.convert(str(source), target))
        shutil.rmtree(target)
        return took

    def to_safetensors(_: int) -> float:
        target = root / "exported.safetensors"
        took, _ = timed(lambda: zstore.convert(checkpoint, str(target)))
        target.unlink()
        return took

    stats = interleave({"raw": raw, "to zstore": to_zstore, "to safetensors": to_safetensors},
                       reps)
    base = stats["raw"]
    label = f"bf16 {size / 2**30:.2f} GiB"
    for name, what in (("to zstore", ".safetensors -> zstore"),
                       ("to safetensors", "zstore -> .safetensors")):
        mine = stats[name]
        report.add(Row("convert", "local", label, f"{what} vs read + write raw",
                       f"{size / mine.median / 1e6:.0f} MB/s {seconds(mine)}",
                       f"raw {size / base.median / 1e6:.0f} MB/s {seconds(base)}",
                       ratio(base, mine),
                       {"bytes": size, "zstore": mine.as_dict(), "raw": base.as_dict()}))
    shutil.rmtree(root, ignore_errors=True)

