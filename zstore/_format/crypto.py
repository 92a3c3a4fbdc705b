"""Client-side encryption of chunks: AES-256-GCM, a fresh nonce per chunk, bound to its place.

An encrypted chunk is its number (8 bytes, little-endian), a random 12-byte nonce, then the
ciphertext of its encoded bytes (after compression: ciphertext does not compress) and
GCM's 16-byte tag: 36 bytes more than the plaintext. The associated data is the codec's
name, the array's path in the checkpoint and the chunk's number (its C-order position in
the array's grid of inner chunks), so a chunk copied to another array, or (in zstore's
reader, which knows each chunk's number) to another place in its array, fails to decrypt
instead of passing for data. A chunk is the unit: a lazy slice decrypts only the chunks it
reads, and an unchanged object copied by an incremental save or a mirror is the same
ciphertext under the same key and path, so it stays valid.

It is a Zarr v3 codec (``zstore.aes_gcm``, between the compressor and the ``crc32c``), so
zarr-python reads an encrypted array once zstore is imported and the key lent with
``zstore.encryption_keys(key)``. zarr-python's codecs are not told a chunk's place, so
there it checks the number the chunk carries; zarr-python cannot write such an array
(the number would be unknown): zstore writes it.

Keys: 32 bytes, or a provider called with the recorded key id (None when saving) that
returns the key or ``(key_id, key)``, for keys held in a KMS. A checkpoint records the key
id (by default a fingerprint: an HMAC of a constant under the key, which reveals nothing
of it) and a check value, so a wrong key is refused on open with the ids, never decrypted
to garbage; the key itself is never stored, logged or put in an error. The object hashes
of an encrypted checkpoint are HMAC-SHA256 under a key derived from it: plain hashes of
the plaintext would let anyone test a guess of a tensor's contents.

AES-GCM runs at 2-6 GB/s a core here and releases the GIL (two threads: 1.6x), so the
data path decrypts chunks in its worker threads as it decompresses them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import BytesBytesCodec
from zarr.registry import register_codec

from zstore._format.names import COMMIT_MARKER
from zstore.errors import CorruptCheckpointError, EncryptionKeyError

if TYPE_CHECKING:
    from typing import Self

    from zarr.abc.buffer import Buffer

CODEC = "zstore.aes_gcm"
ALGORITHM = "AES-256-GCM"
KEY_BYTES = 32
_NUMBER, _NONCE, _TAG = 8, 12, 16
OVERHEAD = _NUMBER + _NONCE + _TAG  # bytes an encrypted chunk adds to its plaintext

# A key (32 bytes), or a provider called with the recorded key id (None when saving)
# returning the key or (key id, key).
KeySource = bytes | bytearray | memoryview | Callable[[str | None], bytes | tuple[str, bytes]]


class ChunkAuthenticationError(ValueError):
    """A chunk failed AES-GCM authentication: changed after the save, or moved from
    another place. ``key`` names its object, ``number`` the chunk."""

    def __init__(self, key: str, number: int) -> None:
        super().__init__(f"chunk {number} of {key!r} failed AES-GCM authentication")
        self.key, self.number = key, number


@dataclass(frozen=True, repr=False)
class Cipher:
    """One key, ready to seal and open chunks; its ``repr`` shows the id, never the key."""

    key_id: str
    check: str  # the key's fingerprint: tells a wrong key from the right one
    _aead: Any
    _hash_key: bytes
    _manifest_key: bytes

    def __repr__(self) -> str:
        return f"Cipher(key_id={self.key_id!r})"

    def seal(self, plain: Any, path: str, number: int) -> bytearray:
        """``plain`` (any buffer) encrypted as chunk ``number`` of the array at ``path``."""
        data = memoryview(plain).cast("B")
        out = bytearray(OVERHEAD + len(data))
        out[:_NUMBER] = number.to_bytes(_NUMBER, "little")
        nonce = os.urandom(_NONCE)
        out[_NUMBER:_NUMBER + _NONCE] = nonce
        self._aead.encrypt_into(nonce, data, _associated(path, number),
                                memoryview(out)[_NUMBER + _NONCE:])
        return out

    def open(self, sealed: Any, path: str, number: int | None, key: str,
             into: Any = None) -> Any:
        """The plaintext of a sealed chunk, expected to be chunk ``number`` of ``path``
        (None: whatever number it carries), decrypted into ``into`` where given (a writable
        buffer of exactly its size: a chunk lands in the caller's array with no copy);
        ``ChunkAuthenticationError`` naming object ``key`` where it is not exactly what was
        sealed there."""
        data = memoryview(sealed).cast("B")
        carried = int.from_bytes(data[:_NUMBER], "little") if len(data) >= _NUMBER else -1
        expected = carried if number is None else number
        if len(data) < OVERHEAD or carried != expected or (
                into is not None and len(into) != len(data) - OVERHEAD):
            raise ChunkAuthenticationError(key, expected)
        nonce, body = bytes(data[_NUMBER:_NUMBER + _NONCE]), data[_NUMBER + _NONCE:]
        try:
            if into is None:
                return self._aead.decrypt(nonce, body, _associated(path, expected))
            self._aead.decrypt_into(nonce, body, _associated(path, expected), into)
            return into
        except Exception as e:  # cryptography's InvalidTag
            if type(e).__name__ != "InvalidTag":
                raise
            raise ChunkAuthenticationError(key, expected) from None

    def digest(self, data: Any) -> str:
        """The keyed hash (HMAC-SHA256) an encrypted checkpoint records of an object's box."""
        return hmac.new(self._hash_key, data, hashlib.sha256).hexdigest()

    def vouch(self, root: bytes) -> str:
        """The HMAC the commit marker keeps of the root ``zarr.json``: the manifest (tree,
        array documents, inline values, metadata) cannot be changed, nor the record of
        encryption removed, by anyone without the key, as a plain hash can be."""
        return hmac.new(self._manifest_key, root, hashlib.sha256).hexdigest()

    def record(self) -> dict[str, str]:
        """What the manifest keeps: which algorithm, which key (its id and check value)."""
        return {"algorithm": ALGORITHM, "key_id": self.key_id, "key_check": self.check}


def _associated(path: str, number: int) -> bytes:
    return b"".join((CODEC.encode(), b"\0", path.encode(), b"\0",
                     number.to_bytes(_NUMBER, "little")))


def _derive(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"zstore " + purpose, hashlib.sha256).digest()


def make_cipher(source: KeySource, key_id: str | None = None, *, where: str = "") -> Cipher:
    """The ``Cipher`` of ``source``: a key, or a provider asked for ``key_id`` (None: the
    key to save with). ``TypeError``/``ValueError`` for a malformed key, never showing it."""
    name = None
    value: Any = source
    if callable(source):
        value = source(key_id)
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            name, value = value
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"encryption_key{where} must be {KEY_BYTES} bytes or a provider "
                        f"returning them, got a {type(value).__name__}")
    key = bytes(value)
    if len(key) != KEY_BYTES:
        raise ValueError(f"encryption_key{where} must be {KEY_BYTES} bytes (AES-256), got "
                         f"{len(key)} bytes; make one with os.urandom({KEY_BYTES})")
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # pragma: no cover - the extra is installed wherever tests run
        raise ImportError("encryption needs the 'cryptography' package: "
                          "pip install 'zstore[encryption]'") from None
    check = _derive(key, b"key check").hex()[:16]
    return Cipher(name or f"fp-{check}", check, AESGCM(key), _derive(key, b"box hashes"),
                  _derive(key, b"manifest"))


def cipher_for(record: dict[str, Any] | None, source: KeySource | None, url: str,
               root: bytes, vouched: Any) -> Cipher | None:
    """The cipher that reads a checkpoint whose manifest records ``record`` (None: not
    encrypted), once it vouches for ``root`` (the root ``zarr.json``) as the commit
    marker's HMAC ``vouched`` says; None where no key was given (its arrays then refuse
    to be read, naming the key id they need).

    Raises:
        EncryptionKeyError: the key given is not the one the checkpoint was saved with, or
            a key was given for a checkpoint that is not encrypted (which would otherwise
            read a checkpoint whose record of encryption was removed, unprotected).
        CorruptCheckpointError: the manifest is not the one saved under the key.
    """
    if source is None:
        return None
    if record is None:
        raise EncryptionKeyError(
            f"{url!r} is not encrypted, but an encryption_key was given: open it without "
            "one if that is expected (a checkpoint saved without a key), else its metadata "
            "was replaced", url=url)
    recorded = str(record.get("key_id", ""))
    cipher = make_cipher(source, recorded)
    if not hmac.compare_digest(cipher.check, str(record.get("key_check", ""))):
        raise EncryptionKeyError(
            f"the encryption key given for {url!r} is not the one it was saved with "
            f"(it was saved with key id {recorded!r}; the key given has id "
            f"{cipher.key_id!r}): pass that key, or a provider returning it",
            url=url, key_id=recorded)
    if not isinstance(vouched, str) or not hmac.compare_digest(cipher.vouch(root), vouched):
        raise CorruptCheckpointError(
            f"the metadata of {url!r} is not what was saved under its key (its commit "
            "marker's HMAC does not match): it was changed after the save committed",
            url=url, key=COMMIT_MARKER)
    return replace(cipher, key_id=recorded)  # the right key, under whatever id it came


def key_needed(url: str, key_id: str, to: str, array: str | None = None
               ) -> EncryptionKeyError:
    """The error of work on an encrypted checkpoint (or ``array`` of it) opened without
    its key: it says which key, and what ``to`` do with it."""
    what = f"array {array!r} of {url!r}" if array is not None else repr(url)
    return EncryptionKeyError(
        f"{what} is encrypted (key id {key_id!r}); pass encryption_key= (the 32-byte key, "
        f"or a provider returning it) to {to}", url=url, key_id=key_id)


# ---- the Zarr v3 codec, for zarr-python readers -------------------------------------

_lent: dict[str, list[Cipher]] = {}  # key id -> the ciphers lent under it, newest last
_lent_lock = threading.Lock()


@contextmanager
def encryption_keys(*keys: bytes | tuple[str, bytes]) -> Iterator[None]:
    """Lend keys to zarr-python (and any reader going through zarr's codecs) inside the
    block: each a 32-byte key, or ``(key_id, key)`` for one saved under a provider's id.

    Example:
        >>> import os, numpy as np, zarr, zstore
        >>> key = os.urandom(32)
        >>> _ = zstore.save({"w": np.arange(4.0)}, "memory://doc/sealed", encryption_key=key)
        >>> with zstore.encryption_keys(key):
        ...     zarr.open_group(zstore.open("memory://doc/sealed")._location.store)["w"][:]
        array([0., 1., 2., 3.])
    """
    ciphers = [make_cipher(_named(k) if isinstance(k, tuple) else k) for k in keys]
    with _lent_lock:
        for c in ciphers:
            _lent.setdefault(c.key_id, []).append(c)
    try:
        yield
    finally:
        with _lent_lock:  # each block takes back its own, whatever others lent meanwhile
            for c in ciphers:
                held = _lent[c.key_id]
                held.remove(c)
                if not held:
                    del _lent[c.key_id]


def _named(named: tuple[str, bytes]) -> Callable[[str | None], tuple[str, bytes]]:
    return lambda _: named


@dataclass(frozen=True)
class AesGcmCodec(BytesBytesCodec):
    """``zstore.aes_gcm``: decrypts zstore's encrypted chunks for zarr-python readers."""

    path: str = ""
    key_id: str = ""
    is_fixed_size = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        config = data.get("configuration")
        if data.get("name") != CODEC or not isinstance(config, dict):
            raise ValueError(f"not a {CODEC} codec: {data!r}")
        return cls(path=str(config["path"]), key_id=str(config["key_id"]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC, "configuration": {"path": self.path, "key_id": self.key_id}}

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: Any) -> int:
        return input_byte_length + OVERHEAD

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: Any) -> Buffer:
        with _lent_lock:
            held = _lent.get(self.key_id, [None])[-1]
        if held is None:
            raise EncryptionKeyError(
                f"array {self.path!r} is encrypted (key id {self.key_id!r}); read it inside "
                "`with zstore.encryption_keys(key):`", key_id=self.key_id)
        plain = held.open(chunk_bytes.as_numpy_array(), self.path, None, self.path)
        decrypted: Buffer = chunk_spec.prototype.buffer.from_array_like(
            np.frombuffer(plain, np.uint8))
        return decrypted

    async def _encode_single(self, chunk_bytes: Buffer, chunk_spec: Any) -> Buffer:
        raise EncryptionKeyError(
            f"array {self.path!r} is encrypted by zstore; zarr cannot write it (a codec is "
            "not told which chunk it encodes): save it with zstore.save(..., encryption_key=)")


def codec_json(path: str, key_id: str) -> dict[str, Any]:
    return AesGcmCodec(path, key_id).to_dict()


register_codec(CODEC, AesGcmCodec)
