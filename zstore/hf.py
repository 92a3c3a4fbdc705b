"""Hugging Face transformers models as zstore checkpoints (``pip install 'zstore[hf]'``).

>>> zstore.hf.save_pretrained(model, "s3://bucket/minilm")            # doctest: +SKIP
>>> model = zstore.hf.from_pretrained("s3://bucket/minilm")           # doctest: +SKIP

``save_pretrained`` keeps the weights (tied ones once), the config and the generation
config. ``from_pretrained`` builds the model with its parameters on the meta device and
fills them in place from the checkpoint: no random initialization, no second copy of the
weights, the stored dtype, tied weights re-tied, non-persistent buffers as the model
builds them. ``safe_open`` offers safetensors' ``safe_open`` protocol (``keys``,
``get_tensor``, ``get_slice(name)[...]``, ``get_shape``, ``get_dtype``) over a
checkpoint, so a tensor-parallel rank reads only its part. A Hugging Face folder
converted with ``zstore.convert`` keeps its ``config.json`` for ``from_pretrained`` too.
"""

from zstore._convert.pretrained import SafeOpen as safe_open
from zstore._convert.pretrained import from_pretrained, save_pretrained

__all__ = ["from_pretrained", "safe_open", "save_pretrained"]
