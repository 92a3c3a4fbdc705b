"""Writing: a tree saved as one committed checkpoint, or nothing at all.

``writer.save`` validates, takes the URL's lease (``lease``: one writer per
URL, renewed, fenced, taken over when abandoned), clears what it replaces
(``delete``: commit marker first), writes every array concurrently with the
planned layout, copies what an incremental save may reuse (``incremental``),
and commits last. Never imports the read box: a save reads only what it
replaces and its base's hashes.
"""

# What the other boxes and the tests use of writing.
from zstore._write.lease import Lease

__all__ = ["Lease"]
