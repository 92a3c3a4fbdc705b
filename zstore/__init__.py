"""zstore: checkpoints as chunked, compressed Zarr v3 arrays on any fsspec backend.

>>> import numpy as np, zstore
>>> _ = zstore.save({"w": np.eye(3, dtype="float32")}, "memory://doc/init", metadata={"step": 1})
>>> ckpt = zstore.open("memory://doc/init")
>>> ckpt["w"][0], ckpt.metadata
(array([1., 0., 0.], dtype=float32), {'step': 1})
"""

__version__ = "0.1.0"

from zstore._plan.access import split
from zstore._storage.accounting import IOStats, io_stats
from zstore.errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DeviceUnavailableError,
    IncompleteCheckpointError,
    InvalidKeyError,
    InvalidURLError,
    LeaseLostError,
    PartialLoadError,
    SaveTimeoutError,
    StorageAccessError,
    StorageFailedError,
    UnsupportedFormatError,
    UnsupportedTypeError,
    StateMismatchError,
    ZStoreError,
)
from zstore._series.manager import CheckpointManager
from zstore._plan.planner import Plan, plan
from zstore._plan.profiles import BackendProfile
from zstore._read.reader import Checkpoint, LazyTensor, load, open
from zstore._write.writer import SaveInfo, save

__all__ = [
    "BackendProfile",
    "Checkpoint",
    "CheckpointManager",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DeviceUnavailableError",
    "IOStats",
    "IncompleteCheckpointError",
    "InvalidKeyError",
    "InvalidURLError",
    "LazyTensor",
    "LeaseLostError",
    "PartialLoadError",
    "Plan",
    "SaveInfo",
    "SaveTimeoutError",
    "StateMismatchError",
    "StorageAccessError",
    "StorageFailedError",
    "UnsupportedFormatError",
    "UnsupportedTypeError",
    "ZStoreError",
    "io_stats",
    "load",
    "open",
    "plan",
    "save",
    "split",
]
