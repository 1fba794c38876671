"""The transforms' fast paths give exactly the numbers of the straightforward computation (issue 14, part 7).

- ``spec.transform_batch`` on a rendered synthetic batch equals ``spec.transform`` per sample, collated,
  for every built-in modality, bit for bit;
- the in-place, buffer-reusing rewrites equal the textbook formulas they replaced (written out here):
  the Kaldi log-mel of audio, the normalisations of image, depth, thermal and IMU, byte tokenising;
- reused work buffers never leak into a returned tensor, and no transform writes into its input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bindspace.data.datamodule import scene_config
from bindspace.data.synthetic import SyntheticScenes
from bindspace.modalities import collate_inputs, get_modality
from bindspace.modalities.audio import AudioInput, _hypot_squared, _mel_banks, fbank_clips, kaldi_fbank
from bindspace.modalities.depth import DepthInput
from bindspace.modalities.image import ImageInput
from bindspace.modalities.imu import IMUInput
from bindspace.modalities.text import byte_tokenize, byte_tokenize_batch
from bindspace.modalities.thermal import ThermalInput

MODALITIES = ("image", "text", "audio", "depth", "thermal", "imu")
# The tiny preset (the default training config) and a smaller geometry, as the test configs use.
GEOMETRIES = {
    "tiny": {},
    "small_inputs": {
        "image": {"size": 32},
        "depth": {"size": 32},
        "thermal": {"size": 32},
        "audio": {"clip_seconds": 0.5, "num_mel_bins": 32, "target_frames": 48},
        "imu": {"length": 60},
        "text": {"context_length": 48},
    },
}


def _configs(geometry: str):
    inputs = GEOMETRIES[geometry]
    return {m: get_modality(m).config_from_dict({"input": inputs.get(m, {})}, preset="tiny") for m in MODALITIES}


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("modality", MODALITIES)
def test_batch_transform_equals_per_sample_transform(modality, geometry):
    configs = _configs(geometry)
    scenes = SyntheticScenes(scene_config(configs), seed=3)
    raw = scenes.render(modality, np.r_[0:13, 1_000_000_000, 2**40 + 7])
    raw = raw if isinstance(raw, list) else torch.from_numpy(raw)
    spec, cfg = get_modality(modality), configs[modality].input
    before = list(raw) if isinstance(raw, list) else raw.clone()
    batched = spec.transform_batch(raw, cfg)
    per_sample = collate_inputs([spec.transform(r, cfg) for r in raw])
    assert _equal(batched, per_sample)
    assert _equal(spec.transform_batch(raw[:1], cfg), collate_inputs([spec.transform(raw[0], cfg)]))
    # The input is left as it was, and the output shares no memory with it.
    assert (raw == before) if isinstance(raw, list) else torch.equal(raw, before)
    if isinstance(raw, torch.Tensor) and isinstance(batched, torch.Tensor):
        assert not np.shares_memory(batched.numpy(), raw.numpy())


# The textbook formulas the transforms computed before their fast paths.
def _fbank_reference(waveforms: torch.Tensor, sample_rate: int, num_mel_bins: int) -> torch.Tensor:
    win, hop = int(sample_rate * 0.025), int(sample_rate * 0.010)
    padded = 1 << (win - 1).bit_length()
    frames = waveforms.unfold(1, win, hop)
    frames = frames - frames.mean(dim=2, keepdim=True)
    shifted = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)
    frames = (frames - 0.97 * shifted) * torch.hann_window(win, periodic=False, dtype=frames.dtype)
    power = torch.fft.rfft(F.pad(frames, (0, padded - win)), dim=2).abs().pow(2)
    mel = power @ _mel_banks(num_mel_bins, padded, sample_rate).T.to(power.dtype)
    return mel.clamp_min(torch.finfo(mel.dtype).eps).log()


def _fbank_clips_reference(clips: torch.Tensor, cfg: AudioInput) -> torch.Tensor:
    feats = _fbank_reference(clips - clips.mean(dim=1, keepdim=True), cfg.sample_rate, cfg.num_mel_bins)
    feats = feats.transpose(1, 2)
    if feats.shape[2] < cfg.target_frames:
        feats = F.pad(feats, (0, cfg.target_frames - feats.shape[2]))
    feats = feats[:, :, : cfg.target_frames]
    return ((feats - cfg.mean) / cfg.std)[:, None]


AUDIO_CONFIGS = [
    AudioInput(clip_seconds=1.0, num_mel_bins=64, target_frames=96),  # tiny: frames cropped
    AudioInput(),  # ImageBind's 2 s, 128 bins, 204 frames
    AudioInput(clip_seconds=0.5, num_mel_bins=32, target_frames=48),
    AudioInput(sample_rate=8000, target_frames=300),  # frames padded
]


@pytest.mark.parametrize("cfg", AUDIO_CONFIGS, ids=lambda c: f"{c.sample_rate}Hz-{c.clip_seconds}s-{c.target_frames}")
def test_log_mel_equals_the_textbook_computation(cfg):
    g = torch.Generator().manual_seed(0)
    n = round(cfg.clip_seconds * cfg.sample_rate)
    tone = torch.sin(torch.arange(n) * 0.05)
    for clips in (
        torch.randn(9, n, generator=g) * 0.3,
        tone.repeat(3, 1) * torch.rand(3, 1, generator=g),
        torch.zeros(2, n),  # every power under the clamp
        torch.randn(1, n, generator=g) * 1e-12,  # powers near float32's underflow
    ):
        expected = _fbank_clips_reference(clips, cfg)
        got = fbank_clips(clips, cfg)
        assert _equal(got, expected)
        assert got.stride() == expected.stride()
        assert _equal(
            kaldi_fbank(clips, cfg.sample_rate, cfg.num_mel_bins),
            _fbank_reference(clips, cfg.sample_rate, cfg.num_mel_bins),
        )
    wav64 = torch.randn(2, n, generator=g, dtype=torch.float64)
    assert _equal(kaldi_fbank(wav64, cfg.sample_rate, 64), _fbank_reference(wav64, cfg.sample_rate, 64))


def test_power_spectrum_equals_torch_hypot_bit_for_bit():
    """The CPU power path replays glibc's hypotf in float64; torch.hypot (which calls it) is the reference,
    over float32's whole finite range: zeros, subnormals, and squares that overflow to inf."""
    g = torch.Generator().manual_seed(4)
    cases = [torch.randn(50_001, 2, generator=g) * scale for scale in (1e-38, 1e-20, 1e-3, 1.0, 1e4, 1e19, 3e38)]
    cases.append(torch.randint(0, 2**23, (50_000, 2), generator=g, dtype=torch.int32).view(torch.float32))
    bits = torch.randint(-(2**31), 2**31 - 1, (200_000, 2), generator=g, dtype=torch.int64).to(torch.int32)
    cases.append(bits.view(torch.float32)[bits.view(torch.float32).isfinite().all(dim=1)])
    cases[3][:10] = 0
    cases[3][10:20, 1] = 0
    for pairs in cases:
        expected = torch.hypot(pairs[:, 0], pairs[:, 1]).square_()
        got = _hypot_squared(pairs, torch.empty(len(pairs)))
        assert torch.equal(got, expected)
    assert torch.isinf(_hypot_squared(torch.full((3, 2), 3e38), torch.empty(3))).all()


def test_fbank_work_buffers_do_not_leak_into_results():
    cfg = AUDIO_CONFIGS[0]
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 16000, generator=g), torch.randn(4, 16000, generator=g)
    first, mel = fbank_clips(a, cfg), kaldi_fbank(a, 16000, 64)
    kept, kept_mel = first.clone(), mel.clone()
    fbank_clips(b, cfg), kaldi_fbank(b, 16000, 64), fbank_clips(b[:1], cfg)
    assert torch.equal(first, kept) and torch.equal(mel, kept_mel)


def test_normalisations_equal_the_textbook_formulas():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(5, 3, 20, 20, generator=g) * 1.4 - 0.2  # some pixels outside [0, 1]
    image_cfg = ImageInput(size=20)
    mean, std = torch.tensor(image_cfg.mean).view(-1, 1, 1), torch.tensor(image_cfg.std).view(-1, 1, 1)
    assert _equal(get_modality("image").transform_batch(x, image_cfg), (x.clamp(0.0, 1.0) - mean) / std)

    depth = torch.rand(5, 20, 20, generator=g) * 90 - 5  # below min_depth and above max_depth too
    depth_cfg = DepthInput(size=20)
    disparity = 1.0 / depth[:, None].clamp(depth_cfg.min_depth, depth_cfg.max_depth)
    assert _equal(get_modality("depth").transform_batch(depth, depth_cfg), (disparity - depth_cfg.mean) / depth_cfg.std)

    thermal = torch.rand(5, 20, 20, generator=g)
    thermal_cfg = ThermalInput(size=20)
    expected = (thermal[:, None] - thermal_cfg.mean) / thermal_cfg.std
    assert _equal(get_modality("thermal").transform_batch(thermal, thermal_cfg), expected)

    imu = torch.randn(5, 6, 40, generator=g) * 10
    imu_cfg = IMUInput(length=40)
    scale = torch.tensor([imu_cfg.accel_scale] * 3 + [imu_cfg.gyro_scale] * 3).view(1, 6, 1)
    assert _equal(get_modality("imu").transform_batch(imu, imu_cfg), imu / scale)


@pytest.mark.parametrize("context_length", [3, 4, 10, 48, 128])
def test_batched_byte_tokenizer_equals_per_text(context_length):
    texts = ["", "a", "ÿ é ünïcödé 漢字 🎉", "x" * 200, "y" * 126, "z" * 125, "a red sphere"]
    ids, mask = byte_tokenize_batch(texts, context_length)
    expected = [byte_tokenize(t, context_length) for t in texts]
    assert _equal(ids, torch.stack([e[0] for e in expected]))
    assert _equal(mask, torch.stack([e[1] for e in expected]))
    assert byte_tokenize_batch([], context_length)[0].shape == (0, context_length)
