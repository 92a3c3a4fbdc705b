"""A save every rank of a ``torch.distributed`` job calls: one checkpoint of global arrays.

Each rank brings its own state dict: DTensors (its part of each global tensor) and plain
tensors and values (the same on every rank). The save then runs in five steps, with
small exchanges between them on the save's own gloo group (``zstore._ranks.Ranks``):

1. every rank describes what it holds: each array's global shape, dtype and the box this
   rank holds (a crc32c of each plain tensor, to find any that differ between ranks),
   and its tree of names and values;
2. every rank plans the same layout from those facts, object boundaries on every box
   boundary, and the same assignment of each object to one rank that holds it, largest
   first to the least loaded (replicated data is written once, the bytes spread evenly);
   rank 0 takes the lease, clears the destination and marks it as a save under way,
   once every other rank has started its fence after the clearing, rank 0 renews the
   lease and shares that version, so their fence holds however long the clearing took;
3. every rank writes its objects, each whole, by itself (rank 0 the array documents
   too): no object has two writers, no read-modify-write. The other ranks' writes pass
   the same write gate as rank 0's, fenced by the lease rank 0 renews
   (``Lease.followed``);
4. once every rank's writes are done, rank 0 writes the manifest and the commit marker;
5. every rank learns the outcome, and returns or raises.

A rank that raises at any step makes every rank raise at the next exchange
(``RankFailedError`` naming it), and nothing is committed; a rank that crashes or hangs
makes the others raise after ``Settings.collective_timeout``.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from zstore._budget import ByteBudget
from zstore._compat import sync
from zstore._format.crypto import Cipher
from zstore._format.dtypes import dtype_from_name
from zstore._format.layout import Layout
from zstore._format.manifest import (
    Manifest,
    check_metadata,
)
from zstore._format.names import RANKS
from zstore._format.shards import checksum
from zstore._format.tensors import host_array, is_dtensor, is_torch_tensor, torch_numpy_dtype
from zstore._format.tree import FlatTree
from zstore._options import current
from zstore._plan.access import Access
from zstore._plan.planner import Plan, plan_specs
from zstore._plan.profiles import BackendProfile, profile_for
from zstore._ranks import Box, Part, Ranks, assign, holders, local_part, object_boxes
from zstore._storage.failures import storage_errors
from zstore._storage.location import Location, resolve
from zstore._tasks import gather_all
from zstore._version import __version__
from zstore._write.lease import Lease
from zstore.errors import SaveTimeoutError


def write_collective(flat: FlatTree, url: str, ranks: Ranks, *,
                     storage_options: dict[str, Any] | None, metadata: dict[str, Any] | None,
                     overwrite: bool, access: Access, backend: str | BackendProfile | None,
                     codec: str, timeout: float | None, layouts: Mapping[str, Layout] | None,
                     stack: bool, cipher: Cipher | None = None
                     ) -> tuple[Plan, int, list[int], int]:
    """Run this rank's part of the collective save; (plan, objects, bytes written by each
    rank, stored bytes), the same on every rank. ``timeout`` is checked at each exchange:
    a rank past it fails there, so every rank learns it at the same step."""
    location = resolve(url, storage_options)
    deadline = None if timeout is None else time.monotonic() + timeout
    planning = {"url": location.url, "codec": codec, "stack": stack, "access": repr(access),
                "layouts": repr(layouts), "overwrite": overwrite, "timeout": timeout,
                "save": ranks.next_save(),
                "encryption key": None if cipher is None else (cipher.key_id, cipher.check)}
    exchange = _Exchange(ranks, deadline, timeout)
    work = _save(flat, location, exchange, metadata, planning, profile_for(url, backend),
                 access, layouts, cipher)
    with storage_errors(url, saving=True):
        try:
            return sync(work)
        except BaseException:
            ranks.forget()  # a failed save may leave the group's exchanges out of step
            raise


@dataclass
class _Exchange:
    """The save's exchanges, off the event loop (so the lease's renewals go on), each
    turning a passed deadline into this rank's failure at that step."""

    ranks: Ranks
    deadline: float | None
    timeout: float | None

    async def share(self, value: Any, failure: BaseException | None, step: str) -> list[Any]:
        if failure is None and self.deadline is not None and time.monotonic() > self.deadline:
            failure = SaveTimeoutError(
                f"rank {self.ranks.rank}: the save to {self.ranks.url!r} passed its timeout "
                f"of {self.timeout} s before {step}; nothing was committed",
                url=self.ranks.url, timeout=self.timeout)
        return await asyncio.to_thread(self.ranks.share, value, failure, step)


async def _save(flat: FlatTree, location: Location, exchange: _Exchange,
                metadata: dict[str, Any] | None, planning: dict[str, Any],
                profile: BackendProfile, access: Access, layouts: Mapping[str, Layout] | None,
                cipher: Cipher | None) -> tuple[Plan, int, list[int], int]:
    ranks = exchange.ranks
    facts: dict[str, Any] | None = None
    parts: dict[str, Any] = {}
    failure: BaseException | None = None
    try:
        facts, parts = _describe(flat, metadata)
        facts.update(planning=planning, profile=profile)
    except Exception as e:
        failure = e
    everyone = await exchange.share(facts, failure, "describing the state")
    _same_save(everyone)
    merged = _merge(everyone, ranks.rank, parts)
    held = merged.held
    first = everyone[0]
    plan = plan_specs(merged.specs, access=access, profile=first["profile"],
                      codec=planning["codec"], cores=_cores_per_rank(everyone), layouts=layouts,
                      stack=planning["stack"], held=held, alone=flat.alone)
    writers = writers_of(plan, held, ranks.size)
    from zstore._write.writer import _stack, describe

    flat = FlatTree(skeleton=merged.tree, arrays=dict(merged.parts))
    arrays = _stack(flat, plan)
    manifest = Manifest(tree=flat.skeleton, metadata=first["metadata"], arrays={},
                        zstore_version=__version__,
                        encryption=None if cipher is None else cipher.record())
    describe(manifest, plan, cipher)
    mine: dict[str, list[Box]] = {}
    load = [0] * ranks.size
    for (path, box), rank in writers.items():
        load[rank] += math.prod(hi - lo for lo, hi in box) * plan.arrays[path].dtype.itemsize
        if rank == ranks.rank:
            mine.setdefault(path, []).append(box)
    if ranks.rank == 0:
        return await _lead(location, exchange, plan, manifest, arrays, mine, load,
                           planning["overwrite"], cipher)
    await exchange.share(None, None, "clearing the destination")
    # Rank 0 renews the lease once the next exchange is over, and shares that version:
    # it was written after ``since``, so the lease holds until ``since + lease_ttl`` on
    # this rank's clock, however long planning and clearing the destination took.
    since = time.time()
    await exchange.share(None, None, "starting the fence")
    token, version = (await exchange.share(None, None, "taking the lease"))[0]
    lease = Lease(location)
    failure = None
    try:
        async with lease.followed(token, version, since):
            await write_mine(location, manifest, arrays, mine, cipher)
    except Exception as e:
        failure = e
    await exchange.share(None, failure, "writing the objects")
    objects, stored = (await exchange.share(None, None, "committing"))[0]
    return plan, objects, load, stored


def _cores_per_rank(everyone: list[dict[str, Any]]) -> int:
    """The cores each of rank 0's machine's ranks has to itself: the ranks of one machine
    compress at once, so ``codec="auto"`` weighs the backend against that share (4 ranks
    on 2 cores compress at a quarter of 2 cores' rate each, slower than S3 takes bytes)."""
    first = everyone[0]
    sharing = sum(1 for facts in everyone if facts["host"] == first["host"])
    return max(1, int(first["cores"]) // sharing)


def _same_save(everyone: list[dict[str, Any]]) -> None:
    """``ValueError`` unless every rank is in the same save: the same URL and arguments,
    and its calls to save in step with rank 0's."""
    first = everyone[0]["planning"]
    for rank, facts in enumerate(everyone[1:], start=1):
        other = facts["planning"]
        different = [key for key in first if other.get(key) != first[key]]
        if different:
            key = different[0]
            what = ("is at another save (each rank's n-th collective save pairs with every "
                    "other rank's n-th)" if key == "save" else
                    f"passes {key}={other[key]!r} where rank 0 passes {first[key]!r}")
            raise ValueError(f"the ranks are not in one save: rank {rank} {what}; every rank "
                             "must call save with the same URL and arguments")


async def _lead(location: Location, exchange: _Exchange, plan: Plan,
                manifest: Manifest,
                arrays: dict[str, Any], mine: dict[str, list[Box]], load: list[int],
                overwrite: bool, cipher: Cipher | None) -> tuple[Plan, int, list[int], int]:
    """Rank 0's part: the lease, the destination, the metadata, its own objects, and the
    commit once every rank's objects are written."""
    from zstore._write.writer import (
        _refuse_committed,
        claim_destination,
        commit,
        write_documents,
    )

    lease = Lease(location)
    failure: BaseException | None = None
    entered = False
    try:
        await _refuse_committed(location, overwrite)
        async with lease.held():
            entered = True
            try:
                await claim_destination(location, overwrite)
            except Exception as e:
                failure = e
            await exchange.share(None, failure, "clearing the destination")
            await exchange.share(None, None, "starting the fence")
            try:  # a version every follower knows was written after it started its fence
                await lease.renew()
                lease.fence()
            except Exception as e:
                failure = e
            await exchange.share((lease.token, lease.version), failure, "taking the lease")
            try:  # the array documents while every rank writes objects: none needs them
                await gather_all([write_documents(location, manifest, asyncio.Semaphore(8)),
                                  write_mine(location, manifest, arrays, mine, cipher)])
            except Exception as e:
                failure = e
            await exchange.share(None, failure, "writing the objects")
            outcome = None
            try:
                sizes = await commit(location, manifest, lease, {}, cipher)
                outcome = (len(sizes) + 1, sum(manifest.stored_bytes.values()))
            except Exception as e:
                failure = e
            await exchange.share(outcome, failure, "committing")
            assert outcome is not None
            return plan, outcome[0], load, outcome[1]
    except Exception as e:
        if not entered:  # refused before the lease: the others wait at the next step
            await exchange.share(None, e, "clearing the destination")
        raise


async def write_mine(location: Location, manifest: Manifest, arrays: dict[str, Any],
                     mine: dict[str, list[Box]], cipher: Cipher | None) -> None:
    """Write the objects assigned to this rank, each whole."""
    from zstore._write.writer import _write_array

    budget = ByteBudget(current().write_budget)
    limit = asyncio.Semaphore(current().save_concurrency)

    async def one(path: str, boxes: list[Box]) -> None:
        async with limit:
            await _write_array(location, path, manifest.arrays[path], arrays[path],
                               [tuple(slice(lo, hi) for lo, hi in box) for box in boxes],
                               budget, cipher)

    await gather_all([one(path, boxes) for path, boxes in mine.items() if boxes])


def _describe(flat: FlatTree, metadata: dict[str, Any] | None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """What this rank tells the others (per array: global shape, dtype, its box, and for a
    plain tensor a crc32c of its bytes), and its parts in global coordinates."""
    arrays: dict[str, tuple[Any, ...]] = {}
    parts: dict[str, Any] = {}
    for name, value in flat.arrays.items():
        shape, box, local = local_part(value, name)
        dtype = torch_numpy_dtype(value, name) if is_torch_tensor(value) else value.dtype
        data = host_array(local, name)
        replicated = not (is_dtensor(value) or isinstance(value, Part))
        digest = checksum(np.ascontiguousarray(data)) if replicated else None
        arrays[name] = (shape, np.dtype(dtype).name, box, digest)
        parts[name] = Part(data, box, shape)
    facts = {"arrays": arrays, "tree": flat.skeleton, "metadata": check_metadata(metadata),
             "cores": os.cpu_count(), "host": socket.gethostname()}
    return facts, parts


@dataclass
class _Merged:
    """Every rank's state, merged into one checkpoint's (the same on every rank)."""

    specs: dict[str, tuple[tuple[int, ...], np.dtype]]  # array path -> global shape, dtype
    held: dict[str, list[Box | None]]  # array path -> the box each rank holds
    tree: dict[str, Any]  # the skeleton, per-rank leaves where the ranks' values differ
    parts: dict[str, Part]  # array path -> this rank's part
    per_rank: list[str]  # leaves kept per rank


def _merge(everyone: list[dict[str, Any]], rank: int, parts: dict[str, Part]) -> _Merged:
    """One checkpoint from every rank's facts. DTensors must agree on shape and dtype; a
    plain tensor or value equal on every rank is saved once, one that differs is kept per
    rank (``{"per_rank": [...]}`` leaves, tensors as ``zstore.ranks/<rank>/<name>``)."""
    world = len(everyone)
    names = set(everyone[0]["arrays"])
    for r, facts in enumerate(everyone[1:], start=1):
        if set(facts["arrays"]) != names:
            only = sorted(names ^ set(facts["arrays"]))[:3]
            raise ValueError(f"ranks 0 and {r} save different tensors (e.g. {only}): every "
                             "rank must pass a state with the same names")
    specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    held: dict[str, list[Box | None]] = {}
    own = dict(parts)
    separate: set[str] = set()
    for name in sorted(names):
        said = [facts["arrays"][name] for facts in everyone]
        shapes = [(tuple(shape), dtype) for shape, dtype, _, _ in said]
        digests = [digest for *_, digest in said]
        if all(d is None for d in digests):  # a DTensor on every rank: one global array
            if len(set(shapes)) > 1:
                r = next(i for i, x in enumerate(shapes) if x != shapes[0])
                raise ValueError(f"DTensor {name!r} is {shapes[0]} on rank 0 but {shapes[r]} "
                                 f"on rank {r}")
            specs[name] = (shapes[0][0], dtype_from_name(shapes[0][1]))
            held[name] = [None if box is None else tuple(map(tuple, box))
                          for _, _, box, _ in said]
        elif any(d is None for d in digests):
            raise ValueError(f"{name!r} is a DTensor on some ranks and a plain tensor on "
                             "others")
        elif len(set(zip(shapes, digests))) == 1:  # replicated: saved once
            specs[name] = (shapes[0][0], dtype_from_name(shapes[0][1]))
            held[name] = [tuple((0, n) for n in shapes[0][0])] * world
        else:  # differs between ranks: one array per rank, each written by its rank
            separate.add(name)
            part = own.pop(name)
            for r, (shape, dtype) in enumerate(shapes):
                path = f"{RANKS}/{r}/{name}"
                specs[path] = (shape, dtype_from_name(dtype))
                box = tuple((0, n) for n in shape)
                held[path] = [box if i == r else None for i in range(world)]
                own[path] = part if r == rank else Part(part.data[:0], None, shape)
    per_rank: list[str] = []
    tree = _merge_trees([facts["tree"] for facts in everyone], separate, per_rank, "")
    return _Merged(specs, held, tree, own, per_rank)


def _merge_trees(trees: list[dict[str, Any]], separate: set[str], per_rank: list[str],
                 name: str) -> dict[str, Any]:
    """The ranks' skeletons as one: containers must match; a leaf whose nodes differ, or
    whose array is kept per rank, becomes a per-rank leaf (its name added to ``per_rank``)."""
    kinds = {next(iter(t)) for t in trees}
    first = trees[0]
    kind = next(iter(first))
    containers = ("dict", "list", "tuple")
    if len(kinds) > 1 and kinds & set(containers):
        raise ValueError(f"the ranks' states differ in structure at {name or 'the root'!r}")
    if kind == "dict":
        keys = [[k for k, _ in t["dict"]] for t in trees]
        if any(k != keys[0] for k in keys):
            raise ValueError(f"the ranks' states have different keys at {name or 'the root'!r}")
        return {"dict": [[k, _merge_trees([dict(t["dict"])[k] for t in trees], separate,
                                          per_rank, f"{name}/{k}" if name else str(k))]
                         for k in keys[0]]}
    if kind in ("list", "tuple"):
        if len({len(t[kind]) for t in trees}) > 1:
            raise ValueError(f"the ranks' states have lists of different lengths at {name!r}")
        return {kind: [_merge_trees([t[kind][i] for t in trees], separate, per_rank,
                                    f"{name}/{i}" if name else str(i))
                       for i in range(len(first[kind]))]}
    if "array" in first and first["array"] in separate:
        per_rank.append(name)
        return {"per_rank": [{"array": f"{RANKS}/{r}/{t['array']}", "kind": t["kind"]}
                             for r, t in enumerate(trees)]}
    if any(t != first for t in trees):
        per_rank.append(name)
        return {"per_rank": list(trees)}
    return first


def writers_of(plan: Plan, held: dict[str, list[Box | None]], world: int
             ) -> dict[tuple[str, Box], int]:
    """{(array path, object box): the rank that writes it}, the same on every rank."""
    objects = []
    for path, a in plan.arrays.items():
        boxes = held[a.members[0]] if a.members else held[path]
        if a.members:
            boxes = [None if b is None else ((0, len(a.members)), *b) for b in boxes]
        for box in object_boxes(a.shape, a.layout.object_shape):
            nbytes = math.prod(hi - lo for lo, hi in box) * a.dtype.itemsize
            found = holders(box, boxes)
            if not found:
                raise ValueError(
                    f"array {path!r}: its object {box} spans the parts of several ranks "
                    "(a layouts= entry whose shard shape does not divide the ranks' parts?); "
                    "no object may have two writers")
            objects.append(((path, box), nbytes, found))
    return assign(objects, world)
