"""timm convolutional trunks (``trunk.kind=timm`` with a CNN): images, depth and spectrograms.

timm's ``test_resnet`` (372k weights) stands in for ResNets and friends: the same classes, stages and
coarse parameter groups.
"""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models._hub import save_for_hf

from bindspace.errors import ConfigError
from bindspace.modalities import get_modality
from bindspace.models.model import BindSpaceModel
from bindspace.nn.adapters import trunk_layout
from bindspace.nn.pretrained import TimmCNNTrunk
from bindspace.training.optim import lr_scales

TINY_IMAGE = {"size": 32, "patch_size": 8}
TINY_AUDIO = {"clip_seconds": 1.0, "num_mel_bins": 32, "target_frames": 48, "patch_stride": 16}


def cnn_config(modality: str, trunk: dict | None = None, **extra):
    inputs = {"image": TINY_IMAGE, "depth": TINY_IMAGE, "audio": TINY_AUDIO}[modality]
    return get_modality(modality).config_from_dict(
        {"input": inputs, "trunk": {"kind": "timm", "name": "test_resnet", **(trunk or {})}, **extra}
    )


def test_cnn_encodes_images_depth_and_spectrograms():
    model = BindSpaceModel({m: cnn_config(m) for m in ("image", "depth", "audio")}, embed_dim=16)
    g = torch.Generator().manual_seed(0)
    for m in model.modalities:
        trunk = model.trunks[m]
        assert isinstance(trunk, TimmCNNTrunk)
        x = get_modality(m).dummy_input(model.configs[m].input, 3, g)
        emb = model.encode(m, x)
        assert emb.shape == (3, 16)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    # The first conv takes the modality's channels: 3 for RGB, 1 for depth and a log-mel spectrogram.
    assert model.trunks["image"].model.conv1[0].in_channels == 3
    assert model.trunks["depth"].model.conv1[0].in_channels == 1
    assert model.trunks["audio"].model.conv1[0].in_channels == 1
    # One pooled token, so the head's cls pooling takes the CNN's global-average feature.
    tokens, mask = model.preprocessors["image"](torch.randn(2, 3, 32, 32))
    assert model.trunks["image"](tokens, mask).shape == (2, 1, model.trunks["image"].model.num_features)


def test_cnn_layout_is_timms_stages_and_partial_unlocking_freezes_batch_norm():
    model = BindSpaceModel({"image": cnn_config("image", {"unlocked_layers": 1})}, embed_dim=16)
    trunk = model.trunks["image"]
    layout = trunk_layout(trunk)
    assert layout.depth == 4  # layer1..layer4; the stem is layer 0
    assert layout.layer_id("model.conv1.0.weight") == 0
    assert layout.layer_id("model.layer2.0.conv1.weight") == 2
    assert layout.layer_id("model.layer4.0.bn2.bias") == 4
    training = {n for n, p in trunk.named_parameters() if p.requires_grad}
    assert training and all(n.startswith("model.layer4.") for n in training)
    # The locked stages' batch norms keep their running statistics while the model trains.
    model.train()
    locked, unlocked = trunk.model.layer1[0].bn1, trunk.model.layer4[0].bn1
    assert not locked.training and unlocked.training
    before = locked.running_mean.clone(), unlocked.running_mean.clone()
    model.encode("image", torch.randn(4, 3, 32, 32) * 3 + 1)
    assert torch.equal(locked.running_mean, before[0])
    assert not torch.equal(unlocked.running_mean, before[1])
    # Layer decay reads the same layout: lr * decay ** (5 - layer), the stem at layer 0, the head at 5.
    scales = lr_scales(model, layer_decay=0.5)
    assert scales["trunks.image.model.conv1.0.weight"] == (0.5**5, "image.embed")
    assert scales["trunks.image.model.layer2.0.conv1.weight"] == (0.5**3, "image.block1")
    assert scales["trunks.image.model.layer4.0.conv1.weight"] == (0.5, "image.block3")
    assert scales["heads.image.proj.weight"] == (1.0, "image.head")


def test_lora_on_cnn_convs_trains_only_the_adapter_and_starts_at_the_base():
    adapter = {"kind": "lora", "r": 2, "alpha": 4, "target": ["conv2"]}
    base = BindSpaceModel({"image": cnn_config("image")}, embed_dim=16).eval()
    adapted = BindSpaceModel({"image": cnn_config("image", {"adapter": adapter})}, embed_dim=16).eval()
    missing = adapted.load_state_dict(base.state_dict(), strict=False)
    assert all("lora_" in k or "base_layer" in k for k in missing.missing_keys)
    x = torch.randn(2, 3, 32, 32)
    # peft initialises B = 0: the adapted model starts exactly where the base is.
    for name, p in adapted.trunks["image"].named_parameters():
        if "base_layer" in name:
            plain = name.replace(".base_layer", "")
            p.data.copy_(dict(base.trunks["image"].named_parameters())[plain].data)
    torch.testing.assert_close(adapted.encode("image", x), base.encode("image", x))
    training = [n for n, p in adapted.trunks["image"].named_parameters() if p.requires_grad]
    assert training and all("lora_" in n for n in training)


def test_cnn_architecture_rebuilds_without_its_source(tmp_path):
    folder = tmp_path / "cnn"
    saved = timm.create_model("test_resnet", num_classes=0, in_chans=1)
    save_for_hf(saved, str(folder), safe_serialization=True)
    cfg = cnn_config("audio", {"name": None, "pretrained": str(folder), "freeze": True})
    model = BindSpaceModel({"audio": cfg}, embed_dim=16).eval()
    torch.testing.assert_close(model.trunks["audio"].model.layer3[0].conv1.weight, saved.layer3[0].conv1.weight)
    recorded = model.architectures()["audio"]
    assert recorded["kind"] == "timm" and recorded["architecture"] == "test_resnet"
    # A checkpoint's reader builds the recorded architecture with random weights, never reading the folder.
    rebuilt = BindSpaceModel({"audio": cfg}, embed_dim=16, architectures={"audio": recorded}).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = get_modality("audio").dummy_input(cfg.input, 2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(rebuilt.encode("audio", x), model.encode("audio", x))
    # Frozen and cls-pooled: the pooled feature is cacheable, and finishing from it is the same encoding.
    assert model.frozen_modalities() == ["audio"]
    torch.testing.assert_close(
        model.encode_from_features("audio", model.encode_features("audio", x)), model.encode("audio", x)
    )


@pytest.mark.parametrize(
    ("modality", "trunk", "match"),
    [
        ("imu", {"kind": "timm", "name": "test_resnet"}, r"modalities\.imu\.trunk\.kind=timm needs a \(channels"),
        ("image", {"kind": "timm", "name": "test_resnet", "unlocked_layers": 9}, "unlocked_layers=9 but the timm"),
        ("image", {"kind": "timm", "name": "test_resnet", "adapter": {"target": ["qkv"]}}, "'qkv' matches no module"),
        ("image", {"kind": "timm", "name": "test_resnett"}, "'test_resnett' is no timm model; did you mean test_res"),
    ],
)
def test_cnn_config_errors_name_the_key(modality, trunk, match):
    cfg = get_modality(modality).config_from_dict({"trunk": trunk})
    with pytest.raises(ConfigError, match=match):
        BindSpaceModel({modality: cfg}, embed_dim=16)
