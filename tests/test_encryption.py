"""Client-side encryption: AES-256-GCM per chunk, bound to the array and chunk it was
sealed as; a wrong or missing key is a clear error, a changed chunk an error naming its
object, and the key is never stored."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import crc32c
import numpy as np
import pytest
import zarr

import zstore
from zstore._cli import main
from zstore._read.verify import verify
from zstore.errors import EncryptionKeyError

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
ROWS = zstore.Layout((25, 64), None, "none")  # one chunk per object: easy to tamper with


def _state() -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((100, 64)).astype("float32"),
            "b": np.arange(100 * 64, dtype="float32").reshape(100, 64),
            "ids": np.arange(1000, dtype="int64"), "step": 7}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("codec", ["none", "blosc", "zstd"])
@pytest.mark.parametrize("sharded", [False, True])
def test_an_encrypted_checkpoint_round_trips_whole_and_by_slice(tmp_path: Path, codec: str,
                                                                 sharded: bool) -> None:
    state = _state()
    layout = zstore.Layout((10, 64), (50, 64) if sharded else None, codec)
    zstore.save(state, str(tmp_path / "c"), encryption_key=KEY, layouts={"w": layout})
    ckpt = zstore.open(str(tmp_path / "c"), encryption_key=KEY)
    np.testing.assert_array_equal(ckpt["w"][33:71, 5:9], state["w"][33:71, 5:9])  # type: ignore[index]
    back = zstore.load(str(tmp_path / "c"), encryption_key=KEY)
    assert back["step"] == 7
    for name in ("w", "b", "ids"):
        np.testing.assert_array_equal(back[name], state[name])


def test_stored_objects_hold_neither_the_plaintext_nor_the_key(tmp_path: Path) -> None:
    marker = np.frombuffer(b"PLAINTEXT-MARKER" * 4096, dtype="uint8").copy()
    zstore.save({"m": marker}, str(tmp_path / "c"), encryption_key=KEY, codec="none")
    files = _files(tmp_path / "c")
    assert files  # the save wrote something
    assert not [k for k, v in files.items() if b"PLAINTEXT-MARKER" in v]
    assert not [k for k, v in files.items() if KEY in v or KEY.hex().encode() in v]
    plain = tmp_path / "plain"
    zstore.save({"m": marker}, str(plain), codec="none")
    assert [k for k, v in _files(plain).items() if b"PLAINTEXT-MARKER" in v]  # the control


def test_without_the_key_it_opens_but_reading_an_array_says_which_key(tmp_path: Path) -> None:
    zstore.save(_state(), str(tmp_path / "c"), encryption_key=KEY)
    ckpt = zstore.open(str(tmp_path / "c"))
    assert ckpt["w"].shape == (100, 64) and "ids" in ckpt  # names and shapes are not secret
    with pytest.raises(EncryptionKeyError, match="'w'.*encrypted.*key id 'fp-") as raised:
        ckpt["w"][0]
    assert raised.value.key_id is not None and raised.value.key_id.startswith("fp-")
    with pytest.raises(EncryptionKeyError):
        zstore.load(str(tmp_path / "c"))


def test_a_wrong_key_is_refused_on_open_without_showing_either_key(tmp_path: Path) -> None:
    zstore.save(_state(), str(tmp_path / "c"), encryption_key=KEY)
    with pytest.raises(EncryptionKeyError, match="not the one it was saved with") as raised:
        zstore.open(str(tmp_path / "c"), encryption_key=OTHER)
    text = str(raised.value)
    assert KEY.hex() not in text and OTHER.hex() not in text
    assert repr(KEY) not in text and repr(OTHER) not in text


@pytest.mark.parametrize("bad, error", [(b"short", ValueError), ("a" * 32, TypeError)])
def test_a_malformed_key_is_refused_before_anything_is_written(tmp_path: Path, bad: object,
                                                               error: type) -> None:
    with pytest.raises(error, match="32 bytes"):
        zstore.save(_state(), str(tmp_path / "c"), encryption_key=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()


def _tamper(path: Path, fix_crc: bool) -> None:
    data = bytearray(path.read_bytes())
    data[30] ^= 0x01  # a byte of the ciphertext
    if fix_crc:  # as an attacker would: the crc32c then passes, only the tag catches it
        data[-4:] = crc32c.crc32c(bytes(data[:-4])).to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fix_crc", [True, False])
def test_a_tampered_chunk_is_an_error_naming_its_object(tmp_path: Path, fix_crc: bool) -> None:
    state = _state()
    zstore.save(state, str(tmp_path / "c"), encryption_key=KEY, layouts={"w": ROWS})
    _tamper(tmp_path / "c" / "w" / "c" / "1" / "0", fix_crc)
    ckpt = zstore.open(str(tmp_path / "c"), encryption_key=KEY)
    np.testing.assert_array_equal(ckpt["w"][:25], state["w"][:25])  # type: ignore[index]
    with pytest.raises(zstore.CorruptCheckpointError, match="w/c/1/0") as raised:
        ckpt["w"][30]
    assert raised.value.key == "w/c/1/0"
    if fix_crc:
        assert "AES-GCM" in str(raised.value)


def test_a_chunk_moved_to_another_place_fails_to_decrypt(tmp_path: Path) -> None:
    state = _state()
    zstore.save(state, str(tmp_path / "c"), encryption_key=KEY,
                layouts={"w": ROWS, "b": ROWS}, stack=False)
    grid = tmp_path / "c" / "w" / "c"
    first, second = (grid / "0" / "0").read_bytes(), (grid / "1" / "0").read_bytes()
    (grid / "0" / "0").write_bytes(second)  # swapped within the array
    (grid / "1" / "0").write_bytes(first)
    other = tmp_path / "c" / "b" / "c" / "2" / "0"
    other.write_bytes((grid / "2" / "0").read_bytes())  # and one copied to another array
    ckpt = zstore.open(str(tmp_path / "c"), encryption_key=KEY)
    for name, row, key in (("w", 0, "w/c/0/0"), ("w", 30, "w/c/1/0"), ("b", 60, "b/c/2/0")):
        with pytest.raises(zstore.CorruptCheckpointError, match="AES-GCM") as raised:
            ckpt[name][row]
        assert raised.value.key == key


def test_zarr_python_reads_an_encrypted_array_given_the_key(tmp_path: Path) -> None:
    state = _state()
    zstore.save(state, str(tmp_path / "c"), encryption_key=KEY, layouts={"w": ROWS})
    with zstore.encryption_keys(KEY):
        group = zarr.open_group(str(tmp_path / "c"), mode="r")
        np.testing.assert_array_equal(group["w"][:], state["w"])
        np.testing.assert_array_equal(group["ids"][10:20], state["ids"][10:20])  # type: ignore[index]
    with pytest.raises(EncryptionKeyError, match="encryption_keys"):
        zarr.open_group(str(tmp_path / "c"), mode="r")["w"][:]


def test_zarr_python_refuses_to_write_an_encrypted_array(tmp_path: Path) -> None:
    zstore.save(_state(), str(tmp_path / "c"), encryption_key=KEY)
    with zstore.encryption_keys(KEY), pytest.raises(EncryptionKeyError, match="zstore.save"):
        zarr.open_array(str(tmp_path / "c" / "w"), mode="r+")[0] = 1.0


def test_zarr_python_finds_a_chunk_moved_to_another_array(tmp_path: Path) -> None:
    zstore.save(_state(), str(tmp_path / "c"), encryption_key=KEY,
                layouts={"w": ROWS, "b": ROWS}, stack=False)
    root = tmp_path / "c"
    (root / "b" / "c" / "0" / "0").write_bytes((root / "w" / "c" / "0" / "0").read_bytes())
    with zstore.encryption_keys(KEY), pytest.raises(ValueError, match="AES-GCM"):
        zarr.open_array(str(root / "b"), mode="r")[:]


def test_a_key_provider_is_asked_for_the_recorded_key_id(tmp_path: Path) -> None:
    asked: list[str | None] = []

    def provider(key_id: str | None) -> tuple[str, bytes]:
        asked.append(key_id)
        return "kms:projects/p/keys/ckpt/v3", KEY

    state = _state()
    zstore.save(state, str(tmp_path / "c"), encryption_key=provider)
    back = zstore.load(str(tmp_path / "c"), encryption_key=provider)
    np.testing.assert_array_equal(back["w"], state["w"])
    assert asked == [None, "kms:projects/p/keys/ckpt/v3"]
    root = json.loads((tmp_path / "c" / "zarr.json").read_bytes())
    record = root["attributes"]["zstore"]["encryption"]
    assert record["algorithm"] == "AES-256-GCM" and record["key_id"] == asked[1]
    with zstore.encryption_keys((asked[1], KEY)):  # the provider's name, lent to zarr
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "c" / "w"))[:], state["w"])


def test_recorded_hashes_are_keyed_and_incremental_saves_still_copy(tmp_path: Path) -> None:
    state = _state()
    zstore.save(state, str(tmp_path / "1"), encryption_key=KEY, layouts={"w": ROWS})
    zstore.save(state, str(tmp_path / "2"), encryption_key=KEY, layouts={"w": ROWS},
                base=str(tmp_path / "1"))
    hashes = json.loads((tmp_path / "2" / "zstore.hashes.json").read_bytes())
    assert hashes["algorithm"] == "hmac-sha256"
    plain = hashlib.sha256(np.ascontiguousarray(state["w"][:25]).tobytes()).hexdigest()  # type: ignore[index]
    assert hashes["objects"]["w/c/0/0"] != plain  # a plain hash would confirm a guess
    state["w"][0] += 1  # type: ignore[index]
    info = zstore.save(state, str(tmp_path / "3"), encryption_key=KEY, layouts={"w": ROWS},
                       base=str(tmp_path / "2"))
    assert info.copied_objects >= 3  # w's other three objects, b, ids
    np.testing.assert_array_equal(zstore.load(str(tmp_path / "3"), encryption_key=KEY)["w"],
                                  state["w"])


def test_an_incremental_save_under_another_key_copies_nothing(tmp_path: Path) -> None:
    state = _state()
    zstore.save(state, str(tmp_path / "1"), encryption_key=KEY, base=None)
    zstore.save(state, str(tmp_path / "2"), encryption_key=KEY, base=str(tmp_path / "1"))
    info = zstore.save(state, str(tmp_path / "3"), encryption_key=OTHER,
                       base=str(tmp_path / "2"))
    assert info.copied_objects == 0
    np.testing.assert_array_equal(zstore.load(str(tmp_path / "3"), encryption_key=OTHER)["b"],
                                  state["b"])


def test_verify_checks_an_encrypted_checkpoint_with_its_key(tmp_path: Path) -> None:
    zstore.save(_state(), str(tmp_path / "c"), encryption_key=KEY, layouts={"w": ROWS})
    assert verify(str(tmp_path / "c"), encryption_key=KEY).ok
    with pytest.raises(EncryptionKeyError, match="--key-file"):
        verify(str(tmp_path / "c"))
    _tamper(tmp_path / "c" / "w" / "c" / "2" / "0", fix_crc=True)
    report = verify(str(tmp_path / "c"), encryption_key=KEY)
    assert report.problems == ["w/c/2/0: damaged (fails its AES-GCM authentication)"]


@pytest.mark.filterwarnings("ignore:Sparse:UserWarning")  # torch's beta notes
def test_sparse_and_bf16_leaves_are_encrypted_too(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    dense = torch.zeros(50, 40)
    dense[3, 7], dense[40, 2] = 1.5, -2.0
    state = {"sp": dense.to_sparse_csr(), "h": torch.randn(16, 16).to(torch.bfloat16)}
    zstore.save(state, str(tmp_path / "c"), encryption_key=KEY)
    back = zstore.load(str(tmp_path / "c"), encryption_key=KEY)
    assert torch.equal(back["sp"].to_dense(), dense) and torch.equal(back["h"], state["h"])
    with pytest.raises(EncryptionKeyError):
        zstore.load(str(tmp_path / "c"))


def test_an_encrypted_checkpoint_on_s3_reads_lazily(s3: object) -> None:
    state = _state()
    url, options = s3.url("c"), s3.storage_options  # type: ignore[attr-defined]
    zstore.save(state, url, storage_options=options, encryption_key=KEY,
                layouts={"w": zstore.Layout((10, 64), (50, 64), "blosc")})
    ckpt = zstore.open(url, storage_options=options, encryption_key=KEY)
    np.testing.assert_array_equal(ckpt["w"][12:18], state["w"][12:18])  # type: ignore[index]
    with pytest.raises(EncryptionKeyError):
        zstore.open(url, storage_options=options, encryption_key=OTHER)


def test_the_key_is_never_in_a_repr_or_log(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    caplog.set_level("DEBUG")
    zstore.save(_state(), str(tmp_path / "c"), encryption_key=KEY)
    ckpt = zstore.open(str(tmp_path / "c"), encryption_key=KEY)
    shown = repr(ckpt) + repr(ckpt._cipher) + caplog.text  # type: ignore[attr-defined]
    assert KEY.hex() not in shown and repr(KEY) not in shown and "fp-" in repr(ckpt._cipher)  # type: ignore[attr-defined]


def test_the_same_data_under_the_same_key_is_sealed_with_a_fresh_nonce(tmp_path: Path) -> None:
    state = {"z": np.zeros((4, 64), "float32")}
    zstore.save(state, str(tmp_path / "1"), encryption_key=KEY, codec="none")
    zstore.save(state, str(tmp_path / "2"), encryption_key=KEY, codec="none")
    one, two = _files(tmp_path / "1")["z/c/0/0"], _files(tmp_path / "2")["z/c/0/0"]
    assert len(one) == len(two) == 4 * 64 * 4 + 36 + 4  # plaintext, seal, crc32c
    assert one[8:20] != two[8:20] and one[20:] != two[20:]  # same data, same key: new nonce


def test_os_urandom_keys_work(tmp_path: Path) -> None:
    key = os.urandom(32)
    zstore.save({"a": np.arange(3)}, str(tmp_path / "c"), encryption_key=bytearray(key))
    np.testing.assert_array_equal(zstore.load(str(tmp_path / "c"), encryption_key=key)["a"],
                                  np.arange(3))


def test_the_command_line_verifies_with_a_key_file_and_info_shows_the_key_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zstore.save(_state(), str(tmp_path / "c"), encryption_key=KEY, layouts={"w": ROWS})
    (tmp_path / "hex.key").write_text(KEY.hex() + "\n")
    (tmp_path / "raw.key").write_bytes(KEY)
    for key_file in ("hex.key", "raw.key"):
        assert main(["verify", str(tmp_path / "c"), "--key-file", str(tmp_path / key_file)]) == 0
    assert main(["info", str(tmp_path / "c")]) == 0
    shown = capsys.readouterr().out
    assert "encrypted AES-256-GCM, key id fp-" in shown and KEY.hex() not in shown
    (tmp_path / "other.key").write_bytes(OTHER)
    assert main(["verify", str(tmp_path / "c"), "--key-file", str(tmp_path / "other.key")]) != 0
    assert "not the one it was saved with" in capsys.readouterr().err


def test_convert_encrypts_rekeys_and_decrypts(tmp_path: Path) -> None:
    state = _state()
    zstore.save(state, str(tmp_path / "plain"))
    zstore.convert(str(tmp_path / "plain"), str(tmp_path / "sealed"), encryption_key=KEY)
    with pytest.raises(EncryptionKeyError):
        zstore.load(str(tmp_path / "sealed"))
    with pytest.raises(EncryptionKeyError, match="encryption_key="):
        zstore.convert(str(tmp_path / "sealed"), str(tmp_path / "nokey"))
    assert not (tmp_path / "nokey").exists()
    zstore.convert(str(tmp_path / "sealed"), str(tmp_path / "rekeyed"), encryption_key=KEY,
                   dst_encryption_key=OTHER)
    np.testing.assert_array_equal(
        zstore.load(str(tmp_path / "rekeyed"), encryption_key=OTHER)["w"], state["w"])
    with pytest.raises(ValueError, match="dst_encryption_key=False"):
        zstore.convert(str(tmp_path / "sealed"), str(tmp_path / "w.safetensors"),
                       encryption_key=KEY)
    zstore.convert(str(tmp_path / "sealed"), str(tmp_path / "w.safetensors"),
                   encryption_key=KEY, dst_encryption_key=False)
    from safetensors.numpy import load_file
    np.testing.assert_array_equal(load_file(str(tmp_path / "w.safetensors"))["b"], state["b"])


def test_a_manager_saves_incrementally_and_restores_under_its_key(tmp_path: Path) -> None:
    state = _state()
    with zstore.CheckpointManager(str(tmp_path / "run"), encryption_key=KEY) as manager:
        manager.save(1, state)
        state["w"][0] += 1  # type: ignore[index]
        info = manager.save(2, state)
        assert info.copied_objects >= 2  # b and ids: unchanged, copied under the same key
        step, back = manager.restore()
    assert step == 2
    np.testing.assert_array_equal(back["w"], state["w"])
    with pytest.raises(EncryptionKeyError):
        zstore.CheckpointManager(str(tmp_path / "run")).restore()


def test_a_key_provider_rotates_keys_between_steps(tmp_path: Path) -> None:
    keys = {"k1": KEY, "k2": OTHER}
    current = ["k1"]

    def provider(key_id: str | None) -> tuple[str, bytes]:
        name = current[0] if key_id is None else key_id
        return name, keys[name]

    state = _state()
    with zstore.CheckpointManager(str(tmp_path / "run"), encryption_key=provider) as manager:
        manager.save(1, state)
        current[0] = "k2"  # rotated: the next step is saved under the new key
        info = manager.save(2, state)
        assert info.copied_objects == 0  # nothing reused across keys
        for step in (1, 2):
            np.testing.assert_array_equal(manager.restore(step)[1]["w"], state["w"])
    assert zstore.open(str(tmp_path / "run" / "step-1")).encryption["key_id"] == "k1"  # type: ignore[index]
    assert zstore.open(str(tmp_path / "run" / "step-2")).encryption["key_id"] == "k2"  # type: ignore[index]


def test_a_mirror_holds_the_encrypted_bytes_and_restores_under_the_key(tmp_path: Path) -> None:
    state = _state()
    fast, slow = str(tmp_path / "fast"), str(tmp_path / "slow")
    with zstore.CheckpointManager(fast, encryption_key=KEY,
                                  mirrors=[zstore.Mirror(slow)]) as manager:
        manager.save(1, state)
    with pytest.raises(EncryptionKeyError):
        zstore.load(f"{slow}/step-1")
    shutil.rmtree(fast)  # the fast tier is lost
    step, back = zstore.CheckpointManager(fast, encryption_key=KEY,
                                          mirrors=[zstore.Mirror(slow)]).restore()
    assert step == 1
    np.testing.assert_array_equal(back["b"], state["b"])


@pytest.mark.parametrize("index", [np.s_[::7, 3], np.s_[95:5:-3, ::2], [70, 3, 3, 99, 0],
                                   np.s_[[98, 1], 5:9], np.array([True] * 50 + [False] * 50),
                                   np.s_[-1, ::-5]])
def test_strided_and_gathered_reads_of_an_encrypted_array(tmp_path: Path, index: object
                                                          ) -> None:
    state = _state()
    zstore.save(state, str(tmp_path / "c"), encryption_key=KEY,
                layouts={"w": zstore.Layout((10, 16), (50, 64), "zstd")})
    ckpt = zstore.open(str(tmp_path / "c"), encryption_key=KEY)
    np.testing.assert_array_equal(ckpt["w"].read(index), state["w"][index])  # type: ignore[index]


def test_a_gather_of_a_few_encrypted_rows_reads_their_chunks_not_the_table(s3: object) -> None:
    table = np.arange(10_000 * 64, dtype="float32").reshape(10_000, 64)
    url, options = s3.url("emb"), s3.storage_options  # type: ignore[attr-defined]
    zstore.save({"emb": table}, url, storage_options=options, encryption_key=KEY,
                layouts={"emb": zstore.Layout((100, 64), (10_000, 64), "none")})
    ckpt = zstore.open(url, storage_options=options, encryption_key=KEY)
    with zstore.io_stats() as io:
        rows = ckpt["emb"].read([9_000, 5, 4_321])
    np.testing.assert_array_equal(rows, table[[9_000, 5, 4_321]])
    assert io.bytes_read < 3 * 100 * 64 * 4 + 200_000  # three chunks and the shard index


def _recommit(root: Path, change: object) -> None:
    """Change the root zarr.json as someone with write access but no key could, and make
    the commit marker's plain hash match again."""
    document = json.loads((root / "zarr.json").read_bytes())
    change(document)  # type: ignore[operator]
    raw = json.dumps(document).encode()
    (root / "zarr.json").write_bytes(raw)
    marker = json.loads((root / "zstore.commit.json").read_bytes())
    marker["zarr_json_sha256"] = hashlib.sha256(raw).hexdigest()
    (root / "zstore.commit.json").write_bytes(json.dumps(marker).encode())


def _swap_leaves(document: dict) -> None:
    tree = document["attributes"]["zstore"]["tree"]["dict"]
    leaves = dict(tree)
    leaves["w"]["array"], leaves["b"]["array"] = leaves["b"]["array"], leaves["w"]["array"]


def _drop_encryption(document: dict) -> None:
    del document["attributes"]["zstore"]["encryption"]


@pytest.mark.parametrize("change", [_swap_leaves, _drop_encryption])
def test_metadata_changed_without_the_key_is_refused(tmp_path: Path, change: object) -> None:
    zstore.save(_state(), str(tmp_path / "c"), encryption_key=KEY, stack=False)
    zstore.open(str(tmp_path / "c"), encryption_key=KEY)  # the control: it opens
    _recommit(tmp_path / "c", change)
    zstore.open(str(tmp_path / "c"))  # the plain hash matches: without a key it opens
    with pytest.raises((zstore.CorruptCheckpointError, EncryptionKeyError)):
        zstore.open(str(tmp_path / "c"), encryption_key=KEY)


def test_an_array_left_in_the_clear_in_an_encrypted_checkpoint_is_refused(tmp_path: Path
                                                                           ) -> None:
    zstore.save(_state(), str(tmp_path / "c"), encryption_key=KEY, stack=False)
    zstore.save({"w": np.zeros((100, 64), "float32")}, str(tmp_path / "plain"))
    (tmp_path / "c" / "w" / "zarr.json").write_bytes(
        (tmp_path / "plain" / "w" / "zarr.json").read_bytes())
    # even with the manifest's own copy of w's document changed, the key's HMAC refuses it
    plain = json.loads((tmp_path / "plain" / "zarr.json").read_bytes())
    _recommit(tmp_path / "c", lambda d: d["consolidated_metadata"]["metadata"].update(
        w=plain["consolidated_metadata"]["metadata"]["w"]))
    with pytest.raises(zstore.CorruptCheckpointError, match="HMAC"):
        zstore.open(str(tmp_path / "c"), encryption_key=KEY)


def test_a_key_given_for_a_checkpoint_that_is_not_encrypted_is_refused(tmp_path: Path) -> None:
    zstore.save(_state(), str(tmp_path / "plain"))
    with pytest.raises(EncryptionKeyError, match="not encrypted"):
        zstore.load(str(tmp_path / "plain"), encryption_key=KEY)


def test_a_forged_empty_index_entry_is_an_error_not_zeros(tmp_path: Path) -> None:
    zstore.save(_state(), str(tmp_path / "c"), encryption_key=KEY,
                layouts={"w": zstore.Layout((10, 64), (100, 64), "none")})
    shard = tmp_path / "c" / "w" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    index = len(data) - (16 * 10 + 4)
    data[index:index + 16] = b"\xff" * 16  # chunk 0: "never written"
    data[-4:] = crc32c.crc32c(bytes(data[index:-4])).to_bytes(4, "little")
    shard.write_bytes(bytes(data))
    with pytest.raises(zstore.CorruptCheckpointError, match="w/c/0/0"):
        zstore.open(str(tmp_path / "c"), encryption_key=KEY)["w"][3]


def test_the_key_opens_its_checkpoint_whatever_id_it_was_saved_under(tmp_path: Path) -> None:
    state = _state()
    zstore.save(state, str(tmp_path / "c"), encryption_key=lambda _: ("kms-key-1", KEY))
    for source in (KEY, lambda _: KEY, lambda _: ("another-name", KEY)):
        back = zstore.load(str(tmp_path / "c"), encryption_key=source)  # type: ignore[arg-type]
        np.testing.assert_array_equal(back["w"], state["w"])


def test_keys_lent_in_nested_blocks_come_back_in_order(tmp_path: Path) -> None:
    zstore.save({"w": np.arange(4.0)}, str(tmp_path / "c"), encryption_key=lambda _: ("k", KEY))
    array = str(tmp_path / "c" / "w")
    with zstore.encryption_keys(("k", KEY)):
        with zstore.encryption_keys(("k", OTHER)):
            pass
        np.testing.assert_array_equal(zarr.open_array(array, mode="r")[:], np.arange(4.0))
