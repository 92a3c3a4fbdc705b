"""Storage: the one place a URL becomes a store, and everything that talks to it.

``location.resolve`` turns a URL and ``storage_options`` into a ``Location``
on one backend class (local disk, S3, any other fsspec filesystem), chosen
once; foreign errors are mapped to zstore's by type here. Also: the
compare-and-swap the lease relies on (``conditional``), the write gate that
fences a save's writes (``gate``), request and byte counters
(``accounting``), the shard-index cache of an open checkpoint
(``index_cache``), measuring a backend into a profile (``calibrate``), and S3 reads
through obstore where it serves (``s3_reads``).
"""

# What the other boxes and the tests use of storage. Not the S3 backend: a local save must
# not import an S3 client (location.resolve imports it for s3:// URLs only).
from zstore._storage.accounting import CountingStore
from zstore._storage.backend import FsspecBackend, open_store
from zstore._storage.conditional import get_versioned, remove, replace
from zstore._storage.failures import RejectedOptions, is_precondition_failure, translate
from zstore._storage.location import Location, resolve
from zstore._storage.s3_reads import obstore_config

__all__ = [
    "CountingStore", "FsspecBackend", "Location", "RejectedOptions", "get_versioned",
    "is_precondition_failure", "obstore_config", "open_store", "remove", "replace", "resolve",
    "translate",
]
