"""``zstore.plan``: the layout of every array and what it will cost, before anything is written.

Pure and deterministic (no I/O): the same arrays, access patterns, backend
profile, codec and core count give the same plan. ``zstore.save`` writes the
layouts a plan chooses; ``zstore.plan(checkpoint)`` explains the layouts a
saved checkpoint already has, with its measured stored sizes.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from zstore._format.dtypes import check_supported, dtype_from_name
from zstore._format.layout import (
    CODECS,
    Layout,
    check_layout,
    layout_from_metadata,
    stacked_members,
)
from zstore._format.manifest import group_paths
from zstore._format.shards import chunks_per_part
from zstore._format.tensors import is_torch_tensor, numpy_dtype_of
from zstore._format.tree import flatten
from zstore._plan.access import Access, Pattern, Split, check_globs, check_split, patterns_for
from zstore._plan.chunking import choose_layout, region_grid
from zstore._plan.costs import (
    Cost,
    Footprint,
    load_memory,
    pattern_cost,
    region_cost,
    resolve_codec,
    save_memory,
    stored_nbytes,
    stored_ratio,
    whole_seconds,
)
from zstore._plan.profiles import BackendProfile, profile_for
from zstore._plan.stacking import find_stacks, stacked_layout
from zstore._text import duration, duration_range, size, table
from zstore._text import shape as show_shape
from zstore.errors import UnsupportedTypeError

Spec = tuple[tuple[int, ...], np.dtype]


@runtime_checkable
class StoredCheckpoint(Protocol):
    """What ``plan`` needs of an open checkpoint to explain its stored layout (the
    reader's ``Checkpoint`` is one; planning stays below reading, pure)."""

    url: str

    def array_documents(self) -> dict[str, tuple[dict[str, Any], int]]: ...


@dataclass(frozen=True)
class ArrayPlan:
    """One array: its layout, stored size, objects, and the cost of each access pattern."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: Layout
    patterns: tuple[Pattern, ...]
    costs: dict[str, Cost]
    objects: int
    stored_bytes: int
    ratio: float  # stored / raw bytes of an inner chunk: estimated, or measured once saved
    members: tuple[str, ...] = ()  # a stacked array's tensors, one per index of dim 0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def footprint(self) -> Footprint:
        object_nbytes = min(self.nbytes, math.prod(self.layout.object_shape) * self.dtype.itemsize)
        part_nbytes = object_nbytes
        if self.layout.shard_shape is not None:
            chunk = math.prod(self.layout.chunk_shape) * self.dtype.itemsize
            part_nbytes = min(object_nbytes, chunks_per_part(chunk) * chunk)
        return Footprint(self.nbytes, self.stored_bytes, self.objects, object_nbytes,
                         self.layout.codec, part_nbytes)


@dataclass(frozen=True)
class Plan:
    """Layouts and predicted costs of a checkpoint; ``str(plan)`` is a readable table.

    ``measured`` is True when stored sizes come from a saved checkpoint rather
    than from the compression estimates; ``notes`` are access patterns the plan
    left out, each with the reason.
    """

    arrays: dict[str, ArrayPlan]
    profile: BackendProfile
    cores: int
    measured: bool = False
    notes: tuple[str, ...] = ()

    def array_of(self, name: str) -> ArrayPlan:
        """The array tensor ``name`` is stored in: its own, or the stacked array holding it
        (whose costs, but for ``full``, are those of reading one member)."""
        if name in self.arrays:
            return self.arrays[name]
        for a in self.arrays.values():
            if name in a.members:
                return a
        some = [m for a in list(self.arrays.values())[:3] for m in a.members or [a.name]]
        raise KeyError(f"no tensor {name!r} in this plan; tensors look like {some[:3]}")

    @property
    def layouts(self) -> dict[str, Layout]:
        return {name: a.layout for name, a in self.arrays.items()}

    @property
    def parameters(self) -> int:
        return sum(math.prod(a.shape) for a in self.arrays.values())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def nbytes_by_dtype(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for a in self.arrays.values():
            totals[str(a.dtype)] += a.nbytes
        return dict(totals)

    @property
    def stored_bytes(self) -> int:
        return sum(a.stored_bytes for a in self.arrays.values())

    @property
    def data_objects(self) -> int:
        return sum(a.objects for a in self.arrays.values())

    @property
    def objects(self) -> int:
        """Every object a save writes: data, each array's and group's zarr.json, root,
        hashes, marker."""
        return self.data_objects + len(self.arrays) + len(group_paths(list(self.arrays))) + 3

    @property
    def load_requests(self) -> int:
        """GETs of a full load, ``open`` included: the root metadata, the commit marker,
        then each array's whole read (``costs.region_cost``: one GET per object, but
        where a client reads a shard in parts, or an edge shard by its index)."""
        return 2 + sum(
            region_cost(a.shape, a.dtype, a.layout, [(0, n) for n in a.shape], self.profile,
                        a.ratio).requests
            for a in self.arrays.values())

    @property
    def load_memory(self) -> int:
        """Peak extra resident bytes of a full ``load``: the arrays plus the reads in flight
        (the model and its measurements: ``costs.load_memory``)."""
        return load_memory(self._footprints, self.profile)

    @property
    def save_memory(self) -> int:
        """Peak extra resident bytes of ``save`` of arrays already in host memory
        (``costs.save_memory``); on ``memory://`` the stored bytes stay."""
        return save_memory(self._footprints, self.profile)

    @property
    def _footprints(self) -> list[Footprint]:
        return [a.footprint for a in self.arrays.values()]

    @property
    def save_seconds(self) -> tuple[float, float]:
        """(low, high) seconds of a save: I/O (the commit adds round trips) and CPU
        overlapping or not; CPU at the reference machine's rates scaled by the profile's
        ``cpu_speed`` (``costs.whole_seconds``)."""
        io = self.profile.seconds(self.objects, self.stored_bytes, serial=4, writing=True)
        return whole_seconds(self._footprints, io, self.cores, save=True,
                             cpu_speed=self.profile.cpu_speed)

    @property
    def load_seconds(self) -> tuple[float, float]:
        """(low, high) seconds of a full load, ``open`` included (``costs.whole_seconds``)."""
        io = self.profile.seconds(self.load_requests, self.stored_bytes, serial=2)
        return whole_seconds(self._footprints, io, self.cores, save=False,
                             cpu_speed=self.profile.cpu_speed)

    @property
    def load_price(self) -> float:
        """USD of one full load at the profile's prices (0 where it has none)."""
        p = self.profile
        return self.load_requests * p.price_per_get + self.stored_bytes / 1e9 * p.price_per_gb

    def __str__(self) -> str:
        p = self.profile
        lines = [f"backend {p.name}: {duration(p.latency)} per request, "
                 f"{size(p.bandwidth)}/s per stream x {p.concurrency}; {self.cores} cores"]
        rows = []
        for a in self.arrays.values():
            head = [a.name, show_shape(a.shape), str(a.dtype), show_shape(a.layout.chunk_shape),
                    show_shape(a.layout.shard_shape), a.layout.codec, str(a.objects),
                    size(a.stored_bytes)]
            for i, (pattern, c) in enumerate(a.costs.items()):
                rows.append([*(head if i == 0 else [""] * len(head)), pattern, str(c.requests),
                             size(c.bytes), f"{c.amplification:.2f}", duration(c.seconds)])
        lines.append(table(rows, ["array", "shape", "dtype", "chunk", "shard", "codec",
                                  "objects", "stored" if self.measured else "stored~", "access",
                                  "requests", "fetched", "amp", "time~"]))
        by_dtype = ", ".join(f"{d} {size(n)}" for d, n in sorted(self.nbytes_by_dtype.items()))
        ratio = self.nbytes / self.stored_bytes if self.stored_bytes else 1.0
        lines.append(
            f"\n{len(self.arrays)} arrays, {self.parameters:,} parameters, {size(self.nbytes)} "
            f"({by_dtype}); stored {'' if self.measured else '~'}{size(self.stored_bytes)} "
            f"({ratio:.2f}x) in {self.objects} objects\n"
            f"memory (peak extra RSS): save ~{size(self.save_memory)}, full load "
            f"~{size(self.load_memory)}; a full load is {self.load_requests} GETs"
            + (f", ~${self.load_price:.4f} at {p.name} prices" if self.load_price else "")
            + f"\ntime (I/O at profile {p.name!r}, CPU as on a 2-core reference machine): save "
            f"{duration_range(*self.save_seconds)}, full load {duration_range(*self.load_seconds)}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _array_plan(name: str, shape: tuple[int, ...], dtype: np.dtype, layout: Layout,
                patterns: tuple[Pattern, ...], profile: BackendProfile,
                stored: int | None = None, members: tuple[str, ...] = ()) -> ArrayPlan:
    ratio = stored_ratio(layout.codec, dtype)
    estimated = stored_nbytes(shape, dtype, layout, ratio)
    if stored is not None and estimated:  # measured: scale every estimate to the real size
        ratio *= stored / estimated
    full = pattern_cost(shape, dtype, layout, "full", profile, ratio)
    costs = {str(p): full if p == "full" else pattern_cost(shape, dtype, layout, p, profile,
                                                            ratio, stacked=bool(members))
             for p in patterns}
    objects = math.prod(-(-n // o) for n, o in zip(shape, layout.object_shape)) if shape else 1
    return ArrayPlan(name, shape, dtype, layout, patterns, costs, objects,
                     estimated if stored is None else stored, ratio, members)


def _patterns(name: str, shape: tuple[int, ...], access: Access, skipped: list[str],
              ranged: bool = False) -> tuple[Pattern, ...]:
    """The patterns ``name`` serves; ``rows`` of a 1-D array is left out (added to ``skipped``).

    A 1-D array's rows are single elements: gathering one would read a whole
    chunk per element (amplification of the chunk length), and a glob such as
    ``*embed*`` also catches an embedding's 1-D LayerNorm weights. A ``ranged`` array (a
    sparse leaf's part, read a range of elements at a time) serves ``rows`` whatever its
    rank: small chunks in large shards.
    """
    patterns = patterns_for(name, access)
    if ranged:
        return (*patterns, "rows") if "rows" not in patterns else patterns
    if len(shape) == 1 and "rows" in patterns:
        patterns = tuple(p for p in patterns if p != "rows")
        skipped.append(f"{name!r} {shape}")
    return tuple(check_split(p, shape, name) if isinstance(p, Split) else p for p in patterns)


def _notes(skipped: list[str]) -> tuple[str, ...]:
    if not skipped:
        return ()
    return (f"rows skipped for 1-D arrays (their rows are single elements; they are read "
            f"whole): {', '.join(skipped)}",)


def plan_specs(specs: Mapping[str, Spec], *, access: Access, profile: BackendProfile,
               codec: str, cores: int | None,
               layouts: Mapping[str, Layout] | None = None, stack: bool = True,
               held: Mapping[str, Sequence[Any]] | None = None,
               alone: Collection[str] = ()) -> Plan:
    """The plan of arrays given as {name: (shape, dtype)}; what ``save`` and ``plan`` share.
    ``alone`` names (the parts of a sparse leaf, which its node names) are never stacked,
    and are cut for reads of element ranges (a CSR matrix's rows).
    ``layouts`` ({name glob: Layout}) are taken as given where a glob matches, and costed
    like the planner's own; with ``stack``, tensors that repeat are stacked (``stacking``).
    ``held`` (a multi-rank save): {name: the box each rank holds, or None}; no object
    straddles a box boundary (``region_grid``), and only tensors held alike stack."""
    if codec not in (*CODECS, "auto"):
        raise ValueError(f"unknown codec {codec!r}; choose one of auto, {', '.join(CODECS)}")
    check_globs(access, list(specs))
    check_globs(dict.fromkeys(layouts or {}, "full"), list(specs), "layouts")
    cores = cores or os.cpu_count() or 1
    chosen = resolve_codec(codec, profile, cores)
    skipped: list[str] = []
    patterns = {name: _patterns(name, shape, access, skipped, name in alone)
                for name, (shape, _) in specs.items()}
    given = {name: next(g for g in layouts if fnmatch.fnmatchcase(name, g))
             for name in specs if layouts and any(fnmatch.fnmatchcase(name, g) for g in layouts)}
    stacks = find_stacks(specs, patterns, profile, set(given) | set(alone), held) if stack \
        else {}
    aligned = {name: region_grid(specs[name][0], boxes, specs[name][1].itemsize)
               for name, boxes in (held or {}).items()}
    first = {names[0]: path for path, names in stacks.items()}
    stacked = {name for names in stacks.values() for name in names}
    arrays: dict[str, ArrayPlan] = {}
    for name, (shape, dtype) in specs.items():
        if name in first:  # a stacked array, where its first member was
            path, members = first[name], stacks[first[name]]
            member = choose_layout(shape, dtype, patterns[name], profile, chosen,
                                   aligned.get(name))
            layout = stacked_layout(member, shape, len(members),
                                    math.prod(shape) * dtype.itemsize, profile,
                                    split=any(aligned.get(name, ())))
            arrays[path] = _array_plan(path, (len(members), *shape), dtype, layout,
                                       patterns[name], profile, members=tuple(members))
        elif name not in stacked:
            layout = (check_layout(layouts[given[name]], shape, name) if layouts and name in given
                      else choose_layout(shape, dtype, patterns[name], profile, chosen,
                                         aligned.get(name)))
            arrays[name] = _array_plan(name, shape, dtype, layout, patterns[name], profile)
    return Plan(arrays, profile, cores, notes=_notes(skipped) + _stack_notes(stacks))


def _stack_notes(stacks: dict[str, list[str]]) -> tuple[str, ...]:
    if not stacks:
        return ()
    tensors = sum(len(names) for names in stacks.values())
    return (f"{tensors} tensors stacked into {len(stacks)} arrays (same shape and dtype, names "
            "differing only in integers; each still read alone by its name): "
            + ", ".join(f"{path.split('/', 1)[1]} ({len(names)})"
                        for path, names in list(stacks.items())[:4])
            + (", ..." if len(stacks) > 4 else ""),)


def plan(tree_or_specs: Any, *, access: Access = None,
         backend: str | BackendProfile | None = None, codec: str = "auto",
         cores: int | None = None, layouts: Mapping[str, Layout] | None = None,
         stack: bool = True) -> Plan:
    """Choose every array's chunk and shard shapes, and predict what reads will cost.

    Args:
        tree_or_specs: a tree as ``save`` takes it, whose array leaves may be
            anything with ``.shape`` and ``.dtype`` (numpy arrays, torch tensors,
            meta tensors included, ``LazyTensor``s); or an open ``Checkpoint``,
            whose saved layouts are explained with their measured sizes.
        access: how arrays will be read: a pattern for all, or {name glob:
            pattern or list}: ``"full"``, ``"rows"``, ``"tensor"``,
            ``zstore.split(dim, parts)``. Every array also serves ``"full"``;
            ``rows`` of a 1-D array is left out (see ``Plan.notes``).
        backend: a profile name (``"local"``, ``"memory"``, ``"s3"`` or one
            stored by ``zstore calibrate``), a ``BackendProfile``, or the URL to
            be saved to. Default ``"s3"``.
        codec: ``"auto"`` (Blosc where the backend is slower than this
            machine's cores compress, else none), ``"blosc"``, ``"zstd"``, ``"none"``.
        cores: cores compressing; default ``os.cpu_count()``.
        layouts: {name glob: ``zstore.Layout``}: these arrays get the layout given
            (checked against their shapes) instead of the planner's, and are costed
            the same way; ``save`` takes the same argument.
        stack: store tensors of one shape and dtype whose names differ only in
            integers (layers, experts, optimizer slots) as one array with a leading
            index dimension (``Plan.notes`` says which; each keeps its name and is read
            alone). ``save`` takes the same argument; False: one array per tensor.

    Returns:
        A ``Plan``: per array a ``Layout`` and, per access pattern, predicted
        requests, bytes fetched, read amplification and seconds; totals.

    Raises:
        InvalidKeyError: a glob of ``access`` matches no array; the message
            lists the names closest to it.

    Example:
        >>> import numpy as np, zstore
        >>> p = zstore.plan({"embed": np.zeros((32000, 512), "float32")}, access={"embed": "rows"})
        >>> a = p.arrays["embed"]
        >>> a.layout.chunk_shape, a.costs["rows"].requests
        ((80, 512), 2)
    """
    if isinstance(tree_or_specs, StoredCheckpoint):
        return _explain(tree_or_specs, access, profile_for(tree_or_specs.url, backend), cores)
    if isinstance(backend, str) and "://" in backend:
        profile = profile_for(backend)
    else:
        profile = profile_for("s3://", backend)
    return plan_specs(specs_of(tree_or_specs), access=access, profile=profile, codec=codec,
                      cores=cores, layouts=layouts, stack=stack)


def _explain(ckpt: StoredCheckpoint, access: Access, profile: BackendProfile,
             cores: int | None) -> Plan:
    documents = ckpt.array_documents()
    check_globs(access, [name for path, (document, _) in documents.items()
                         for name in stacked_members(document) or [path]])
    arrays: dict[str, ArrayPlan] = {}
    skipped: list[str] = []
    for path, (document, stored) in documents.items():
        shape, dtype = tuple(document["shape"]), dtype_from_name(document["data_type"])
        members = tuple(stacked_members(document))
        patterns = _patterns(members[0] if members else path, shape[1:] if members else shape,
                             access, skipped)
        arrays[path] = _array_plan(path, shape, dtype, layout_from_metadata(document),
                                   patterns, profile, stored, members)
    return Plan(arrays, profile, cores or os.cpu_count() or 1, measured=True,
                notes=_notes(skipped))


def _dtype_of(value: Any, name: str) -> np.dtype:
    if is_torch_tensor(value):
        return numpy_dtype_of(value.dtype, name)
    dtype = value.dtype
    return check_supported(dtype_from_name(dtype) if isinstance(dtype, str) else np.dtype(dtype),
                           name)


def specs_of(tree: Any) -> dict[str, Spec]:
    """{array name: (shape, dtype)} of a tree's array leaves, named, checked and
    deduplicated (tied weights once) exactly as ``save`` does: 0-d arrays are left out,
    zstore keeps them inline in the manifest."""
    if not isinstance(tree, (Mapping, list, tuple)):
        raise UnsupportedTypeError(
            f"plan takes a dict, list or tuple of arrays or an open Checkpoint, "
            f"got {type(tree).__name__}"
        )
    flat = flatten(tree, specs=True)
    return {name: (tuple(int(n) for n in value.shape), _dtype_of(value, name))
            for name, value in flat.arrays.items()}
