"""Every registered modality gets the same checks (parametrized over the registry, timm-style)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchaudio
from conftest_files import write_sample_files

from bindspace.modalities import ConfigError, get_modality, list_modalities
from bindspace.modalities.audio import AudioInput, kaldi_fbank
from bindspace.modalities.text import BOS, EOS, PAD, byte_tokenize
from bindspace.models.model import BindSpaceModel

SMALL_INPUT = {
    "image": {"size": 32, "patch_size": 8},
    "text": {"context_length": 24},
    "audio": {"clip_seconds": 0.5, "num_mel_bins": 32, "target_frames": 48},
    "depth": {"size": 32, "patch_size": 8},
    "thermal": {"size": 32, "patch_size": 8},
    "imu": {"length": 64},
}
SMALL_TRUNK = {"width": 32, "depth": 1, "heads": 2, "drop_path": 0.0}
EMBED_DIM = 16


def small_config(name: str):
    return get_modality(name).config_from_dict({"input": SMALL_INPUT.get(name, {}), "trunk": SMALL_TRUNK})


@pytest.fixture(scope="module")
def model() -> BindSpaceModel:
    torch.manual_seed(0)
    return BindSpaceModel({m: small_config(m) for m in list_modalities()}, EMBED_DIM)


def test_registry_holds_the_six_modalities():
    assert list_modalities() == ["image", "text", "audio", "depth", "thermal", "imu"]
    with pytest.raises(ConfigError, match="unknown modality 'smell'"):
        get_modality("smell")


@pytest.mark.parametrize("name", list_modalities())
def test_forward_shape_unit_norm_and_backward(model, name):
    spec, cfg = get_modality(name), model.configs[name]
    x = spec.dummy_input(cfg.input, 5, torch.Generator().manual_seed(1))
    model.zero_grad()
    emb = model.encode(name, x)
    assert emb.shape == (5, EMBED_DIM)
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))
    # A loss that depends on all embeddings must reach every trainable parameter of the encoder.
    (emb @ torch.randn(EMBED_DIM)).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if f".{name}." in f".{n}" and p.grad is None]
    assert not missing, f"no gradient reached {missing}"


@pytest.mark.parametrize("name", list_modalities())
def test_embeddings_depend_on_the_input(model, name):
    spec, cfg = get_modality(name), model.configs[name]
    g = torch.Generator().manual_seed(2)
    model.eval()
    with torch.no_grad():
        a = model.encode(name, spec.dummy_input(cfg.input, 4, g))
        b = model.encode(name, spec.dummy_input(cfg.input, 4, g))
    model.train()
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("name", list_modalities())
def test_unknown_config_key_is_named(name):
    with pytest.raises(ConfigError, match=rf"modalities\.{name}\.trunk: unknown key\(s\) \['widht'\]"):
        get_modality(name).config_from_dict({"trunk": {"widht": 3}})


def test_default_configs_follow_imagebind_huge():
    cfgs = {m: get_modality(m).default_config() for m in list_modalities()}
    assert (cfgs["image"].trunk.width, cfgs["image"].trunk.depth, cfgs["image"].input.patch_size) == (1280, 32, 14)
    assert (cfgs["audio"].input.num_mel_bins, cfgs["audio"].input.target_frames) == (128, 204)
    assert (cfgs["audio"].input.mean, cfgs["audio"].input.std) == (-4.268, 9.138)
    assert cfgs["audio"].input.patch_stride == 10
    assert cfgs["imu"].input.length == 2000 and cfgs["imu"].head.dropout == 0.5
    scales = {m: (c.logit_scale.init, c.logit_scale.learnable) for m, c in cfgs.items()}
    assert scales["audio"] == (20.0, False) and scales["depth"] == (5.0, False)
    assert scales["thermal"] == (10.0, False) and scales["imu"] == (5.0, False)
    assert scales["text"][1] is True


# ---- real files of every kind through the modality transforms ------------------------------------
FILE_CASES = [
    ("image", "image.png_rgb"),
    ("image", "image.jpg"),
    ("audio", "audio.wav_stereo_44k"),
    ("image", "image.webp_lossless"),
    ("audio", "audio.flac_mono_22k"),
    ("depth", "depth.npy_m"),
    ("depth", "depth.png16_mm"),
    ("thermal", "thermal.png8"),
    ("thermal", "thermal.png16"),
    ("imu", "imu.npy_time_major"),
    ("imu", "imu.npy_channel_major"),
    ("imu", "imu.csv_header"),
]


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    return write_sample_files(tmp_path_factory.mktemp("files"))


@pytest.mark.parametrize(("name", "key"), FILE_CASES)
def test_transform_of_a_real_file(model, sample_files, name, key):
    if key not in sample_files:
        pytest.fail(f"sample file {key} not written; have {sorted(sample_files)}")
    spec, cfg = get_modality(name), model.configs[name]
    x = spec.transform(spec.read(sample_files[key]), cfg.input)
    expected = spec.dummy_input(cfg.input, 1, torch.Generator())[0].shape
    assert x.shape == expected
    assert torch.isfinite(x).all() and x.float().std() > 0
    emb = model.encode(name, x[None])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))


def test_depth_file_becomes_disparity(sample_files):
    spec = get_modality("depth")
    cfg = dataclasses.replace(spec.default_config().input, size=8, mean=0.0, std=1.0)
    disparity = spec.transform(np.full((8, 8), 2.0, np.float32), cfg)
    torch.testing.assert_close(disparity, torch.full((1, 8, 8), 1 / 2.0))


def test_text_byte_tokenizer_marks_and_truncates():
    ids, mask = byte_tokenize("hé", 8)
    assert ids.tolist()[:5] == [BOS, ord("h") + 3, 0xC3 + 3, 0xA9 + 3, EOS] and ids[5:].eq(PAD).all()
    assert mask.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    ids, mask = byte_tokenize("x" * 100, 8)
    assert ids[-1] == EOS and mask.all()


def test_batched_fbank_equals_kaldi():
    wav = torch.randn(3, 8000) * 0.3
    ref = torch.stack(
        [
            torchaudio.compliance.kaldi.fbank(
                w[None],
                htk_compat=True,
                sample_frequency=16000,
                use_energy=False,
                window_type="hanning",
                num_mel_bins=64,
                dither=0.0,
                frame_length=25,
                frame_shift=10,
            )
            for w in wav
        ]
    )
    torch.testing.assert_close(kaldi_fbank(wav, 16000, 64), ref, rtol=1e-5, atol=1e-4)


def test_audio_resamples_mixes_and_pads():
    spec = get_modality("audio")
    cfg = AudioInput(clip_seconds=0.5, num_mel_bins=32, target_frames=48)
    stereo_44k = np.random.default_rng(0).standard_normal((2, 4410)).astype(np.float32) * 0.1  # 0.1 s
    x = spec.transform((stereo_44k, 44100), cfg)
    assert x.shape == (1, 1, 32, 48)  # the clip axis is declared (AudioSpec.clip_axis): always there
    # The file is shorter than a clip: the tail is silence, i.e. the floor of the log-mel.
    assert x[..., -5:].std() < 1e-3 < x[..., :5].std()
    multi = spec.transform((stereo_44k, 44100), dataclasses.replace(cfg, num_clips=3))
    assert multi.shape == (3, 1, 32, 48)
