"""The ``zstore`` command: a thin layer over the public API.

    zstore ls URL        checkpoints under a prefix (a series' steps in order, with size,
                         age and completeness), or the arrays of one checkpoint
    zstore rm URL        delete a checkpoint, commit marker first; the newest committed
                         step of a series only with --force
    zstore rm ROOT --keep-last N [--keep-every M]
                         apply a series' retention rules
    zstore info URL      per array: shape, dtype, bytes, ratio, chunk and shard shape
    zstore verify URL    read every chunk; report missing objects and bad checksums
    zstore plan URL      the layout of a checkpoint (or of a .safetensors file, before
                         converting it) and what each access pattern will cost
    zstore calibrate URL measure a backend's latency, bandwidth and concurrency, and keep
                         the profile for ``plan`` and ``save`` (``--backend NAME``)

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

from zstore.calibrate import calibrate
from zstore.catalog import delete, find_checkpoints
from zstore.errors import ZStoreError
from zstore.manager import CheckpointManager
from zstore.planner import plan, plan_specs
from zstore.profiles import profile_for, store_profile
from zstore.reader import Checkpoint
from zstore.reader import open as open_checkpoint
from zstore.safetensors_specs import safetensors_specs
from zstore.series import step_of
from zstore.text import age, duration, size, table
from zstore.verify import verify


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


def _print_arrays(ckpt: Checkpoint) -> None:
    rows = []
    for name, t in ckpt.items():
        ratio = f"{t.nbytes / t.stored_nbytes:.2f}" if t.stored_nbytes else "-"
        rows.append([name, str(t.shape), str(t.dtype), size(t.nbytes), size(t.stored_nbytes),
                     ratio, str(t.chunk_shape or "inline"), str(t.shard_shape or "-")])
    print(table(rows, ["name", "shape", "dtype", "bytes", "stored", "ratio", "chunk", "shard"]))
    total, stored = ckpt.nbytes, ckpt.stored_nbytes
    ratio = f"{total / stored:.2f}x" if stored else "-"
    print(f"\n{len(ckpt)} arrays, {size(total)} logical, {size(stored)} stored ({ratio})")


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
    rows = [[c.name, "complete" if c.complete else "INCOMPLETE", size(c.stored_bytes),
             age(now - c.modified) if c.modified else "-"] for c in found]
    print(table(rows, ["checkpoint", "state", "stored", "age"]))
    return 0


def _cmd_rm(args: argparse.Namespace, options: dict[str, Any]) -> int:
    if args.keep_last or args.keep_every:
        manager = CheckpointManager(args.url, keep_last=args.keep_last,
                                    keep_every=args.keep_every, storage_options=options)
        before = manager.steps()
        manager.apply_retention()
        after = manager.steps()
        print(f"kept steps {after}; deleted {[s for s in before if s not in after]}")
        return 0
    parent, _, name = args.url.rstrip("/").rpartition("/")
    step = step_of(name)
    if step is not None and parent:
        CheckpointManager(parent, storage_options=options).delete(step, force=args.force)
    else:
        delete(args.url, storage_options=options)
    print(f"deleted {args.url}")
    return 0


def _cmd_verify(args: argparse.Namespace, options: dict[str, Any]) -> int:
    report = verify(args.url, storage_options=options)
    for problem in report.problems:
        print(f"FAIL {problem}")
    print(f"{report.objects_checked} objects checked in {len(report.arrays)} arrays: "
          f"{len(report.problems)} problem(s)")
    return 1 if report.problems else 0


def _access(pairs: Sequence[str]) -> dict[str, list[str]]:
    access: dict[str, list[str]] = {}
    for pair in pairs:
        glob, sep, pattern = pair.rpartition("=")
        if not sep or not glob:
            raise ValueError(f"--access takes GLOB=PATTERN (e.g. '*embed*=rows'), got {pair!r}")
        access.setdefault(glob, []).append(pattern)
    return access


def _cmd_plan(args: argparse.Namespace, options: dict[str, Any]) -> int:
    access = _access(args.access)
    if args.url.endswith(".safetensors"):
        specs = safetensors_specs(args.url, options)
        profile = profile_for(args.target or args.url, args.backend)
        result = plan_specs(specs, access=access, profile=profile, codec=args.codec, cores=None)
    else:
        ckpt = open_checkpoint(args.url, storage_options=options)
        result = plan(ckpt, access=access, backend=args.backend)
    print(result)
    return 0


def _cmd_calibrate(args: argparse.Namespace, options: dict[str, Any]) -> int:
    print(f"calibrating {args.url} (scratch objects are deleted afterwards)...", file=sys.stderr)
    profile = calibrate(args.url, name=args.name, storage_options=options, large=args.size)
    path = store_profile(profile)
    print(f"latency {duration(profile.latency)}, {size(profile.bandwidth)}/s per stream, "
          f"useful concurrency {profile.concurrency}")
    print(f"profile {profile.name!r} stored in {path}; plan with --backend {profile.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zstore", description="Inspect and plan zstore checkpoints.")
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
    text = "delete a checkpoint (commit marker first), or apply retention to a series"
    sub = commands.add_parser("rm", help=text, description=text)
    sub.add_argument("url", help="a checkpoint (e.g. ROOT/step-100), or a series root")
    sub.add_argument("--force", action="store_true",
                     help="allow deleting the newest committed step of a series")
    sub.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest steps")
    sub.add_argument("--keep-every", type=int, metavar="M", help="also keep steps divisible by M")
    sub.set_defaults(handler=_cmd_rm)
    text = "explain a checkpoint's layout, or plan a .safetensors file's, with predicted costs"
    sub = commands.add_parser("plan", help=text, description=text)
    sub.add_argument("url", help="a checkpoint, or a .safetensors file")
    sub.add_argument("--access", "-a", action="append", default=[], metavar="GLOB=PATTERN",
                     help="access pattern per name glob: full, rows, tensor, split(DIM,PARTS)")
    sub.add_argument("--backend", "-b", help="backend profile name (default: from the URL)")
    sub.add_argument("--target", help="where a .safetensors file would be saved (sets backend)")
    sub.add_argument("--codec", default="auto", choices=["auto", "blosc", "zstd", "none"])
    sub.set_defaults(handler=_cmd_plan)
    text = "measure a backend and keep its profile for planning"
    sub = commands.add_parser("calibrate", help=text, description=text)
    sub.add_argument("url", help="a prefix where scratch objects may be written")
    sub.add_argument("--name", help="profile name (default: the built-in it refines, e.g. s3)")
    sub.add_argument("--size", type=int, default=16 << 20, help="bytes per timed object")
    sub.set_defaults(handler=_cmd_calibrate)
    args = parser.parse_args(argv)
    try:
        return args.handler(args, _storage_options(args.storage_option))
    except (ZStoreError, ValueError, KeyError) as e:
        print(f"zstore: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
