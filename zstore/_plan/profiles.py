"""Backend profiles: what one request and one byte cost on a kind of storage.

The planner's cost model needs four facts about a backend: the latency of one
request, the bandwidth of one stream, how many requests usefully run at once,
and the object sizes it handles well. Built-in profiles cover a local disk,
``memory://`` and S3-like object stores; ``zstore calibrate URL`` measures a
real backend and stores its profile under the config directory, where it
replaces the built-in of the same name.

>>> from zstore._plan.profiles import profile_for
>>> profile_for("s3://bucket/run").name, profile_for("/tmp/ckpt").name
('s3', 'local')
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import fsspec

from zstore.errors import ZStoreError

MiB = 1 << 20


@dataclass(frozen=True)
class BackendProfile:
    """The cost of storage as the planner sees it.

    ``latency`` is seconds to the first byte of one request, ``bandwidth``
    bytes per second of one stream, ``concurrency`` the number of requests
    worth running at once. Shards aim at ``shard_target`` bytes and never
    exceed ``shard_max``. Prices (USD) are optional and only reported.
    ``in_process`` says the store keeps its objects in this process's memory
    (``memory://``): what a save stores stays resident, and a load follows the
    save in the same process. ``in_place`` says objects are files of this machine, read
    and written straight from and into the arrays' memory (local disk). ``get_copies`` and
    ``put_copies`` are the copies
    of an object's bytes the client library makes on top of zarr's when it
    downloads or uploads one (see ``costs.load_memory`` and ``save_memory``).
    ``cpu_speed`` is this machine's speed at zarr's per-byte work (copies and
    checksums) relative to the reference machine the time model's CPU rates
    come from (1.0); ``zstore calibrate`` measures it, so a calibrated profile
    predicts times for the machine it was measured on.
    """

    name: str
    latency: float
    bandwidth: float
    concurrency: int
    shard_target: int = 64 * MiB
    shard_max: int = 1024 * MiB
    price_per_get: float = 0.0
    price_per_put: float = 0.0
    price_per_gb: float = 0.0
    in_process: bool = False
    in_place: bool = False
    write_bandwidth: float | None = None
    get_copies: int = 0
    put_copies: int = 0
    cpu_speed: float = 1.0

    def seconds(self, requests: int, nbytes: int, serial: int = 1, writing: bool = False
                ) -> float:
        """Estimated time of ``requests`` moving ``nbytes``, ``serial`` of them one after another
        (uploads at ``write_bandwidth``, when ``writing`` and the profile has one).

        Requests overlap up to ``concurrency``; dependent ones (a shard index
        before the chunk it locates) add a round trip each.
        """
        if requests <= 0:
            return 0.0
        rounds = max(serial, math.ceil(requests / self.concurrency))
        streams = min(self.concurrency, requests)
        bandwidth = self.write_bandwidth if writing and self.write_bandwidth else self.bandwidth
        return rounds * self.latency + nbytes / (bandwidth * streams)

    @property
    def aggregate_bandwidth(self) -> float:
        """Bytes per second with every useful stream busy."""
        return self.bandwidth * self.concurrency

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "profile") -> BackendProfile:
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            profile = cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError) as e:
            raise ZStoreError(f"cannot read backend profile {source}: {e}") from None
        if (profile.latency < 0 or profile.bandwidth <= 0 or profile.concurrency < 1
                or not profile.cpu_speed > 0):
            raise ZStoreError(f"backend profile {source} has impossible values: {profile}")
        return profile


# Orders of magnitude, not promises: a page-cached NVMe disk, Python's memory
# filesystem (one thread, the GIL), and S3 from a nearby EC2 instance (about
# 30 ms to first byte, 80-90 MB/s per connection). Prices: S3 Standard, us-east-1.
# s3fs over aiohttp holds a download twice (the chunks it read, then their join) and an
# upload in about four copies more than zarr's own three (peak RSS of 95.7 MiB loaded
# from and saved to moto: 215-258 MiB and 192-220, against 146-208 and 77-135 locally).
BUILTIN: dict[str, BackendProfile] = {
    p.name: p for p in (
        BackendProfile("local", latency=1e-4, bandwidth=2e9, concurrency=8, in_place=True),
        BackendProfile("memory", latency=5e-6, bandwidth=4e9, concurrency=1, in_process=True),
        BackendProfile("s3", latency=0.03, bandwidth=85e6, concurrency=8,
                       shard_target=128 * MiB, price_per_get=4e-7, price_per_put=5e-6,
                       price_per_gb=0.09, get_copies=1, put_copies=4),
    )
}

_BY_PROTOCOL = {"file": "local", "local": "local", "memory": "memory"}


def config_dir() -> Path:
    """Where calibrated profiles live: ``$ZSTORE_CONFIG_DIR`` or ``~/.config/zstore``."""
    explicit = os.environ.get("ZSTORE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "zstore"


def _stored_path(name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return config_dir() / "profiles" / f"{safe}.json"


def store_profile(profile: BackendProfile) -> Path:
    """Keep ``profile`` for later plans; it replaces any profile of the same name."""
    path = _stored_path(profile.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile.to_json())
    return path


def named_profile(name: str) -> BackendProfile:
    """A stored (calibrated) profile by name, else the built-in one."""
    path = _stored_path(name)
    if path.is_file():
        return BackendProfile.from_json(path.read_text(), str(path))
    if name in BUILTIN:
        return BUILTIN[name]
    raise ZStoreError(
        f"unknown backend profile {name!r}: use one of {', '.join(sorted(BUILTIN))}, "
        f"a BackendProfile, or run `zstore calibrate URL --name {name}` first"
    )


def profile_for(url: str | None = None, backend: str | BackendProfile | None = None
                ) -> BackendProfile:
    """The profile to plan with: ``backend`` if given (a profile or a name), else by URL.

    Local paths map to ``local``, ``memory://`` to ``memory``, and every other
    protocol (s3, gcs, azure, http) to ``s3``, the generic object store.
    """
    if isinstance(backend, BackendProfile):
        return backend
    if backend is not None:
        return named_profile(backend)
    protocol = fsspec.core.split_protocol(url or "")[0] or "file"
    return named_profile(_BY_PROTOCOL.get(protocol, "s3"))
