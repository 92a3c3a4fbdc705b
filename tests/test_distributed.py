"""Multi-rank saves and loads: real processes, gloo on 127.0.0.1, DTensors on CPU meshes.

Four ranks save one checkpoint of global arrays (uneven and empty shards, a 2-D mesh,
bf16, replicated plain tensors, stacked layers); one, two, three and four ranks load it
into other placements; every object is written once; a failing or dying rank leaves no
commit and makes every rank raise within the collective timeout.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import traceback
from typing import Any

import numpy as np
import pytest
import zarr

import zstore

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, fn: Any, args: tuple, results: Any) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        results.put((rank, "ok", fn(rank, world, *args)))
    except BaseException as e:  # reported to the test, which asserts on it
        results.put((rank, "error", (type(e).__name__, str(e), traceback.format_exc())))


def run_ranks(world: int, fn: Any, *args: Any, timeout: float = 240) -> dict[int, Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes joined by gloo; {rank:
    ("ok", result) or ("error", (type, message, traceback))}; a rank that exits without
    answering is absent."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_entry, args=(r, world, port, fn, args, results))
                 for r in range(world)]
    for p in processes:
        p.start()
    found: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(found) < world and time.monotonic() < deadline:
        if all(not p.is_alive() for p in processes) and results.empty():
            break
        try:
            rank, status, value = results.get(timeout=1)
        except Exception:
            continue
        found[rank] = (status, value)
    for p in processes:
        p.join(timeout=max(1.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    return found


def _ok(found: dict[int, Any], world: int) -> list[Any]:
    problems = {r: v for r, (s, v) in found.items() if s != "ok"}
    assert not problems and len(found) == world, (problems, sorted(found))
    return [found[r][1] for r in range(world)]


# ---- the state, the same on every rank and in the test ----------------------------------

def _full() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "uneven": torch.randn(10, 6, generator=g),  # 3, 3, 3, 1 rows over 4 ranks
        "empty": torch.randn(3, 5, generator=g),  # 1, 1, 1, 0: rank 3 holds nothing
        "empty2": torch.randn(3, 7, generator=g),  # a second empty part: not tied to the first
        "bf16": torch.randn(16, 2048, generator=g).to(torch.bfloat16),  # split by columns
        "grid": torch.randn(64, 96, generator=g),  # a 2 x 2 mesh, both dims
        "rows": torch.randn(2048, 512, generator=g),  # 2 x 2 mesh: sharded, then replicated
        "embed": torch.randn(1024, 1024, generator=g),  # plain: replicated, written by all
        "norm": torch.randn(64, generator=g),  # plain: replicated
        "layers": [torch.randn(40, 8, generator=g) for _ in range(3)],  # stacked
    }


def _sharded(world: int, rank: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    square = init_device_mesh("cpu", (2, world // 2))
    full = _full()
    return {
        "uneven": distribute_tensor(full["uneven"], mesh, [Shard(0)]),
        "empty": distribute_tensor(full["empty"], mesh, [Shard(0)]),
        "empty2": distribute_tensor(full["empty2"], mesh, [Shard(0)]),
        "bf16": distribute_tensor(full["bf16"], mesh, [Shard(1)]),
        "grid": distribute_tensor(full["grid"], square, [Shard(0), Shard(1)]),
        "rows": distribute_tensor(full["rows"], square, [Shard(0), Replicate()]),
        "embed": full["embed"],
        "norm": full["norm"],
        "layers": [distribute_tensor(t, mesh, [Shard(0)]) for t in full["layers"]],
        "step": 7,
        "rng": torch.arange(4) + 10 * rank,  # differs per rank: kept per rank
        "rngs": [torch.arange(3) + rank, torch.arange(3) * (rank + 1)],  # never stacked
        "seed": 1000 + rank,
    }


def _targets(world: int) -> dict[str, Any]:
    """Empty DTensors of the same global shapes, placed unlike the save."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = _full()
    placements = [Shard(1), Shard(0), Shard(0), Shard(1), Replicate(), Shard(1), Shard(0)]
    names = ["uneven", "empty", "bf16", "grid", "rows", "embed", "norm"]
    found = {name: distribute_tensor(torch.zeros_like(full[name]), mesh, [p])
             for name, p in zip(names, placements)}
    # a cast on the way in: read through host memory, not into the parameter's own
    found["embed"] = distribute_tensor(torch.zeros(1024, 1024, dtype=torch.float64), mesh,
                                       [Shard(1)])
    return found


def _save_and_reload(rank: int, world: int, urls: list[tuple[str, dict]]) -> dict[str, Any]:
    infos = []
    for url, options in urls:
        info = zstore.save(_sharded(world, rank), url, storage_options=options)
        infos.append((info.objects, info.rank_bytes, info.stored_bytes))
    return {"infos": infos, "equal": _load_and_compare(world, urls[0])}


def _load_and_compare(world: int, where: tuple[str, dict]) -> dict[str, bool]:
    """Load into DTensors placed unlike the save; which came back equal to the state."""
    url, options = where
    targets = _targets(world)
    report = zstore.load(url, storage_options=options, into=targets, strict=False)
    assert sorted(report.loaded) == sorted(targets)
    full = _full()
    equal = {name: bool(torch.equal(t.full_tensor(), full[name].to(t.dtype)))
             for name, t in targets.items()}
    own = zstore.open(url, storage_options=options).load(entries=["rng", "seed"])
    equal["own values"] = (own["seed"] == 1000 + dist.get_rank()
                           and torch.equal(own["rng"], torch.arange(4) + 10 * dist.get_rank()))
    return equal


def _load_only(rank: int, world: int, where: tuple[str, dict]) -> dict[str, bool]:
    return _load_and_compare(world, where)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, moto_s3):
    """A checkpoint four ranks saved, locally and on S3 (moto), and what they reported."""
    local = str(tmp_path_factory.mktemp("ranks") / "ckpt")
    remote = f"s3://{moto_s3.new_bucket()}/ckpt"
    moto_s3.log.clear()
    found = run_ranks(4, _save_and_reload, [(local, {}), (remote, moto_s3.storage_options)])
    return {"where": {"local": (local, {}), "s3": (remote, moto_s3.storage_options)},
            "results": _ok(found, 4),
            "puts": [path for method, path, _ in moto_s3.log.requests if method == "PUT"]}


def _expected(name: str) -> np.ndarray:
    value = _full()[name]
    return value.view(torch.int16).numpy() if value.dtype == torch.bfloat16 else value.numpy()


def test_four_ranks_save_one_checkpoint_that_one_process_reads(saved):
    for url, options in saved["where"].values():
        ckpt = zstore.open(url, storage_options=options)
        for name in ("uneven", "empty", "empty2", "bf16", "grid", "rows", "embed", "norm"):
            assert ckpt[name][...].tobytes() == _expected(name).tobytes(), (url, name)
        loaded = zstore.load(url, storage_options=options)
        assert loaded["step"] == 7
        assert loaded["seed"] == 1000 and torch.equal(loaded["rng"], torch.arange(4))  # rank 0's
        assert torch.equal(loaded["rngs"][1], torch.arange(3))
        assert np.array_equal(ckpt.stored_arrays()["zstore.ranks/3/rng"][...], np.arange(4) + 30)
        assert all(torch.equal(a, b) for a, b in zip(loaded["layers"], _full()["layers"]))
    local, _ = saved["where"]["local"]
    plain = zarr.open_array(local + "/grid", mode="r")  # a plain Zarr reader: global arrays
    assert np.array_equal(plain[...], _full()["grid"].numpy())


def test_every_object_is_written_by_one_rank_once_and_the_bytes_are_balanced(saved):
    objects = [path for path in saved["puts"] if "/c/" in path]
    assert objects and len(objects) == len(set(objects))  # no object PUT twice
    first = saved["results"][0]["infos"]
    assert all(r["infos"] == first for r in saved["results"])  # every rank reports alike
    for _, rank_bytes, _ in first:
        assert max(rank_bytes) / (sum(rank_bytes) / 4) <= 1.1, rank_bytes


def test_ranks_on_one_machine_plan_the_codec_with_their_share_of_its_cores(saved):
    """Four ranks here compress at once: ``codec="auto"`` weighs S3 against a quarter of
    the cores, as ``zstore.plan`` does when told that many."""
    url, options = saved["where"]["s3"]
    ckpt = zstore.open(url, storage_options=options)
    share = max(1, (os.cpu_count() or 1) // 4)
    expected = zstore.plan({"embed": ckpt["embed"]}, backend="s3", cores=share)
    codecs = json.dumps(ckpt.array_documents()["embed"][0]["codecs"])
    assert ("blosc" in codecs) == (expected.arrays["embed"].layout.codec == "blosc"), codecs


def test_four_ranks_load_into_other_placements(saved):
    for result in saved["results"]:
        assert all(result["equal"].values()), result["equal"]


@pytest.mark.parametrize("world", [2, 3])
def test_a_checkpoint_of_four_ranks_loads_on_fewer(saved, world):
    found = run_ranks(world, _load_only, saved["where"]["local"])
    for equal in _ok(found, world):
        assert all(equal.values()), equal  # each rank's own per-rank values too


def _replicated() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"a": torch.randn(64, 64, generator=g), "b": torch.randn(1000, generator=g),
            "c": torch.randn(32, 16, generator=g).to(torch.bfloat16),
            "d": torch.randn(8, generator=g), "w": torch.randn(12, 8, generator=g)}


def _load_broadcast(rank: int, world: int, where: tuple[str, dict]) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    url, options = where
    mesh = init_device_mesh("cpu", (world,))
    full, read = _replicated(), {}
    ckpt = zstore.open(url, storage_options=options)  # its metadata: read by every rank
    for broadcast in (False, True):
        targets = {k: torch.zeros_like(v) for k, v in full.items()}
        targets["w"] = distribute_tensor(torch.zeros(12, 8), mesh, [Shard(0)])
        with zstore.io_stats() as stats:
            ckpt.load(into=targets, broadcast=broadcast)
        assert all(torch.equal(targets[k], v) for k, v in full.items() if k != "w")
        assert torch.equal(targets["w"].full_tensor(), full["w"])
        read[broadcast] = (stats.bytes_read, stats.gets)
    fewer = {k: torch.zeros_like(v) for k, v in full.items() if k != "d" or rank == 0}
    mismatch = _raised(lambda: zstore.load(url, storage_options=options, into=fewer,
                                           strict=False, broadcast=True))
    return {"read": read, "mismatch": mismatch}


def test_replicated_tensors_are_read_once_and_broadcast(tmp_path, moto_s3):
    url = f"s3://{moto_s3.new_bucket()}/replicated"
    full = _replicated()
    zstore.save(full, url, storage_options=moto_s3.storage_options, codec="none")
    found = _ok(run_ranks(2, _load_broadcast, (url, moto_s3.storage_options)), 2)
    plain = sum(v.nbytes for k, v in full.items() if k != "w")
    each = [r["read"][False][0] for r in found]
    shared = [r["read"][True][0] for r in found]
    assert all(b >= plain for b in each)  # without broadcast: every rank reads them all
    assert sum(shared) <= (plain + full["w"].nbytes) * 1.05  # with it: each byte once
    assert max(shared) < 0.8 * plain  # spread over both ranks
    for r in found:
        kind, message, _ = r["mismatch"]
        assert kind == "ValueError" and "broadcast=True" in message and "'d'" in message


# ---- failures -------------------------------------------------------------------------

def _failing(rank: int, world: int, root: str) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Partial, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    outcome: dict[str, Any] = {}
    with zstore.configure(collective_timeout=15.0):
        # 1. rank 1 holds a Partial (a sum not yet reduced): it cannot be saved
        state = {"w": distribute_tensor(torch.ones(8, 4), mesh, [Shard(0)]),
                 "x": distribute_tensor(torch.ones(2), mesh, [Shard(0)])}  # collectives alike
        if rank == 1:
            state["x"] = torch.distributed.tensor.DTensor.from_local(
                torch.ones(2), mesh, [Partial()])
        outcome["partial"] = _raised(lambda: zstore.save(state, f"{root}/partial"))
        # 2. the ranks save different names
        bad = {f"w{rank}": torch.ones(4)}
        outcome["shapes"] = _raised(lambda: zstore.save(bad, f"{root}/shapes"))
        # 3. one rank saves alone, as code that gathered a state on rank 0 does
        if rank == 0:
            zstore.save({"w": torch.ones(3)}, f"{root}/alone", process_group=False)
        # 4. a good save, then rank 1 dies while writing the next step's objects
        big = {"w": distribute_tensor(torch.randn(256, 1024), mesh, [Shard(0)])}
        zstore.save(big, f"{root}/step-1")
        if rank == 1:
            os.writev = lambda *_: os._exit(17)  # type: ignore[assignment]
        started = time.monotonic()
        outcome["died"] = _raised(lambda: zstore.save(big, f"{root}/step-2"))
        outcome["seconds"] = time.monotonic() - started
    return outcome


def _raised(call: Any) -> tuple[str, str, list[int]] | None:
    try:
        call()
    except Exception as e:
        return type(e).__name__, str(e), list(getattr(e, "ranks", []))
    return None


def test_a_failing_or_dying_rank_commits_nothing_and_every_rank_raises(tmp_path):
    root = str(tmp_path)
    found = run_ranks(2, _failing, root)
    assert 1 not in found or found[1][0] == "error"  # rank 1 died in the last step
    status, outcome = found[0]
    assert status == "ok", outcome
    kind, message, ranks = outcome["partial"]
    assert kind == "RankFailedError" and ranks == [1] and "Partial" in message
    assert outcome["shapes"][0] == "ValueError" and "ranks 0 and 1" in outcome["shapes"][1]
    kind, message, _ = outcome["died"]
    assert kind == "RankFailedError" and "nothing was committed" in message
    assert outcome["seconds"] < 60
    with pytest.raises(zstore.CheckpointNotFoundError):
        zstore.open(f"{root}/partial")
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.open(f"{root}/step-2")
    assert zstore.open(f"{root}/step-1")["w"].shape == (256, 1024)  # the last step is intact
    assert zstore.open(f"{root}/alone")["w"].shape == (3,)


def _slow_lead(rank: int, world: int, root: str) -> bool:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    state = {"w": distribute_tensor(torch.arange(64.0).reshape(16, 4), mesh, [Shard(0)])}
    zstore.save(state, f"{root}/slow")
    with zstore.configure(lease_ttl=2.0):  # other ranks may write for 1.5 s per renewal
        if rank == 0:  # rank 0 takes 2.5 s to clear what it replaces, as on a slow store
            remove = os.remove

            def slow(path: Any, *args: Any, **kw: Any) -> None:  # runs in a thread
                if str(path).endswith("zstore.commit.json"):
                    time.sleep(2.5)
                remove(path, *args, **kw)

            os.remove = slow  # type: ignore[assignment]
        zstore.save({"w": state["w"] * 2}, f"{root}/slow", overwrite=True)
    return True


def test_the_other_ranks_fence_starts_after_rank_0_took_the_lease(tmp_path):
    """Planning and clearing may take longer than the fence: the followers' writes are
    fenced from a renewal after them, not from before planning."""
    found = run_ranks(2, _slow_lead, str(tmp_path))
    assert _ok(found, 2) == [True, True]
    np.testing.assert_array_equal(zstore.open(f"{tmp_path}/slow")["w"][:],
                                  np.arange(0.0, 128.0, 2.0, dtype=np.float32).reshape(16, 4))


# ---- FSDP2 ----------------------------------------------------------------------------

def _fsdp_model(seed: int) -> tuple[Any, Any]:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.LayerNorm(64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 8))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model: Any, optim: Any, rank: int, steps: range) -> None:
    for step in steps:
        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(100 * step + rank))
        model(x).square().mean().backward()
        optim.step()
        optim.zero_grad()


def _fsdp_round_trip(rank: int, world: int, url: str) -> bool:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, optim = _fsdp_model(seed=0)
    _train(model, optim, rank, range(3))
    msd, osd = get_state_dict(model, optim)
    zstore.save({"model": msd, "optim": osd}, url)
    _train(model, optim, rank, range(3, 6))
    expected = [p.full_tensor() for p in model.parameters()]

    model, optim = _fsdp_model(seed=1)  # other weights, an optimizer that never stepped
    msd, osd = get_state_dict(model, optim)
    report = zstore.load(url, into={"model": msd, "optim": osd})
    assert not report.missing_keys and not report.unexpected_keys, report
    set_state_dict(model, optim, model_state_dict=msd, optim_state_dict=osd)
    _train(model, optim, rank, range(3, 6))
    return all(torch.equal(p.full_tensor(), e) for p, e in zip(model.parameters(), expected))


def test_an_fsdp2_model_and_optimizer_resume_exactly(tmp_path):
    found = run_ranks(2, _fsdp_round_trip, str(tmp_path / "ckpt"))
    assert _ok(found, 2) == [True, True]


# ---- a training job's series ------------------------------------------------------------

def _series(rank: int, world: int, root: str) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    weights = distribute_tensor(torch.zeros(6, 1024), mesh, [Shard(0)])
    manager = zstore.CheckpointManager(root, keep_last=2)
    for step in (1, 2, 3):
        weights.to_local().fill_(step)
        manager.save(step, {"w": weights, "rng": torch.full((2,), 10 * step + rank)},
                     blocking=False)
        weights.to_local().fill_(-1)  # training goes on: the snapshot must not see this
    manager.wait()
    target = distribute_tensor(torch.zeros(6, 1024), mesh, [Shard(1)])  # another placement
    step, _ = manager.restore(into={"w": target}, strict=False)
    restored = manager.restore()[1]
    manager.close()
    return {"steps": manager.steps(), "step": step,
            "filled": bool(torch.equal(target.full_tensor(), torch.full((6, 1024), 3.0))),
            "rng": restored["rng"].tolist()}


def test_a_manager_on_every_rank_saves_in_the_background_and_restores(tmp_path):
    found = run_ranks(2, _series, str(tmp_path / "run"))
    for rank, result in enumerate(_ok(found, 2)):
        assert result["steps"] == [2, 3] and result["step"] == 3
        assert result["filled"]  # step 3's values, not the -1 written after save returned
        assert result["rng"] == [30 + rank] * 2  # each rank's own


# ---- PyTorch DCP adapters ---------------------------------------------------------------

def _through_dcp(rank: int, world: int, root: str) -> dict[str, bool]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import zstore.dcp

    mesh = init_device_mesh("cpu", (world,))
    full = _full()
    state = {"uneven": distribute_tensor(full["uneven"], mesh, [Shard(0)]),
             "bf16": distribute_tensor(full["bf16"], mesh, [Shard(1)]),
             "embed": full["embed"], "meta": {"step": 5, "name": "run", "betas": (0.9, 0.99)}}
    dcp.save(state, storage_writer=zstore.dcp.StorageWriter(f"{root}/by-dcp"))
    checks = {}
    for source in ("by-dcp", "native"):
        if source == "native":
            zstore.save(state, f"{root}/native")
        target = {"uneven": distribute_tensor(torch.zeros(10, 6), mesh, [Shard(1)]),
                  "bf16": distribute_tensor(torch.zeros(16, 2048, dtype=torch.bfloat16), mesh,
                                            [Shard(0)]),
                  "embed": torch.zeros(1024, 1024), "meta": {"step": 0, "name": "", "betas": ()}}
        dcp.load(target, storage_reader=zstore.dcp.StorageReader(f"{root}/{source}"))
        checks[source] = (all(torch.equal(target[k].full_tensor(), full[k])
                              for k in ("uneven", "bf16"))
                          and torch.equal(target["embed"], full["embed"])
                          and target["meta"] == {"step": 5, "name": "run", "betas": (0.9, 0.99)})
    # an FSDP2 model and optimizer, saved and loaded through DCP with zstore underneath
    model, optim = _fsdp_model(seed=0)
    _train(model, optim, rank, range(2))
    msd, osd = get_state_dict(model, optim)
    dcp.save({"model": msd, "optim": osd},
             storage_writer=zstore.dcp.StorageWriter(f"{root}/fsdp"))
    _train(model, optim, rank, range(2, 4))
    expected = [p.full_tensor() for p in model.parameters()]
    model, optim = _fsdp_model(seed=1)
    msd, osd = get_state_dict(model, optim)
    both = {"model": msd, "optim": osd}
    dcp.load(both, storage_reader=zstore.dcp.StorageReader(f"{root}/fsdp"))
    set_state_dict(model, optim, model_state_dict=both["model"], optim_state_dict=both["optim"])
    _train(model, optim, rank, range(2, 4))
    checks["fsdp"] = all(torch.equal(p.full_tensor(), e)
                         for p, e in zip(model.parameters(), expected))
    return checks


def test_dcp_saves_and_loads_through_zstore(tmp_path):
    found = run_ranks(2, _through_dcp, str(tmp_path))
    for checks in _ok(found, 2):
        assert checks == {"by-dcp": True, "native": True, "fsdp": True}, checks
    ckpt = zstore.open(str(tmp_path / "by-dcp"))  # a zstore checkpoint of global arrays
    assert ckpt["uneven"][...].tobytes() == _expected("uneven").tobytes()
    assert ckpt["bf16"][...].tobytes() == _expected("bf16").tobytes()
    assert zstore.load(str(tmp_path / "by-dcp"))["meta"]["step"] == 5  # a value, not a pickle


# ---- FSDP2 over tensor parallelism: strided shards ----------------------------------------

def _fsdp_tp_model(seed: int) -> tuple[Any, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 10), torch.nn.ReLU(),
                                torch.nn.Linear(10, 8))  # 10 rows: uneven over 2 x 2
    parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    fully_shard(model, mesh=mesh["dp"])
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _fsdp_tp_round_trip(rank: int, world: int, url: str) -> dict[str, bool]:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, optim = _fsdp_tp_model(seed=0)
    _train(model, optim, rank // 2, range(2))  # the same batch on both TP ranks
    msd, osd = get_state_dict(model, optim)
    strided = any("Strided" in str(v.placements) for v in msd.values())
    zstore.save({"model": msd, "optim": osd}, url)
    saved = {k: v.full_tensor() for k, v in msd.items()}
    _train(model, optim, rank // 2, range(2, 4))
    expected = [p.full_tensor() for p in model.parameters()]

    model, optim = _fsdp_tp_model(seed=1)
    msd, osd = get_state_dict(model, optim)
    zstore.load(url, into={"model": msd, "optim": osd})
    set_state_dict(model, optim, model_state_dict=msd, optim_state_dict=osd)
    _train(model, optim, rank // 2, range(2, 4))
    stored = zstore.open(url)
    return {"strided": strided,
            "global arrays": all(np.array_equal(stored[f"model/{k}"][...], v.numpy())
                                 for k, v in saved.items()),
            "resumed": all(torch.equal(p.full_tensor(), e)
                           for p, e in zip(model.parameters(), expected))}


def test_fsdp2_over_tensor_parallel_saves_global_arrays_and_resumes(tmp_path):
    found = run_ranks(4, _fsdp_tp_round_trip, str(tmp_path / "ckpt"))
    for checks in _ok(found, 4):
        assert checks == {"strided": True, "global arrays": True, "resumed": True}, checks


def _encrypted(rank: int, world: int, url: str, keys: list[bytes]) -> bool:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = _full()
    zstore.save({"rows": distribute_tensor(full["rows"], mesh, [Shard(0)]),
                 "norm": full["norm"]}, url, encryption_key=keys[rank])
    return True


def test_ranks_save_one_encrypted_checkpoint_and_must_agree_on_the_key(tmp_path):
    key, other = bytes(range(32)), bytes(range(1, 33))
    url = str(tmp_path / "sealed")
    _ok(run_ranks(2, _encrypted, url, [key, key]), 2)
    ckpt = zstore.open(url, encryption_key=key)
    assert np.array_equal(ckpt["rows"][...], _full()["rows"].numpy())
    without = zstore.open(url)  # opens: names and shapes are not secret
    with pytest.raises(zstore.EncryptionKeyError):
        without["norm"][...]
    found = run_ranks(2, _encrypted, str(tmp_path / "mixed"), [key, other])
    assert sorted(found) == [0, 1] and all(status == "error" for status, _ in found.values())
    assert "encryption key" in found[0][1][1] and key.hex() not in found[0][1][1]
