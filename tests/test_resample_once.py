"""Manifest audio is resampled once per file, with the sinc kernel built once per rate pair (issue 14, part 7)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import torchaudio.functional.functional as ta_functional
import torchaudio.transforms._transforms as ta_transforms
from PIL import Image

from bindspace.data import build_datamodule
from bindspace.data.resample import DecodedAudio, clear_resamplers, mono_at_rate, resample
from bindspace.modalities import get_modality

pytestmark = pytest.mark.filterwarnings("ignore:data.val:UserWarning")  # tiny held-out sets, on purpose
MODEL_RATE = 16_000
INPUT = {"image": {"size": 16}, "audio": {"clip_seconds": 0.25, "num_mel_bins": 16, "target_frames": 24}}


def tone(rate: int, seconds: float, channels: int, seed: int) -> np.ndarray:
    """(T, C) float32 in [-0.8, 0.8]: a chord plus a little noise, different per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wave = [0.5 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.1 * rng.standard_normal(len(t)) for _ in range(3)]
    return np.clip(np.stack([sum(wave) / 3 * (c + 1) / channels for c in range(channels)], axis=1), -0.8, 0.8).astype(
        np.float32
    )


def write_manifest(root: Path, rates: list[int], channels: int = 1) -> Path:
    """Image-audio pairs, audio at ``rates[i]`` (written with soundfile), as a JSONL manifest."""
    (root / "files").mkdir(parents=True)
    rows = []
    for i, rate in enumerate(rates):
        Image.fromarray(np.full((8, 8, 3), 20 * i % 256, np.uint8)).save(root / "files" / f"{i}.png")
        sf.write(root / "files" / f"{i}.wav", tone(rate, 0.3 + 0.01 * i, channels, i), rate, subtype="FLOAT")
        rows.append({"id": f"s{i}", "image": f"files/{i}.png", "audio": f"files/{i}.wav"})
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def configs() -> dict:
    return {m: get_modality(m).config_from_dict({"input": INPUT[m]}) for m in INPUT}


@pytest.fixture
def kernel_builds(monkeypatch) -> Counter:
    """Counts torchaudio sinc-kernel builds by (orig_rate, new_rate), wherever they happen."""
    builds: Counter = Counter()
    real = ta_functional._get_sinc_resample_kernel

    def counting(orig_freq, new_freq, *args, **kwargs):
        builds[(int(orig_freq), int(new_freq))] += 1
        return real(orig_freq, new_freq, *args, **kwargs)

    monkeypatch.setattr(ta_functional, "_get_sinc_resample_kernel", counting)
    monkeypatch.setattr(ta_transforms, "_get_sinc_resample_kernel", counting)
    clear_resamplers()
    yield builds
    clear_resamplers()


@pytest.mark.parametrize(("orig", "new"), [(44_100, 16_000), (48_000, 16_000), (22_050, 16_000), (8_000, 16_000)])
def test_resample_equals_torchaudio(orig, new):
    wave = torch.from_numpy(tone(orig, 0.5, 2, 7).T.copy())  # (C, T)
    expected = torchaudio.functional.resample(wave, orig, new)
    torch.testing.assert_close(resample(wave, orig, new), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(resample(wave[0], orig, new), expected[0], rtol=0, atol=1e-6)
    assert resample(wave, new, new) is wave


def test_mono_at_rate_gives_the_spec_the_same_features():
    spec, cfg = get_modality("audio"), configs()["audio"].input
    wave = tone(44_100, 0.4, 2, 3).T  # (C, T) as the readers return it
    prepared = mono_at_rate((wave, 44_100), MODEL_RATE)
    assert prepared.shape == (round(wave.shape[1] * MODEL_RATE / 44_100),)
    torch.testing.assert_close(spec.transform(prepared, cfg), spec.transform((wave, 44_100), cfg), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cache_gb", [2.0, 0.0])
def test_a_manifest_run_builds_each_resampling_kernel_once(tmp_path, kernel_builds, cache_gb):
    rates = [44_100] * 10 + [48_000] * 6
    train = write_manifest(tmp_path, rates)
    dm = build_datamodule(
        {"name": "manifest", "batch_size": 4, "train": str(train), "val_fraction": 0.25, "audio_cache_gb": cache_gb},
        configs(),
        [("image", "audio")],
        seed=0,
    )
    assert isinstance(dm.decoded, DecodedAudio)
    # Everything fits the default budget, so it was decoded once and kept; with no budget nothing is.
    assert len(dm.decoded) == (len(rates) if cache_gb else 0)
    steps = dm.train_dataloader()
    for step, batch in zip(range(6), steps, strict=False):
        assert batch["image|audio"]["audio"].shape[0] == 4, step
    for batch in dm.val_dataloader():
        assert batch["audio"].shape[0] > 0
    assert dict(kernel_builds) == {(44_100, MODEL_RATE): 1, (48_000, MODEL_RATE): 1}


@pytest.mark.parametrize("cache_gb", [2.0, 0.0])
def test_manifest_features_equal_resampling_every_file(tmp_path, kernel_builds, cache_gb):
    """What a step feeds the model equals reading and transforming each file (torchaudio resampling) to 1e-5."""
    rates = [44_100, 48_000, 22_050, 16_000] * 2
    train = write_manifest(tmp_path, rates, channels=2)
    cfgs = configs()
    data = {"name": "manifest", "batch_size": 2, "train": str(train), "val": str(train), "audio_cache_gb": cache_gb}
    dm = build_datamodule(data, cfgs, [("image", "audio")], 0)
    got = torch.cat([b["audio"] for b in dm.val_dataloader()])
    next(iter(dm.train_dataloader()))
    # The 16 kHz files need no kernel; every other rate one, for all its files and steps.
    assert dict(kernel_builds) == {(44_100, MODEL_RATE): 1, (48_000, MODEL_RATE): 1, (22_050, MODEL_RATE): 1}
    spec = get_modality("audio")
    reference = [spec.transform(spec.read(tmp_path / "files" / f"{i}.wav"), cfgs["audio"].input) for i in range(8)]
    torch.testing.assert_close(got, torch.stack(reference), rtol=0, atol=1e-5)
