"""Saving a tree as one Zarr v3 group, committed last.

Order of writes, chosen so that a crash at any point leaves either the previous
committed checkpoint or nothing that opens as complete:

1. validate everything (keys, leaf types, dtypes, metadata): no I/O before this;
2. clear the destination: an old commit marker goes first, then the old objects
   (only objects under a zstore root are ever deleted);
3. a placeholder root ``zarr.json`` marks the prefix as a zstore save in progress;
4. group and array metadata, then every array's shards, all concurrently;
   An object whose bytes are unchanged since a ``base`` checkpoint is copied on
   the server instead (see ``incremental``);
5. the object hashes, then the final root ``zarr.json`` (consolidated metadata
   and manifest);
6. the commit marker, created only if absent, so of two racing savers one wins.

Each array is written with one ``setitem`` covering all of it (or one per
changed object, when others are copied), so every shard is written whole, once,
by one writer: no read-modify-write ever happens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr import AsyncArray
from zarr.abc.buffer import Buffer
from zarr.abc.store import Store
from zarr.storage import StorePath, WrapperStore

from zstore._budget import ByteBudget
from zstore._compat import ArrayV3Metadata, sync
from zstore._format.crypto import Cipher, KeySource, make_cipher
from zstore._format.dtypes import check_supported
from zstore._format.hashes import encode_hashes
from zstore._format.layout import Layout, array_metadata
from zstore._format.lazy import is_lazy
from zstore._format.manifest import (
    Manifest,
    check_metadata,
    commit_document,
    encode,
    group_document,
    group_paths,
    is_zstore_root,
    needed_format,
    root_document,
    writing_document,
)
from zstore._format.names import COMMIT_MARKER, HASHES, LEASE, ROOT
from zstore._format.shards import object_format
from zstore._format.stacked import Stacked
from zstore._format.tensors import host_array, is_dtensor, is_torch_tensor, torch_numpy_dtype
from zstore._format.tree import FlatTree, flatten, iter_leaves
from zstore._options import concurrency, current
from zstore._plan.access import Access
from zstore._plan.planner import Plan, plan_specs
from zstore._plan.profiles import BackendProfile, profile_for
from zstore._progress import bar
from zstore._ranks import Part, Ranks
from zstore._storage.backend import is_temporary
from zstore._storage.failures import storage_errors
from zstore._storage.location import Location, resolve
from zstore._text import contents, size
from zstore._version import __version__
from zstore._write.collective import write_collective
from zstore._write.delete import delete_checkpoint, nested_checkpoints
from zstore._write.incremental import Baseline, plan_array, read_baseline
from zstore._write.lease import Lease
from zstore._write.shards import write_objects
from zstore.errors import (
    CheckpointCommittedError,
    CommitRaceLostError,
    ForeignObjectsError,
    NestedCheckpointError,
    SaveTimeoutError,
)


@dataclass(frozen=True)
class SaveInfo:
    """What a save wrote: arrays, bytes before and after compression, objects, time.

    ``arrays`` counts stored zarr arrays (tied tensors once), ``inline_values`` the 0-d
    tensors and numpy scalars kept in the manifest instead: the two counts ``Checkpoint``
    and ``zstore info`` show. Plain Python values in the tree are in neither.
    """

    url: str
    arrays: int
    logical_bytes: int
    stored_bytes: int
    objects: int
    seconds: float
    copied_objects: int = 0  # copied on the server from ``base``, not uploaded
    copied_bytes: int = 0
    inline_values: int = 0
    rank_bytes: tuple[int, ...] = ()  # a multi-rank save: the bytes each rank wrote

    @property
    def rank_balance(self) -> float:
        """A multi-rank save's max over mean of the bytes the ranks wrote (1.0: even)."""
        mean = sum(self.rank_bytes) / len(self.rank_bytes) if self.rank_bytes else 0
        return max(self.rank_bytes) / mean if mean else 1.0

    def __str__(self) -> str:
        copied = f", {self.copied_objects} copied on the server" if self.copied_objects else ""
        return (f"{contents(self.arrays, self.inline_values)}, "
                f"{size(self.logical_bytes)} -> {size(self.stored_bytes)} in {self.objects} "
                f"objects{copied} at {self.url} ({self.seconds:.2f} s)")

    @property
    def uploaded_bytes(self) -> int:
        """Stored bytes that crossed the network (the rest were copied on the server)."""
        return self.stored_bytes - self.copied_bytes

    @property
    def ratio(self) -> float:
        """Compression ratio (logical / stored); 1.0 for an empty checkpoint."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0


def save(
    tree: Any,
    url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    access: Access = None,
    backend: str | BackendProfile | None = None,
    codec: str = "auto",
    base: str | None = None,
    timeout: float | None = None,
    max_concurrency: int | None = None,
    progress: bool | None = None,
    layouts: Mapping[str, Layout] | None = None,
    stack: bool = True,
    process_group: Any = None,
    encryption_key: KeySource | None = None,
) -> SaveInfo:
    """Save a tree of arrays and values as a committed checkpoint at ``url``.

    With ``torch.distributed`` initialized the call is collective: every rank of
    ``process_group`` (default: all) calls it with its own state, whose DTensors are its
    parts of global tensors and whose plain tensors and values are the same on every rank.
    The result is one checkpoint of global arrays; each object is written by one rank
    (see ``docs/distributed.md``).

    Args:
        tree: nested dicts (str or int keys), lists and tuples whose leaves are
            numpy arrays, torch tensors (any device, views, non-contiguous),
            numpy or Python scalars, str, bool or None.
        url: any fsspec URL or local path: ``"ckpt/step-1"``, ``"memory://x"``,
            ``"s3://bucket/run/step-1"``.
        storage_options: passed to fsspec (``endpoint_url``, ``key``, ``secret``...).
        metadata: JSON values kept with the checkpoint (step, config).
        overwrite: replace a committed checkpoint at ``url``. The old commit
            marker is removed first, so a crash never leaves a mix that opens.
        access: how arrays will be read, which decides their chunk and shard
            shapes (see ``zstore.plan``): ``{"*embed*": "rows", "*.q_proj.weight":
            zstore.split(0, 8)}``. Default: every array read whole.
        backend: the backend profile to plan for (a name or ``BackendProfile``);
            default chosen from ``url``.
        codec: ``"auto"`` (shuffled Blosc-zstd where the backend is slower than
            this machine compresses, e.g. S3; none on local disk and memory),
            ``"blosc"``, ``"zstd"`` or ``"none"``.
        base: a committed checkpoint on the same backend (the previous step):
            every object whose raw bytes and layout are unchanged since it is
            copied on the server (S3 CopyObject, a hard link locally) instead of
            encoded and uploaded. The new checkpoint stays self-contained, and
            records its own hashes so it can be the base of the next save.
        timeout: seconds the whole save may take; past it the save stops before
            committing and raises ``SaveTimeoutError`` (each request also has its
            own timeout and retries, see ``storage.S3_CONFIG``).
        progress: a progress bar on stderr (tqdm); default: only on a terminal,
            for saves over 256 MiB.
        layouts: {name glob: ``zstore.Layout(chunk_shape, shard_shape, codec)``}:
            these arrays are stored as given instead of as planned (``zstore.plan``
            with the same argument shows what that costs).
        stack: store tensors of one shape and dtype whose names differ only in
            integers (layers, experts, optimizer slots) as one array with a leading
            index dimension: fewer objects and requests, each tensor still read alone
            by its name (``zstore.plan`` shows which). False: one array per tensor.
        process_group: a multi-rank save's ranks (a ``torch.distributed`` process group;
            None: all); its own collectives run on a gloo group of the same ranks. False:
            this process saves alone, even under ``torch.distributed`` (rank 0 saving a
            gathered state).
        encryption_key: encrypt every array's chunks with AES-256-GCM under this key:
            32 bytes, or a provider called with None that returns the key (or
            ``(key_id, key)``, for a key held in a KMS). The key is never stored: only
            its id, to refuse a wrong key on open. Names, shapes, dtypes, sizes, the
            tree's inline values and ``metadata`` stay readable (README, "Encryption").
        max_concurrency: arrays written at once (each also writes its shards
            concurrently, per zarr's ``async.concurrency``); None:
            ``zstore.Settings.save_concurrency`` (8), which bounds a save's memory.
            Not s3fs's ``storage_options={"max_concurrency": ...}``: the parts of
            one object it transfers at once.

    Returns:
        SaveInfo with sizes, object count and duration.

    Raises:
        CheckpointExistsError: as one of its subclasses: ``CheckpointCommittedError``
            (``url`` holds a checkpoint, and not ``overwrite``), ``ForeignObjectsError``
            (objects zstore did not write), ``NestedCheckpointError`` (checkpoints below
            ``url``), ``LeaseHeldError`` (another save is writing it),
            ``CommitRaceLostError`` (another save committed it first).
        LeaseLostError: this save's lease lapsed or was taken over; nothing committed.
        SaveTimeoutError: past ``timeout``; nothing committed.
        InvalidKeyError, UnsupportedTypeError: raised before anything is written.
        RankFailedError: a multi-rank save stopped because another rank failed, crashed
            or hung (after ``Settings.collective_timeout``); nothing committed.

    Example:
        >>> import numpy as np, zstore
        >>> info = zstore.save({"w": np.ones((2, 3), "float32"), "step": 7}, "memory://doc/save")
        >>> info.arrays
        1
    """
    return write(flatten(tree), url, storage_options=storage_options, metadata=metadata,
                 overwrite=overwrite, access=access, backend=backend, codec=codec, base=base,
                 timeout=timeout, max_concurrency=max_concurrency, progress=progress,
                 layouts=layouts, stack=stack, process_group=process_group,
                 encryption_key=encryption_key)


def write(flat: FlatTree, url: str, *, storage_options: dict[str, Any] | None = None,
          metadata: dict[str, Any] | None = None, overwrite: bool = False,
          access: Access = None, backend: str | BackendProfile | None = None,
          codec: str = "auto", base: str | None = None, hashes: bool | None = None,
          timeout: float | None = None, max_concurrency: int | None = None,
          progress: bool | None = None, layouts: Mapping[str, Layout] | None = None,
          stack: bool = True, process_group: Any = None,
          encryption_key: KeySource | None = None) -> SaveInfo:
    """``save`` of a tree already flattened (and perhaps snapshotted): see ``save``.

    ``hashes`` (default: only with a ``base``) records each object's hash so
    this checkpoint can be the base of the next one; hashing costs about a
    core-second per 1.8 GB, noticeable only where storage is faster than that.
    """
    started = time.perf_counter()
    cipher = None if encryption_key is None else make_cipher(encryption_key)
    ranks = None if process_group is False else Ranks.current(url, process_group)
    if ranks is not None and (ranks.size > 1 or any(
            is_dtensor(v) or isinstance(v, Part) for v in flat.arrays.values())):
        if base is not None:
            raise ValueError("base= (an incremental save) is not supported by multi-rank "
                             "saves yet; save the whole state")
        plan, objects, rank_bytes, stored = write_collective(
            flat, url, ranks, storage_options=storage_options, metadata=metadata,
            overwrite=overwrite, access=access, backend=backend, codec=codec, timeout=timeout,
            layouts=layouts, stack=stack, cipher=cipher)
        return SaveInfo(url=url, arrays=len(plan.arrays), logical_bytes=plan.nbytes,
                        stored_bytes=stored, objects=objects,
                        seconds=time.perf_counter() - started,
                        inline_values=sum("scalar" in n for _, n in iter_leaves(flat.skeleton)),
                        rank_bytes=tuple(rank_bytes))
    max_concurrency = concurrency(max_concurrency, saving=True)
    manifest = Manifest(tree=flat.skeleton, metadata=check_metadata(metadata), arrays={},
                        zstore_version=__version__,
                        encryption=None if cipher is None else cipher.record())
    specs = {path: (tuple(value.shape), _stored_dtype(value, path))
             for path, value in flat.arrays.items()}
    plan = plan_specs(specs, access=access, profile=profile_for(url, backend), codec=codec,
                      cores=None, layouts=layouts, stack=stack, alone=flat.alone)
    arrays = _stack(flat, plan)
    describe(manifest, plan, cipher)
    location = resolve(url, storage_options)
    source = resolve(base, storage_options) if base is not None else None
    shown = bar(plan.nbytes, f"saving {url}", progress)
    work = _save(location, arrays, manifest, overwrite, max_concurrency,
                 lambda path: shown.update(plan.arrays[path].nbytes), source,
                 base is not None if hashes is None else hashes, cipher)
    with storage_errors(url, saving=True):
        try:
            outcome = sync(work if timeout is None else asyncio.wait_for(work, timeout))
        except TimeoutError:
            raise SaveTimeoutError(
                f"the save to {url!r} did not finish within {timeout} s and was stopped before "
                "its commit marker was written: it does not open as a checkpoint, and no other "
                "checkpoint was touched. Retry, or raise timeout=",
                url=url, timeout=timeout) from None
        finally:
            shown.close()
    return SaveInfo(
        url=url,
        arrays=len(arrays),
        logical_bytes=plan.nbytes,
        stored_bytes=sum(manifest.stored_bytes.values()),
        objects=outcome.objects,
        seconds=time.perf_counter() - started,
        copied_objects=len(outcome.copied),
        copied_bytes=outcome.copied_bytes,
        inline_values=sum("scalar" in node for _, node in iter_leaves(flat.skeleton)),
    )


def describe(manifest: Manifest, plan: Plan, cipher: Cipher | None) -> None:
    """Each planned array's ``zarr.json`` into the manifest (encrypted under ``cipher``,
    if given), and the format that holds them."""
    key_id = None if cipher is None else cipher.key_id
    for path, a in plan.arrays.items():
        manifest.arrays[path] = array_metadata(path, a.shape, a.dtype, a.layout, a.members,
                                               key_id)
    manifest.format = needed_format(manifest.tree, any(a.members for a in plan.arrays.values()),
                                    cipher is not None)


def _stack(flat: FlatTree, plan: Plan) -> dict[str, Any]:
    """The arrays to write, the plan's stacked ones in place of their members; the members'
    tree leaves now point at their index in the stacked array."""
    arrays = dict(flat.arrays)
    position: dict[str, tuple[str, int]] = {}
    for path, a in plan.arrays.items():
        if a.members:
            arrays[path] = Stacked([arrays.pop(m) for m in a.members], a.members, a.dtype)
            position.update((m, (path, i)) for i, m in enumerate(a.members))
    for _, node in iter_leaves(flat.skeleton):
        if "array" in node and node["array"] in position:
            node["array"], node["index"] = position[node["array"]]
    return arrays


def _stored_dtype(value: Any, path: str) -> np.dtype:
    if is_torch_tensor(value):
        return torch_numpy_dtype(value, path)
    return check_supported(value.dtype, path)


@dataclass
class _Outcome:
    objects: int
    copied: list[str]
    copied_bytes: int


async def _save(location: Location, arrays: dict[str, Any], manifest: Manifest,
                overwrite: bool, max_concurrency: int, written: Callable[[str], None],
                source: Location | None, hashing: bool, cipher: Cipher | None) -> _Outcome:
    baseline = await read_baseline(source) if source is not None else None
    await _refuse_committed(location, overwrite)  # before the lease: a refusal writes nothing
    async with Lease(location).held() as lease:
        return await _save_leased(location, arrays, manifest, overwrite, max_concurrency,
                                  written, baseline, hashing, lease, cipher)


async def _save_leased(location: Location, arrays: dict[str, Any], manifest: Manifest,
                       overwrite: bool, max_concurrency: int, written: Callable[[str], None],
                       baseline: Baseline | None, hashing: bool, lease: Lease,
                       cipher: Cipher | None) -> _Outcome:
    await claim_destination(location, overwrite)
    limit = asyncio.Semaphore(max_concurrency)
    budget = ByteBudget(current().write_budget)

    async def bounded(coroutine: Any) -> None:
        async with limit:
            await coroutine

    await write_documents(location, manifest, limit)
    hashes: dict[str, str] = {}
    copied: list[str] = []

    async def write(path: str, value: Any) -> None:
        host: Any = value if isinstance(value, Stacked) else host_array(value, path)
        document = manifest.arrays[path]
        if not hashing:
            await _write_array(location, path, document, host, [Ellipsis], budget, cipher)
            written(path)
            return
        reuse = await plan_array(path, host, document, baseline, cipher)
        hashes.update(reuse.hashes)
        lost: list[Any] = []  # boxes whose object the base no longer has: write them instead

        async def copy(key: str, box: Any) -> None:
            assert baseline is not None and baseline.location is not None
            try:
                await location.copy_from(baseline.location, key)
                copied.append(key)
            except FileNotFoundError:
                lost.append(box)

        await asyncio.gather(*(copy(key, box) for key, box in reuse.copy))
        await _write_array(location, path, document, host,
                           [Ellipsis] if reuse.writes_everything else reuse.write + lost, budget,
                           cipher)
        written(path)

    await asyncio.gather(*(bounded(write(path, value)) for path, value in arrays.items()))
    sizes = await commit(location, manifest, lease, hashes, cipher)
    return _Outcome(len(sizes) + 1, copied, sum(sizes.get(key, 0) for key in copied))


async def write_documents(location: Location, manifest: Manifest,
                          limit: asyncio.Semaphore) -> None:
    """Every group's and array's ``zarr.json``, ``limit`` at a time."""
    documents = {f"{g}/{ROOT}": group_document() for g in group_paths(list(manifest.arrays))}
    documents.update({f"{p}/{ROOT}": doc for p, doc in manifest.arrays.items()})

    async def put(key: str, document: dict[str, Any]) -> None:
        async with limit:
            await location.put(key, encode(document))

    await asyncio.gather(*(put(k, d) for k, d in documents.items()))


async def commit(location: Location, manifest: Manifest, lease: Lease,
                 hashes: dict[str, str], cipher: Cipher | None) -> dict[str, int]:
    """Once every object is written: the hashes, the final root ``zarr.json`` (manifest and
    stored sizes), then, if the lease is still this save's, the commit marker, created only
    if absent (vouching for the root under ``cipher``, for an encrypted checkpoint). The
    sizes of the checkpoint's objects."""
    await location.put(HASHES, encode_hashes(hashes, keyed=manifest.encryption is not None))
    sizes = {k: n for k, n in (await location.sizes()).items()
             if k != LEASE and not is_temporary(k)}
    manifest.stored_bytes = {
        path: sum(n for key, n in sizes.items() if key.startswith(f"{path}/c"))
        for path in manifest.arrays
    }
    manifest.created = time.time()
    root = encode(root_document(manifest))
    await location.put(ROOT, root)
    await lease.check()
    vouched = None if cipher is None else cipher.vouch(root)
    await put_marker(location, commit_document(root, manifest.format, vouched),
                     "while this one was writing; this save's data was not committed")
    return sizes


async def put_marker(location: Location, marker: bytes, lost: str) -> None:
    """Create the commit marker, only if absent; ``CommitRaceLostError`` (saying ``lost``)
    where another writer's marker is there, not this one's own (a create retried after
    its response was lost)."""
    try:
        await location.put_new(COMMIT_MARKER, marker)
    except FileExistsError:
        if await location.get(COMMIT_MARKER) != marker:
            raise CommitRaceLostError(f"another save committed {location.url!r} {lost}",
                                      url=location.url) from None


class _NewObjectsStore(WrapperStore[Store]):
    """A view of the destination in which every object is still absent.

    zarr 3.1 reads a shard before writing it even when the write covers all of
    it (3.2+ skips the read). A save has just cleared its destination and writes
    each shard exactly once, so that read can only ever find nothing: answering
    it here saves one GET per shard, and rules out read-modify-write for good.
    """

    location: Location  # whose gate every shard write passes

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> None:
        return None

    async def set(self, key: str, value: Any) -> None:
        async with self.location.writing():
            await self._store.set(key, value)

    async def get_partial_values(self, prototype: Any, key_ranges: Any
                                 ) -> list[Buffer | None]:
        return [None for _ in key_ranges]


async def _write_array(location: Location, path: str, document: dict[str, Any],
                       host: Any, boxes: list[Any], budget: ByteBudget,
                       cipher: Cipher | None = None) -> None:
    """Write these boxes of the array (each a whole object, or ``...`` for all of it):
    zstore's layouts through its own data path (``shards``, encrypting under ``cipher``
    where the document says so), any other through zarr."""
    fmt = object_format(document, cipher)
    if fmt is not None:
        await write_objects(fmt, location, path, host, boxes, budget)
        return
    if is_lazy(host):  # fetched on this loop
        host = await host.fetch(tuple(slice(0, n) for n in host.shape))
    store = _NewObjectsStore(location.store)
    store.location = location
    array = AsyncArray(
        metadata=ArrayV3Metadata.from_dict(dict(document)),
        store_path=StorePath(store, path),
        config={"write_empty_chunks": True},  # an all-zero chunk may hold -0.0: keep the bits
    )
    await asyncio.gather(*(array.setitem(box, host[box]) for box in boxes))


async def _refuse_committed(location: Location, overwrite: bool) -> None:
    if not overwrite and await location.get(COMMIT_MARKER) is not None:
        raise _committed(location)


def _committed(location: Location) -> CheckpointCommittedError:
    return CheckpointCommittedError(
        f"{location.url!r} already holds a committed checkpoint; pass overwrite=True to "
        "replace it, or save to another URL", url=location.url)


async def claim_destination(location: Location, overwrite: bool) -> None:
    """Under the lease: clear the destination, then mark it as a zstore save in progress
    (the placeholder root ``zarr.json``), before any other object is written."""
    await _clear_destination(location, overwrite)
    await location.put(ROOT, encode(writing_document()))


async def _clear_destination(location: Location, overwrite: bool) -> None:
    """Refuse foreign objects, then delete an old checkpoint, marker first."""
    marker, root = await asyncio.gather(location.get(COMMIT_MARKER), location.get(ROOT))
    if marker is not None and not overwrite:  # committed by a save that ended just now
        raise _committed(location)
    existing = await location.sizes()
    existing.pop(LEASE, None)
    if all(is_temporary(key) for key in existing):  # at most a crashed save's first write
        await location.remove_all(list(existing))
        return
    if not is_zstore_root(root):
        inner = nested_checkpoints(existing)
        if inner:  # zstore's own, but another checkpoint's: saving here would bury it
            raise NestedCheckpointError(
                f"{location.url!r} holds {len(inner)} checkpoint(s) below it (e.g. at "
                f"{inner[0]!r}); a checkpoint cannot contain another: save to an empty URL, "
                "or move those first", url=location.url, nested=inner[0])
        example = sorted(existing)[0]
        raise ForeignObjectsError(
            f"{location.url!r} holds {len(existing)} object(s) not written by zstore "
            f"(e.g. {example!r}); zstore deletes only its own checkpoints: choose an empty URL",
            url=location.url, objects=len(existing), example=example
        )
    await delete_checkpoint(location, existing)  # its commit marker first
