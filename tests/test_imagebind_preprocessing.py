"""Issue 15, part 3: ``model=huge``'s readers and transforms give ImageBind's inputs from the same files.

The references are ImageBind's own loaders, ``load_and_transform_audio_data`` and
``load_and_transform_vision_data`` (``imagebind/data.py``, from the ``imagebind`` test extra), imported
without the names that module imports and these two loaders never call (``pkg_resources``,
pytorchvideo's video transforms and decoder, which fail to import with current torchvision).
``torchaudio.load`` needs torchcodec, which is not installed: the audio loader reads through soundfile
instead, which gives what ``torchaudio.load`` documents for 16-bit PCM (float32 ``(C, T)``, x / 32768).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from unittest import mock

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from PIL import Image

from bindspace.errors import ConfigError
from bindspace.modalities import get_modality
from bindspace.modalities.audio import AudioInput, imagebind_clip_starts
from bindspace.modalities.image import ImageInput

EXTRA = "ImageBind's code is not installed (test extra: pip install -e '.[imagebind]')"


def _imagebind_data() -> types.ModuleType:
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(EXTRA, allow_module_level=True)
    pytest.importorskip("pytorchvideo.data.clip_sampling", reason=EXTRA)
    if "imagebind" not in sys.modules:  # the package __init__ imports more than the loaders need
        package = importlib.util.module_from_spec(spec)  # its __init__ not run; find_spec still works
        sys.modules["imagebind"] = package
    unused = {n: types.ModuleType(n) for n in ("pkg_resources", "pytorchvideo.transforms")}
    unused["pytorchvideo.data.encoded_video"] = types.SimpleNamespace(EncodedVideo=None)
    added = [n for n in unused if n not in sys.modules]
    sys.modules.update({n: unused[n] for n in added})
    try:
        import imagebind.data as data
    finally:  # only the stand-ins go: every real module imported meanwhile stays
        for name in added:
            sys.modules.pop(name)
    return data


ib_data = _imagebind_data()


def soundfile_load(path):
    samples, rate = sf.read(path, dtype="float32", always_2d=True)  # (T, C)
    return torch.from_numpy(np.ascontiguousarray(samples.T)), rate


def imagebind_audio(path, overlap_fix: bool = False) -> torch.Tensor:
    """ImageBind's audio input for one file, ``(3, 1, 128, 204)``.

    ``overlap_fix``: its ``waveform2melspec`` centres a clip in place, i.e. in the file's waveform,
    so a clip that overlaps an earlier one (files under 8 s) sees that clip's mean removed too; a copy
    removes that side effect.
    """
    melspec = ib_data.waveform2melspec
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(torchaudio, "load", soundfile_load))
        if overlap_fix:
            stack.enter_context(mock.patch.object(ib_data, "waveform2melspec", lambda w, *a: melspec(w.clone(), *a)))
        return ib_data.load_and_transform_audio_data([str(path)], "cpu")[0]


def write_wav(path, seconds: float, rate: int, channels: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    chirp = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + t))[:, None]
    left_right = np.linspace(1.0, 0.2, channels)[None]  # channels differ: the left one is ImageBind's
    noise = 0.05 * rng.standard_normal((len(t), channels))
    sf.write(path, (chirp * left_right + noise).astype(np.float32), rate, subtype="PCM_16")


# (seconds, rate, channels): long, overlapping clips, one clip's length, shorter than a clip, resampled.
AUDIO_FILES = [(10.0, 44100, 2), (5.0, 16000, 1), (3.7, 48000, 2), (2.0, 16000, 1), (1.3, 16000, 2), (0.5, 22050, 1)]


@pytest.mark.parametrize(("seconds", "rate", "channels"), AUDIO_FILES)
def test_huge_audio_equals_imagebinds_loader(tmp_path, seconds, rate, channels):
    path = tmp_path / "a.wav"
    write_wav(path, seconds, rate, channels)
    spec = get_modality("audio")
    out = spec.transform(spec.read(path), spec.default_config("huge").input)
    reference = imagebind_audio(path, overlap_fix=True)
    assert out.shape == reference.shape == (3, 1, 128, 204)
    print(f"{seconds} s at {rate} Hz x {channels}: max abs difference {(out - reference).abs().max().item():.3g}")
    # Mono files agree to the bit; stereo ones to ~1e-4 (ImageBind centres and resamples both channels).
    torch.testing.assert_close(out, reference, atol=5e-4, rtol=0)
    if seconds >= 8 or seconds <= 2:  # clips that do not overlap, or all the same: no side effect to remove
        torch.testing.assert_close(out, imagebind_audio(path), atol=5e-4, rtol=0)


def test_the_other_presets_keep_spread_clips_and_the_channel_mean(tmp_path):
    path = tmp_path / "a.wav"
    write_wav(path, 10.0, 16000, 2)
    spec = get_modality("audio")
    cfg = spec.default_config("huge").input
    assert (cfg.clip_sampler, cfg.mono, AudioInput().clip_sampler, AudioInput().mono) == (
        "imagebind", "first", "spread", "mean"
    )  # fmt: skip
    for preset in ("tiny", "small", "base"):
        assert (spec.default_config(preset).input.clip_sampler, spec.default_config(preset).input.mono) == (
            "spread", "mean"
        )  # fmt: skip
    spread = spec.transform(spec.read(path), AudioInput(num_clips=3))
    assert (spread - imagebind_audio(path)).abs().max() > 0.5  # the two recipes are not the same inputs


@pytest.mark.parametrize("clip_seconds", [2.0, 1.0, 0.5])
@pytest.mark.parametrize("num_clips", [1, 3, 5])
def test_clip_starts_are_pytorchvideos(clip_seconds, num_clips):
    """ImageBind's clip times (its ``get_clip_timepoints`` over pytorchvideo's sampler) times the rate, rounded down."""
    sampler = ib_data.ConstantClipsPerVideoSampler(clip_duration=clip_seconds, clips_per_video=num_clips)
    rate = 16000
    for num_samples in [1, 399, 16000, 31999, 32000, 32001, 48000, 80000, 160000, 163841, 1234567]:
        times = ib_data.get_clip_timepoints(sampler, num_samples / rate)
        expected = [int(start * rate) for start, _ in times]
        assert imagebind_clip_starts(num_samples, rate, clip_seconds, num_clips) == expected, num_samples


def write_image(path, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    coarse = (rng.random((height // 4 + 1, width // 4 + 1, 3)) * 255).astype(np.uint8)  # smooth and sharp parts
    Image.fromarray(coarse).resize((width, height), Image.Resampling.NEAREST).save(path)


@pytest.mark.parametrize(("width", "height"), [(640, 480), (300, 500), (224, 224), (1000, 333), (225, 301), (97, 150)])
def test_huge_image_equals_imagebinds_loader(tmp_path, width, height):
    path = tmp_path / "i.png"
    write_image(path, width, height)
    spec = get_modality("image")
    out = spec.transform(spec.read(path), spec.default_config("huge").input)
    reference = ib_data.load_and_transform_vision_data([str(path)], "cpu")[0]
    assert out.shape == reference.shape == (3, 224, 224)
    torch.testing.assert_close(out, reference, atol=0, rtol=0)
    # The other presets resize the float image with torch's own bicubic (torchvision's tensor geometry).
    assert spec.default_config("base").input.resize == ImageInput().resize == "torch"


def test_unknown_recipes_are_refused():
    with pytest.raises(ConfigError, match=r"modalities\.audio\.input\.clip_sampler must be one of"):
        get_modality("audio").config_from_dict({"input": {"clip_sampler": "uniform"}})
    with pytest.raises(ConfigError, match=r"modalities\.audio\.input\.mono must be one of"):
        get_modality("audio").config_from_dict({"input": {"mono": "left"}})
    with pytest.raises(ConfigError, match=r"modalities\.image\.input\.resize must be one of"):
        get_modality("image").config_from_dict({"input": {"resize": "bilinear"}})
