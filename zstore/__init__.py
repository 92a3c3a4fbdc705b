"""zstore: checkpoints as chunked, compressed Zarr v3 arrays on any fsspec backend.

>>> import numpy as np, zstore
>>> _ = zstore.save({"w": np.eye(3, dtype="float32")}, "memory://doc/init", metadata={"step": 1})
>>> ckpt = zstore.open("memory://doc/init")
>>> ckpt["w"][0], ckpt.metadata
(array([1., 0., 0.], dtype=float32), {'step': 1})
"""

from zstore._convert import convert
from zstore._format.crypto import encryption_keys
from zstore._format.layout import Layout
from zstore._options import Settings, configure
from zstore._plan.access import split
from zstore._plan.planner import Plan, plan
from zstore._plan.profiles import BackendProfile
from zstore._read.reader import Checkpoint, LazyTensor, load, open
from zstore._series.manager import CheckpointManager
from zstore._series.mirror import Mirror
from zstore._storage.accounting import IOStats, io_stats
from zstore._version import __version__ as __version__
from zstore._write.writer import SaveInfo, save
from zstore.errors import (
    CheckpointCommittedError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CommitRaceLostError,
    CorruptCheckpointError,
    DeviceUnavailableError,
    EncryptionKeyError,
    ForeignObjectsError,
    IncompleteCheckpointError,
    InvalidKeyError,
    InvalidURLError,
    LeaseHeldError,
    LeaseLostError,
    NestedCheckpointError,
    PartialLoadError,
    RankFailedError,
    RetentionError,
    SaveTimeoutError,
    StateMismatchError,
    StorageAccessError,
    StorageFailedError,
    UnsupportedFormatError,
    UnsupportedTypeError,
    ZStoreError,
)

__all__ = [
    "BackendProfile",
    "Checkpoint",
    "CheckpointManager",
    "CheckpointCommittedError",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "CommitRaceLostError",
    "CorruptCheckpointError",
    "DeviceUnavailableError",
    "EncryptionKeyError",
    "ForeignObjectsError",
    "IOStats",
    "IncompleteCheckpointError",
    "InvalidKeyError",
    "InvalidURLError",
    "Layout",
    "LazyTensor",
    "LeaseHeldError",
    "LeaseLostError",
    "Mirror",
    "NestedCheckpointError",
    "PartialLoadError",
    "Plan",
    "RankFailedError",
    "RetentionError",
    "SaveInfo",
    "SaveTimeoutError",
    "Settings",
    "StateMismatchError",
    "StorageAccessError",
    "StorageFailedError",
    "UnsupportedFormatError",
    "UnsupportedTypeError",
    "ZStoreError",
    "configure",
    "convert",
    "encryption_keys",
    "io_stats",
    "load",
    "open",
    "plan",
    "save",
    "split",
]
