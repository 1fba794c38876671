"""Graph construction and config validation: bad input is named before any compute."""

from __future__ import annotations

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from bindspace.config import build_run_spec, parse_anchors
from bindspace.graph import build_edges
from bindspace.modalities import ConfigError

ALL = ["image", "text", "audio", "depth", "thermal", "imu"]


def test_image_star():
    assert build_edges(ALL, ["image"]) == [("image", m) for m in ALL[1:]]


def test_two_anchors_align_to_each_other_and_to_the_rest():
    edges = build_edges(ALL, ["image", "text"])
    assert edges[0] == ("image", "text")
    assert ("image", "audio") in edges and ("text", "audio") in edges
    assert len(edges) == 1 + 2 * 4


def test_explicit_edges_override_anchors_and_deduplicate():
    edges = build_edges(ALL, ["image"], [["image", "text"], ["text", "audio"], ["audio", "text"]])
    assert edges == [("image", "text"), ("text", "audio")]


@pytest.mark.parametrize(
    ("anchors", "edges", "message"),
    [
        (["smell"], None, "anchor: unknown modality 'smell'"),
        (["image"], [["image", "smell"]], "unknown modality 'smell'"),
        (["image"], [["image", "image"]], "self-edge"),
        (["image"], [["image"]], "must name two modalities"),
        ([], None, "at least one anchor"),
    ],
)
def test_graph_errors_name_the_fault(anchors, edges, message):
    with pytest.raises(ConfigError, match=message):
        build_edges(ALL, anchors, edges)


def test_anchor_not_among_modalities():
    with pytest.raises(ConfigError, match="'thermal' is not among the configured modalities"):
        build_edges(["image", "text"], ["thermal"])


def test_anchor_group_composes_one_or_several():
    assert parse_anchors(compose_config()["graph"]["anchors"]) == ["image"]
    assert parse_anchors(compose_config(["anchor=text"])["graph"]["anchors"]) == ["text"]
    assert parse_anchors(compose_config(["anchor=[image,text]"])["graph"]["anchors"]) == ["image", "text"]


def _spec(overrides):
    cfg = compose_config(overrides)
    return build_run_spec(OmegaConf.to_container(cfg, resolve=True))


def test_run_spec_from_real_config():
    spec = _spec([])
    assert spec.anchors == ["image"] and len(spec.edges) == 5
    assert spec.modalities["image"].input.size == 32  # tiny preset + test override
    scales = spec.build_loss().logit_scales
    assert float(scales["image|audio"]()) == pytest.approx(20.0) and float(scales["image|depth"]()) == pytest.approx(
        5.0
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=1", "data.batch_size must be an integer >= 2"),
        ("model.embed_dim=0", "model.embed_dim must be an integer >= 1"),
        ("graph.modalities=[image,smell]", "unknown modality 'smell'"),
        ("+modalities.image.trunk.widht=3", r"modalities.image.trunk: unknown key\(s\) \['widht'\]"),
        ("+loss.weights={image|smell:1.0}", "loss.weights: 'image|smell' is not a trained edge"),
        ("+optim.learning_rate=1", r"optim: unknown key\(s\) \['learning_rate'\]"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        _spec([override])


def _compose_plain(overrides):
    """The shipped config without the test-size overrides (the presets as users get them)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("bindspace.configs", version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", *overrides])
    return OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize(("preset", "width"), [("tiny", 128), ("small", 384), ("base", 768), ("huge", 1280)])
def test_every_model_preset_builds_all_six_encoders(preset, width):
    import torch

    spec = build_run_spec(_compose_plain([f"model={preset}"]))
    assert spec.modalities["image"].trunk.width == width
    with torch.device("meta"):  # shapes and wiring without allocating huge's weights
        model = spec.build_model()
    assert model.modalities == ALL and model.heads["audio"].proj.out_features == spec.embed_dim


def test_small_preset_encodes_every_modality():
    import torch

    from bindspace.modalities import get_modality

    spec = build_run_spec(_compose_plain(["model=small"]))
    model = spec.build_model().eval()
    gen = torch.Generator().manual_seed(0)
    for m, cfg in spec.modalities.items():
        with torch.no_grad():
            emb = model.encode(m, get_modality(m).dummy_input(cfg.input, 2, gen))
        assert emb.shape == (2, 384) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5), m


def test_gpu_ddp_trainer_preset_is_ddp_on_gpus_in_bf16():
    trainer = _compose_plain(["trainer=gpu_ddp", "trainer.num_nodes=4"])["trainer"]
    assert trainer["_target_"] == "lightning.Trainer"
    assert (trainer["accelerator"], trainer["strategy"], trainer["precision"]) == ("gpu", "ddp", "bf16-mixed")
    assert trainer["devices"] == 8 and trainer["num_nodes"] == 4
    assert trainer["use_distributed_sampler"] is False  # bindspace shards each global batch itself
