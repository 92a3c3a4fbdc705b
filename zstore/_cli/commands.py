"""The ``zstore`` command: a thin layer over the public API.

    zstore ls URL        what lies under a prefix, a few folders deep: checkpoints (a series'
                         steps in order, committed or not, with size and age) and anything
                         else; or the arrays and inline values of one checkpoint.
                         ``--verify`` also reads every object of each committed checkpoint;
                         ``--mirror URL`` (repeatable) adds which tiers of a tiered series
                         (the root, its mirrors) hold each step committed
    zstore rm URL        delete a checkpoint, commit marker first; the newest committed
                         step of a series only with --force
    zstore rm ROOT --keep-last N [--keep-every M]
                         apply a series' retention rules
    zstore info URL      per array: shape, dtype, bytes, ratio, chunk and shard shape
    zstore verify URL    read every chunk; report missing objects and bad checksums
    zstore plan URL      the layout of a checkpoint (or of a .safetensors file, before
                         converting it) and what each access pattern will cost
    zstore convert SRC DST
                         convert safetensors (a file or Hugging Face shards), torch .pt/.bin,
                         DCP, HDF5 or zstore into zstore, or into safetensors
    zstore calibrate URL measure a backend's latency, bandwidth and concurrency, and keep
                         the profile for ``plan`` and ``save`` (``--backend NAME``)

``-o``/``--storage-option key=value`` (repeatable, before or after the command;
values parsed as JSON when they can be, dotted keys nest:
``client_kwargs.region_name=eu-west-1``) goes to fsspec; the usual ``AWS_*``
environment variables work as they do for s3fs.

Counts use one vocabulary everywhere (``SaveInfo``, ``Checkpoint``, the demo):
*arrays* are stored zarr arrays, *inline values* the 0-d tensors and numpy scalars
kept in the manifest; plain Python values in the tree are counted in neither.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from zstore._convert import convert
from zstore._format.names import step_name, step_of
from zstore._plan.planner import plan, plan_specs
from zstore._plan.profiles import profile_for, store_profile
from zstore._plan.specs import safetensors_specs
from zstore._read.catalog import DEFAULT_DEPTH, CheckpointEntry, survey
from zstore._read.reader import Checkpoint
from zstore._read.reader import open as open_checkpoint
from zstore._read.verify import verify
from zstore._series.manager import CheckpointManager
from zstore._series.mirror import Mirror
from zstore._storage.calibrate import calibrate
from zstore._text import age, contents, duration, size, table
from zstore._version import __version__
from zstore._write.delete import delete
from zstore.errors import CheckpointNotFoundError, ZStoreError


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


def _contents(ckpt: Checkpoint) -> str:
    """``15 arrays + 5 inline values, 48.1 MiB logical, 48.1 MiB stored (1.00x)``."""
    inline = sum(t.chunk_shape is None for t in ckpt.values())
    total, stored = ckpt.nbytes, ckpt.stored_nbytes
    ratio = f"{total / stored:.2f}x" if stored else "-"
    return (f"{contents(len(ckpt.array_documents()), inline)}, {size(total)} "
            f"logical, {size(stored)} stored ({ratio})")


def _cmd_info(args: argparse.Namespace, options: dict[str, Any]) -> int:
    ckpt = open_checkpoint(args.url, storage_options=options)
    created = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ckpt.created))
    print(f"checkpoint {ckpt.url}  created {created}")
    if ckpt.metadata:
        print(f"metadata {json.dumps(ckpt.metadata)}")
    if ckpt.encryption is not None:
        print(f"encrypted {ckpt.encryption['algorithm']}, key id {ckpt.encryption['key_id']}")
    rows = []
    for name, t in ckpt.items():
        ratio = f"{t.nbytes / t.stored_nbytes:.2f}" if t.stored_nbytes else "-"
        rows.append([name, str(t.shape), str(t.dtype), size(t.nbytes), size(t.stored_nbytes),
                     ratio, str(t.chunk_shape or "inline"), str(t.shard_shape or "-")])
    for name in ckpt.sparse_names:  # stored as their parts: bytes are the nonzeros'
        s = ckpt.sparse(name)
        rows.append([name, str(s.shape), str(s.dtype), size(s.nbytes), "-", "-",
                     f"sparse {s.layout}, {s.nnz} nonzeros", "-"])
    print(table(rows, ["name", "shape", "dtype", "bytes", "stored", "ratio", "chunk", "shard"]))
    print(f"\n{_contents(ckpt)}")
    return 0


def _cmd_ls(args: argparse.Namespace, options: dict[str, Any]) -> int:
    try:
        found = survey(args.url, storage_options=options, depth=args.depth)
    except CheckpointNotFoundError:
        if not args.mirror:
            raise
        print(f"nothing under {args.url}")  # a fast tier lost: its mirrors may hold the steps
        return _ls_tiers(args, options, 0)
    if found is None:  # the URL is itself a checkpoint
        if args.mirror:
            raise ValueError(f"{args.url!r} is a checkpoint; --mirror lists the tiers of a "
                             "series: give the series root (the CheckpointManager's root)")
        return _ls_checkpoint(args, options)
    rows: list[list[str]] = []
    damaged = 0
    now = time.time()
    for entry in found.rows():
        if isinstance(entry, CheckpointEntry):
            state, modified, complete = entry.state, entry.modified, entry.complete
        else:
            state, modified, complete = entry.what, 0.0, False
        row = [entry.name, state, size(entry.stored_bytes) if entry.stored_bytes else "-",
               age(now - modified) if modified else "-"]
        if args.verify:
            check = _check(entry.url, options) if complete else "-"
            damaged += check.startswith("damaged")
            row.append(check)
        rows.append(row)
    header = ["name", "state", "stored", "age", *(["verify"] if args.verify else [])]
    print(table(rows, header) if rows else f"no checkpoints under {args.url}")
    if found.unsearched:
        shown = ", ".join(found.unsearched[:3]) + (", ..." if len(found.unsearched) > 3 else "")
        print(f"\nsearch stopped {found.depth} folder level(s) down; {len(found.unsearched)} "
              f"folder(s) not searched: {shown} (--depth {found.depth + 1} looks further)")
    status = 1 if damaged else 0
    return _ls_tiers(args, options, status) if args.mirror else status


def _ls_tiers(args: argparse.Namespace, options: dict[str, Any], status: int) -> int:
    """A table of the series' committed steps by tier: the root (fast tier), then each
    ``--mirror`` (which takes the same ``-o`` options)."""
    mirrors = [Mirror(url, storage_options=options) for url in args.mirror]
    tiers = CheckpointManager(args.url, storage_options=options, mirrors=mirrors).tiers()
    roots = [args.url.rstrip("/"), *(m.url for m in mirrors)]
    rows = [[step_name(step), *("committed" if root in held else "-" for root in roots)]
            for step, held in tiers.items()]
    print()
    print(table(rows, ["step", *roots]) if rows else "no committed step on any tier")
    return status


def _ls_checkpoint(args: argparse.Namespace, options: dict[str, Any]) -> int:
    ckpt = open_checkpoint(args.url, storage_options=options)
    rows = [[name, str(t.shape), str(t.dtype),
             "inline" if t.chunk_shape is None else size(t.stored_nbytes)]
            for name, t in ckpt.items()]
    print(table(rows, ["name", "shape", "dtype", "stored"]))
    print(f"\n{_contents(ckpt)}")
    if not args.verify:
        return 0
    check = _check(args.url, options)
    print(check)
    return 1 if check.startswith("damaged") else 0


def _check(url: str, options: dict[str, Any]) -> str:
    """``intact`` or ``damaged: N problems``: ``verify`` read every object."""
    report = verify(url, storage_options=options)
    count = len(report.problems)
    return "intact" if report.ok else f"damaged: {count} problem{'s' * (count != 1)}"


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
    report = verify(args.url, storage_options=options, encryption_key=_key(args.key_file))
    for problem in report.problems:
        print(f"FAIL {problem}")
    print(f"{report.objects_checked} objects checked in {len(report.arrays)} arrays: "
          f"{len(report.problems)} problem(s)")
    return 1 if report.problems else 0


def _key(path: str | None) -> bytes | None:
    """The 32-byte key in the file at ``path`` (raw bytes, or 64 hex digits and a newline),
    or None where no file was named."""
    if path is None:
        return None
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    return raw


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


def _cmd_convert(args: argparse.Namespace, options: dict[str, Any]) -> int:
    out = _storage_options(args.dst_option) if args.dst_option else None
    info = convert(args.url, args.dst, storage_options=options, dst_storage_options=out,
                   access=_access(args.access) or None, codec=args.codec,
                   overwrite=args.overwrite, max_shard_size=args.max_shard_size,
                   progress=args.progress)
    print(f"converted {args.url} -> {info}")
    return 0


def _cmd_calibrate(args: argparse.Namespace, options: dict[str, Any]) -> int:
    print(f"calibrating {args.url} (scratch objects are deleted afterwards)...", file=sys.stderr)
    profile = calibrate(args.url, name=args.name, storage_options=options, large=args.size)
    path = store_profile(profile)
    print(f"latency {duration(profile.latency)}, {size(profile.bandwidth)}/s per stream, "
          f"useful concurrency {profile.concurrency}, CPU {profile.cpu_speed:.2f}x the "
          "reference machine")
    print(f"profile {profile.name!r} stored in {path}; plan with --backend {profile.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``zstore`` command line; every option has help (a test walks it)."""
    parser = argparse.ArgumentParser(prog="zstore",
                                     description="Inspect, plan and convert zstore checkpoints.")
    _global_options(parser, dest="storage_option", default=[])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="what to do (zstore COMMAND --help for more)")

    def command(name: str, handler: Any, text: str, url: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("url", help=url)
        # the global options again, where people type them: `zstore info URL -o k=v`
        _global_options(sub, dest="storage_option_after", default=argparse.SUPPRESS)
        sub.set_defaults(handler=handler)
        return sub

    sub = command("ls", _cmd_ls, "list what lies under a prefix (checkpoints committed or not, "
                  "and anything else), or the arrays of one checkpoint",
                  "a prefix (bucket, run folder) or one checkpoint")
    sub.add_argument("--verify", action="store_true",
                     help="also read every object of each committed checkpoint: intact or "
                          "damaged (exit 1 if any is damaged)")
    sub.add_argument("--depth", type=int, default=DEFAULT_DEPTH, metavar="N",
                     help=f"how many folder levels below URL to search (default {DEFAULT_DEPTH})")
    sub.add_argument("--mirror", action="append", default=[], metavar="URL",
                     help="a mirror of the series at URL (repeatable): also show which tiers "
                          "hold each step committed")
    command("info", _cmd_info, "describe every array of a checkpoint", "a checkpoint")
    sub = command("verify", _cmd_verify, "read every chunk and check it; exit 1 on any problem",
                  "a checkpoint")
    sub.add_argument("--key-file", metavar="PATH",
                     help="an encrypted checkpoint's key: a file of 32 raw bytes or 64 hex "
                          "digits (never on the command line, where `ps` shows it)")
    sub = command("rm", _cmd_rm,
                  "delete a checkpoint (commit marker first), or apply retention to a series",
                  "a checkpoint (e.g. ROOT/step-100), or a series root")
    sub.add_argument("--force", action="store_true",
                     help="allow deleting the newest committed step of a series")
    sub.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest steps")
    sub.add_argument("--keep-every", type=int, metavar="M", help="also keep steps divisible by M")
    sub = command("plan", _cmd_plan, "explain a checkpoint's layout, or plan a .safetensors "
                  "file's, with predicted costs", "a checkpoint, or a .safetensors file")
    sub.add_argument("--access", "-a", action="append", default=[], metavar="GLOB=PATTERN",
                     help="access pattern per name glob: full, rows, tensor, split(DIM,PARTS)")
    sub.add_argument("--backend", "-b", help="backend profile name (default: from the URL)")
    sub.add_argument("--target", help="where a .safetensors file would be saved (sets backend)")
    sub.add_argument("--codec", default="auto", choices=["auto", "blosc", "zstd", "none"],
                     help="codec a .safetensors file's arrays would be saved with (default "
                          "auto: compress only where the backend is slower than compressing)")
    sub = command("convert", _cmd_convert,
                  "convert safetensors (a file, or Hugging Face shards), a torch .pt/.bin, a "
                  "DCP folder, an HDF5 file or a zstore checkpoint into a zstore checkpoint, "
                  "or into safetensors (DST ending in .safetensors)", "the source")
    sub.add_argument("dst", help="the destination: a zstore checkpoint, or a .safetensors file")
    sub.add_argument("--access", "-a", action="append", default=[], metavar="GLOB=PATTERN",
                     help="access pattern per name glob for the new layout: full, rows, "
                          "tensor, split(DIM,PARTS)")
    sub.add_argument("--codec", default="auto", choices=["auto", "blosc", "zstd", "none"],
                     help="codec of a zstore destination (default auto)")
    sub.add_argument("--overwrite", action="store_true", help="replace what DST holds")
    sub.add_argument("--max-shard-size", type=int, default=5 * 10**9, metavar="BYTES",
                     help="bytes per safetensors file before sharding (default 5e9, as "
                          "Hugging Face)")
    sub.add_argument("--dst-option", action="append", default=[], metavar="KEY=VALUE",
                     help="fsspec storage option of DST alone (default: DST takes -o's)")
    sub.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar on stderr (default: on a terminal)")
    sub = command("calibrate", _cmd_calibrate,
                  "measure a backend and keep its profile for planning",
                  "a prefix where scratch objects may be written")
    sub.add_argument("--name", help="profile name (default: the built-in it refines, e.g. s3)")
    sub.add_argument("--size", type=int, default=16 << 20, help="bytes per timed object")
    return parser


def _global_options(parser: argparse.ArgumentParser, dest: str, default: Any) -> None:
    """Options every command takes, before the command or after it: each place parses into
    its own ``dest``, so ``-o`` given in both places adds up instead of one replacing the other."""
    parser.add_argument("--storage-option", "-o", action="append", dest=dest, default=default,
                        metavar="KEY=VALUE",
                        help="fsspec storage option, repeatable; values parsed as JSON when they "
                             "can be, dotted keys nest (-o client_kwargs.region_name=eu-west-1)")
    parser.add_argument("--version", action="version", version=f"zstore {__version__}",
                        help="print zstore's version and exit")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 a finding, 2 an error)."""
    try:
        try:
            return _run(build_parser().parse_args(argv))
        finally:
            sys.stdout.flush()  # here, not at exit, so a closed pipe is seen below
    except BrokenPipeError:
        # The reader stopped reading (`zstore ls | head -1`): end quietly, as a tool killed by
        # SIGPIPE does (status 128 + 13), with stdout pointed at /dev/null so that Python's
        # own flush at exit does not print a traceback either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _run(args: argparse.Namespace) -> int:
    pairs = [*args.storage_option, *getattr(args, "storage_option_after", [])]
    try:
        status: int = args.handler(args, _storage_options(pairs))
        return status
    except (ZStoreError, ValueError, KeyError) as e:
        print(f"zstore: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
