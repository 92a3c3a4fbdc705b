"""Hugging Face transformers models as zstore checkpoints (``zstore.hf``).

``save_pretrained`` saves a model's state dict (tied weights once, as zstore stores any
shared tensor) with its config and generation config in the checkpoint's metadata
(``metadata["hf"]``). ``from_pretrained`` builds the model with its parameters on the meta
device (no memory, no random init) and its buffers as the model builds them, gives each
parameter uninitialized memory of the stored dtype (tied ones once), and fills it in place
from the checkpoint: the weights exist once, never a second copy. ``safe_open`` is
safetensors' ``safe_open`` over a zstore checkpoint (``keys``, ``get_tensor``,
``get_slice(name)[...]`` with ``get_shape``/``get_dtype``), so code that loads a
tensor-parallel part through safetensors' protocol reads only that part.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from zstore._format.safetensors import CODES
from zstore._format.tensors import numpy_to_torch, require_torch
from zstore._read.load_into import load_into
from zstore._read.reader import Checkpoint
from zstore._read.reader import open as open_checkpoint
from zstore._write.writer import SaveInfo, save
from zstore.errors import StateMismatchError, UnsupportedFormatError

HF = "hf"  # the metadata key: {"config": ..., "generation_config": ...}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError("zstore.hf needs transformers: pip install 'zstore[hf]'") from None
    return transformers


def save_pretrained(model: Any, url: str, storage_options: dict[str, Any] | None = None,
                    **options: Any) -> SaveInfo:
    """Save a ``PreTrainedModel``'s weights, config and generation config at ``url``;
    ``options`` go to ``zstore.save`` (``overwrite=True``, ``access=``, ``codec=``, ...)."""
    config = json.loads(model.config.to_json_string())
    config["architectures"] = [type(model).__name__]  # as transformers records it
    generation: Any = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation = json.loads(generation.to_json_string())
    else:
        generation = None
    metadata = {**options.pop("metadata", {}), **hf_metadata(config, generation)}
    return save(model.state_dict(), url, storage_options=storage_options, metadata=metadata,
                **options)


def hf_metadata(config: dict[str, Any], generation: dict[str, Any] | None) -> dict[str, Any]:
    """What a checkpoint converted from a Hugging Face folder records of its config."""
    hf: dict[str, Any] = {"config": config}
    if generation is not None:
        hf["generation_config"] = generation
    return {HF: hf}


def from_pretrained(url: str, storage_options: dict[str, Any] | None = None,
                    model_class: Any = None, *, config: Any = None, device: Any = "cpu",
                    strict: bool = False) -> Any:
    """A ready model (eval mode) from the checkpoint at ``url``: built from its config (or
    ``config=``) as ``model_class`` (default: the config's first architecture, else
    ``AutoModel``), parameters on the meta device, then filled in place with the stored
    weights, in the stored dtype, on ``device``; tied weights re-tied, non-persistent
    buffers as the model builds them.

    A parameter the checkpoint lacks is an error (``StateMismatchError``): it would hold
    uninitialized memory. Stored tensors the model does not have (an older checkpoint's
    ``position_ids``, say) are skipped with a warning, as transformers does, or with
    ``strict=True`` are an error."""
    torch = require_torch()
    transformers = _transformers()
    ckpt = open_checkpoint(url, storage_options=storage_options)
    hf = ckpt.metadata.get(HF) or {}
    if config is None:
        if "config" not in hf:
            raise UnsupportedFormatError(
                f"{url!r} records no Hugging Face config (it was not saved by "
                "zstore.hf.save_pretrained, nor converted from a folder with a config.json): "
                "pass config= (a PretrainedConfig or its dict)", url=url)
        config = hf["config"]
    if isinstance(config, dict):
        fields = dict(config)
        config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, names[0], None) if names else None
        model_class = model_class or transformers.AutoModel
    with _parameters_on_meta(torch):
        if isinstance(model_class, type) and issubclass(model_class, torch.nn.Module):
            model = model_class(config)
        else:  # an Auto class
            model = model_class.from_config(config)
    aliases: dict[int, list[str]] = {}  # a tied parameter's names: one stored is enough
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    stored = set(ckpt)
    missing = sorted(names[0] for names in aliases.values() if stored.isdisjoint(names))
    if missing or (strict and stored - set(model.state_dict())):
        unexpected = sorted(stored - set(model.state_dict()))
        raise StateMismatchError(
            f"{url!r} does not fit {type(model).__name__} (nothing was loaded): "
            + (f"{len(missing)} parameter(s) missing, e.g. {missing[:3]}" if missing else
               f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}"))
    _materialize(torch, model, ckpt, device, aliases)
    for module in model.modules():  # buffers as the model built them, where it will run
        for key, buffer in module._buffers.items():
            if buffer is not None and buffer.device != torch.device(device):
                module._buffers[key] = buffer.to(device)
    report = load_into(ckpt, model, strict=False)
    if report.unexpected_keys:
        warnings.warn(f"{url!r} holds {len(report.unexpected_keys)} tensor(s) that "
                      f"{type(model).__name__} does not have, skipped: "
                      f"{report.unexpected_keys[:5]}", stacklevel=2)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    if "generation_config" in hf and getattr(model, "generation_config", None) is not None:
        model.generation_config = transformers.GenerationConfig.from_dict(
            hf["generation_config"])
    return model.eval()


_BUILDING = threading.local()  # set on the thread building a model: others are untouched
_PATCH = threading.Lock()


@contextlib.contextmanager
def _parameters_on_meta(torch: Any) -> Iterator[None]:
    """While a model is built on this thread: every parameter moves to the meta device as
    it is registered (its initialization then costs nothing); buffers stay as the model
    makes them. Other threads building modules meanwhile get theirs as usual."""
    with _PATCH:
        if not getattr(torch.nn.Module.register_parameter, "_zstore", False):
            register = torch.nn.Module.register_parameter

            def on_meta(module: Any, name: str, param: Any) -> None:
                register(module, name, param)
                if (getattr(_BUILDING, "depth", 0) and param is not None
                        and param.device.type != "meta"):
                    module._parameters[name] = type(param)(
                        param.to("meta"), requires_grad=param.requires_grad)

            on_meta._zstore = True  # type: ignore[attr-defined]
            torch.nn.Module.register_parameter = on_meta
    _BUILDING.depth = getattr(_BUILDING, "depth", 0) + 1
    try:
        yield
    finally:
        _BUILDING.depth -= 1


def _materialize(torch: Any, model: Any, ckpt: Checkpoint, device: Any,
                 aliases: dict[int, list[str]]) -> None:
    """Give every meta parameter uninitialized memory on ``device``, in the dtype the
    checkpoint stores it in under any of its ``aliases`` (a tied parameter's names: one
    tensor for all of them)."""
    made: dict[int, Any] = {}
    stored_as = {key: numpy_to_torch(np.empty(0, ckpt[stored].dtype)).dtype
                 for key, names in aliases.items()
                 if (stored := next((n for n in names if n in ckpt), None)) is not None}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or param.device.type != "meta":
                continue
            if id(param) not in made:
                dtype = stored_as.get(id(param), param.dtype)
                made[id(param)] = type(param)(
                    torch.empty(param.shape, dtype=dtype, device=device),
                    requires_grad=param.requires_grad)
            module._parameters[name] = made[id(param)]


class _Slice:
    """One tensor, read lazily: ``[index]`` reads only the chunks it needs."""

    def __init__(self, tensor: Any) -> None:
        self._tensor = tensor

    def get_shape(self) -> list[int]:
        return list(self._tensor.shape)

    def get_dtype(self) -> str:
        return CODES.get(self._tensor.dtype, str(self._tensor.dtype))

    def __getitem__(self, index: Any) -> Any:
        return numpy_to_torch(np.require(self._tensor[index], requirements="C"))


class SafeOpen:
    """safetensors' ``safe_open(path, framework="pt")`` over a zstore checkpoint."""

    def __init__(self, url: str, framework: str = "pt",
                 storage_options: dict[str, Any] | None = None) -> None:
        if framework not in ("pt", "torch"):
            raise ValueError(f"framework must be 'pt', got {framework!r}")
        require_torch()
        self._ckpt = open_checkpoint(url, storage_options=storage_options)

    def __enter__(self) -> SafeOpen:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def keys(self) -> list[str]:
        return list(self._ckpt)

    def metadata(self) -> dict[str, str]:
        return {"format": "pt"}

    def get_slice(self, name: str) -> _Slice:
        return _Slice(self._ckpt[name])

    def get_tensor(self, name: str) -> Any:
        return self.get_slice(name)[...]
