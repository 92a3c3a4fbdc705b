"""The names of zstore's own objects are the on-disk format: a rename would leave every
existing checkpoint unreadable, so they are pinned here as docs/format.md spells them."""

import fsspec
import numpy as np

import zstore
from zstore._format import COMMIT_MARKER, HASHES, LEASE, ROOT, object_key, step_name, step_of


def test_the_names_are_those_docs_format_md_gives():
    assert (ROOT, COMMIT_MARKER, LEASE, HASHES) == (
        "zarr.json", "zstore.commit.json", "zstore.lease.json", "zstore.hashes.json")
    assert object_key("layers/0/w", (2, 0)) == "layers/0/w/c/2/0"
    assert step_name(12) == "step-12" and step_of("step-12") == 12
    assert step_of("step-012") is None and step_of("step-") is None


def test_a_saved_checkpoint_holds_exactly_these_objects():
    url = "memory://names/one"
    zstore.save({"w": np.arange(8.0).reshape(2, 4), "step": 3}, url)
    fs = fsspec.filesystem("memory")
    found = sorted(p.removeprefix("/names/one/") for p in fs.find("/names/one"))
    fs.rm("/names/one", recursive=True)
    assert found == sorted([ROOT, COMMIT_MARKER, HASHES, "w/zarr.json", object_key("w", (0, 0))])
