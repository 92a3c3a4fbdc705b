"""Storage: the one place a URL becomes a store, and everything that talks to it.

``location.resolve`` turns a URL and ``storage_options`` into a ``Location``
on one backend class (local disk, S3, any other fsspec filesystem), chosen
once; foreign errors are mapped to zstore's by type here. Also: the
compare-and-swap the lease relies on (``conditional``), the write gate that
fences a save's writes (``gate``), request and byte counters
(``accounting``), the shard-index cache of an open checkpoint
(``index_cache``), and measuring a backend into a profile (``calibrate``).
"""
