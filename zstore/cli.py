"""The ``zstore`` command: a thin layer over the public API.

    zstore ls URL        checkpoints under a prefix, or the arrays of one checkpoint
    zstore info URL      per array: shape, dtype, bytes, ratio, chunk and shard shape
    zstore verify URL    read every chunk; report missing objects and bad checksums

``--storage-option key=value`` (repeatable; values parsed as JSON when they can
be, dotted keys nest: ``client_kwargs.region_name=eu-west-1``) goes to fsspec;
the usual ``AWS_*`` environment variables work as they do for s3fs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from zstore.errors import ZStoreError
from zstore.catalog import find_checkpoints
from zstore.verify import verify
from zstore.reader import Checkpoint
from zstore.reader import open as open_checkpoint


def _storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"zstore: --storage-option needs key=value, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = key.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return options


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def _print_arrays(ckpt: Checkpoint) -> None:
    rows = []
    for name, t in ckpt.items():
        ratio = f"{t.nbytes / t.stored_nbytes:.2f}" if t.stored_nbytes else "-"
        rows.append([name, str(t.shape), str(t.dtype), _size(t.nbytes), _size(t.stored_nbytes),
                     ratio, str(t.chunk_shape or "inline"), str(t.shard_shape or "-")])
    print(_table(rows, ["name", "shape", "dtype", "bytes", "stored", "ratio", "chunk", "shard"]))
    total, stored = ckpt.nbytes, ckpt.stored_nbytes
    ratio = f"{total / stored:.2f}x" if stored else "-"
    print(f"\n{len(ckpt)} arrays, {_size(total)} logical, {_size(stored)} stored ({ratio})")


def _cmd_info(args: argparse.Namespace, options: dict[str, Any]) -> int:
    ckpt = open_checkpoint(args.url, storage_options=options)
    print(f"checkpoint {ckpt.url}  created {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ckpt.created))}")
    if ckpt.metadata:
        print(f"metadata {json.dumps(ckpt.metadata)}")
    _print_arrays(ckpt)
    return 0


def _cmd_ls(args: argparse.Namespace, options: dict[str, Any]) -> int:
    found = find_checkpoints(args.url, storage_options=options)
    if found is None:  # the URL is itself a checkpoint
        ckpt = open_checkpoint(args.url, storage_options=options)
        for name, t in ckpt.items():
            print(f"{name}  {t.shape}  {t.dtype}")
        return 0
    if not found:
        print(f"no checkpoints under {args.url}")
        return 0
    now = time.time()
    rows = [[c.name, "complete" if c.complete else "INCOMPLETE", _size(c.stored_bytes),
             f"{(now - c.modified) / 3600:.1f} h" if c.modified else "-"] for c in found]
    print(_table(rows, ["checkpoint", "state", "stored", "age"]))
    return 0


def _cmd_verify(args: argparse.Namespace, options: dict[str, Any]) -> int:
    report = verify(args.url, storage_options=options)
    for problem in report.problems:
        print(f"FAIL {problem}")
    print(f"{report.objects_checked} objects checked in {len(report.arrays)} arrays: "
          f"{len(report.problems)} problem(s)")
    return 1 if report.problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zstore", description="Inspect zstore checkpoints.")
    parser.add_argument("--storage-option", "-o", action="append", default=[], metavar="K=V",
                        help="fsspec storage option (repeatable)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("ls", _cmd_ls, "list checkpoints under a prefix, or the arrays of one checkpoint"),
        ("info", _cmd_info, "describe every array of a checkpoint"),
        ("verify", _cmd_verify, "read every chunk and check it; exit 1 on any problem"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("url")
        sub.set_defaults(handler=handler)
    args = parser.parse_args(argv)
    try:
        return args.handler(args, _storage_options(args.storage_option))
    except ZStoreError as e:
        print(f"zstore: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
