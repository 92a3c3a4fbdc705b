"""Conversion: what users arrive with (safetensors, torch files, DCP, HDF5, another zstore
checkpoint) opened lazily by ``sources``, written as a zstore checkpoint by the save, or
as safetensors by ``export``; ``convert`` chooses."""

from zstore._convert.conversion import convert
from zstore._convert.sources import Source, open_source

__all__ = ["Source", "convert", "open_source"]
