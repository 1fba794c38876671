"""Audio as log-mel filterbanks seen by a 1-channel ViT (ImageBind's recipe at the huge preset).

Mono, resampled to 16 kHz, clips of 2 s (ImageBind samples 3 clips per file and averages their
embeddings; ``num_clips``; ``huge`` places them and picks the channel as ImageBind's loader does),
128-bin Kaldi fbank with a 25 ms Hanning window and 10 ms shift, padded
or cropped to 204 frames, standardised with mean -4.268 / std 9.138 (AudioSet statistics, as AST
and ImageBind). ViT: 16x16 patches at stride 10 (overlapping), width 768, 12 blocks, 12 heads,
drop path 0.1; logit scale 20.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from bindspace.errors import ConfigError, DataFileError
from bindspace.modalities.base import ModalitySpec, register_modality
from bindspace.modalities.files import PathLike, as_file, checked_file, decoding, to_float32
from bindspace.nn.layers import PatchTokenizer

MAX_FLOAT_AUDIO_PEAK = 2.0
# Above this many samples (4 GiB as float32) a header is far more likely corrupt than real.
MAX_AUDIO_SAMPLES = 2**30
# libsndfile logs "data : <declared> (should be <available>)" when a WAV's data chunk is cut short.
_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_WAV_UNKNOWN_LENGTH = 0x7FFFFFFF  # streaming writers put 0x7FFFFFFF/0xFFFFFFFF in the size field
CLIP_SAMPLERS = ("spread", "imagebind")
MONO_MIXES = ("mean", "first")


@dataclass
class AudioInput:
    sample_rate: int = 16000
    clip_seconds: float = 2.0
    num_clips: int = (
        1  # S clips per file, evenly spaced; model input is (S, 1, F, T) per sample, clip embeddings averaged
    )
    num_mel_bins: int = 128
    target_frames: int = 204
    mean: float = -4.268
    std: float = 9.138
    patch_size: int = 16
    patch_stride: int = 10
    channels: int = 1
    # Where clips start and how a file shorter than a clip is filled. "spread": the first clip at the
    # start, the last at the end (one clip: centred), a short file padded with silence. "imagebind":
    # ImageBind's loader (pytorchvideo's ConstantClipsPerVideoSampler), clip i starts at
    # i * (duration - clip) / num_clips, so the last ends before the file does; a short file's clips
    # are the whole file and their log-mel is padded with zeros before the standardisation.
    clip_sampler: str = "spread"
    mono: str = "mean"  # "mean" of the channels, or "first" channel (ImageBind: Kaldi's fbank reads channel 0)

    def __post_init__(self) -> None:
        if self.clip_sampler not in CLIP_SAMPLERS:
            raise ConfigError(
                f"modalities.audio.input.clip_sampler must be one of {CLIP_SAMPLERS}, got {self.clip_sampler!r}"
            )
        if self.mono not in MONO_MIXES:
            raise ConfigError(f"modalities.audio.input.mono must be one of {MONO_MIXES}, got {self.mono!r}")


def to_mono(waveform: Tensor) -> Tensor:
    """``(T,)`` or ``(C, T)`` -> ``(T,)`` by averaging channels."""
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim == 2:
        return waveform.mean(0)
    raise ValueError(f"audio must be (T,) or (C, T), got {tuple(waveform.shape)}")


def clip_starts(num_samples: int, clip_samples: int, num_clips: int) -> list[int]:
    """Evenly spaced clip starts covering the signal (ImageBind's ConstantClipsPerVideoSampler)."""
    span = max(num_samples - clip_samples, 0)
    if num_clips == 1:
        return [span // 2]
    return [round(i * span / (num_clips - 1)) for i in range(num_clips)]


def imagebind_clip_starts(num_samples: int, sample_rate: int, clip_seconds: float, num_clips: int) -> list[int]:
    """Clip starts as ImageBind's audio loader picks them (pytorchvideo's ConstantClipsPerVideoSampler).

    The free span ``duration - clip`` (seconds, a float, then exact as a fraction) is cut into
    ``num_clips`` equal steps; clip ``i`` starts at ``i`` steps, its first sample the start time times
    the rate rounded down. A file no longer than a clip gives ``num_clips`` starts at 0.
    """
    step = Fraction(max(num_samples / sample_rate - clip_seconds, 0)) / num_clips
    return [int(step * i * sample_rate) for i in range(num_clips)]


def cut_clips(wav: Tensor, cfg: AudioInput) -> Tensor:
    """A mono waveform ``(T,)`` at ``cfg.sample_rate`` -> ``(num_clips, samples)``, placed by ``cfg.clip_sampler``."""
    n = round(cfg.clip_seconds * cfg.sample_rate)
    if cfg.clip_sampler == "imagebind":
        starts = imagebind_clip_starts(wav.shape[0], cfg.sample_rate, cfg.clip_seconds, cfg.num_clips)
        # A short file's clips are the file itself (fbank_clips pads the log-mel), one fbank window at least.
        window = int(cfg.sample_rate * 0.025)
        n = max(min(n, wav.shape[0]), window)
        wav = F.pad(wav, (0, max(window - wav.shape[0], 0)))
    else:
        if wav.shape[0] < n:  # pad short files with silence so every clip is full length
            wav = F.pad(wav, (0, n - wav.shape[0]))
        starts = clip_starts(wav.shape[0], n, cfg.num_clips)
    return torch.stack([wav[s : s + n] for s in starts])


@lru_cache(maxsize=8)
def _mel_banks(num_bins: int, padded: int, sample_rate: int) -> Tensor:
    banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
        num_bins, padded, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0
    )
    return F.pad(banks, (0, 1))  # (bins, padded // 2 + 1): Kaldi ignores the Nyquist bin


@lru_cache(maxsize=8)
def _hann(win: int, dtype: torch.dtype) -> Tensor:
    return torch.hann_window(win, periodic=False, dtype=dtype)


_WORK = threading.local()
_SCRATCH_MAX_BYTES = 16 * 2**20  # per buffer: the tiny and small presets' training batches need a few MiB


def _scratch(slot: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """A work buffer of this thread, reused across calls; never part of a returned tensor.

    Fresh multi-megabyte temporaries cost a page fault per 4 KiB on every call, more than the
    arithmetic done in them.
    """
    size = math.prod(shape)
    if size * dtype.itemsize > _SCRATCH_MAX_BYTES:  # a one-off large batch: not kept
        return torch.empty(shape, dtype=dtype)
    buffers = _WORK.__dict__.setdefault("buffers", {})
    buf = buffers.get(slot)
    # A buffer made under torch.inference_mode (bindspace-embed, -search) cannot be written outside it.
    stale = buf is not None and buf.is_inference() and not torch.is_inference_mode_enabled()
    if buf is None or stale or buf.dtype != dtype or buf.numel() < size:
        buf = buffers[slot] = torch.empty(size, dtype=dtype)
    return buf[:size].view(shape)


def kaldi_fbank(waveforms: Tensor, sample_rate: int, num_mel_bins: int) -> Tensor:
    """Batched Kaldi log-mel filterbank, equal to ``torchaudio.compliance.kaldi.fbank`` per row.

    Settings are ImageBind's: 25 ms Hanning window, 10 ms shift, no dither, DC offset removed per
    frame, pre-emphasis 0.97, power spectrum, HTK-compatible, no energy term. One vectorised pass
    over ``(B, T)`` instead of a Python loop over clips (about 20x faster on a batch of 64).

    Returns:
        ``(B, frames, num_mel_bins)``.
    """
    _check_fbank_input(waveforms, sample_rate)
    mel = _power_mel(waveforms, sample_rate, num_mel_bins)
    return mel.clamp_min_(torch.finfo(mel.dtype).eps).log_()


def _check_fbank_input(waveforms: Tensor, sample_rate: int) -> None:
    win = int(sample_rate * 0.025)
    if waveforms.ndim != 2 or waveforms.shape[1] < win:
        raise ValueError(f"fbank needs (B, T) waveforms with T >= {win}, got {tuple(waveforms.shape)}")


def _power_mel(waveforms: Tensor, sample_rate: int, num_mel_bins: int, out: Tensor | None = None) -> Tensor:
    """The mel power ``(B, frames, num_mel_bins)`` of :func:`kaldi_fbank`, before the log.

    Every step is the same float operation as the textbook sequence (``frames - mean``, then
    ``x - 0.97 * previous``, the window, zero padding, ``|rfft|^2``, the mel matrix), done in place
    in reused, zero-padded work buffers: no concatenated copy for the pre-emphasis, no padded copy
    for the FFT. In float32 the power is ``hypot(re, im) ** 2``: the square of ``complex.abs()``
    to the bit (they differ only where the square under- or overflows anyway), without abs's slow path
    (on CPU, :func:`_hypot_squared`).
    """
    win, hop = int(sample_rate * 0.025), int(sample_rate * 0.010)
    padded, bins = 1 << (win - 1).bit_length(), (1 << (win - 1).bit_length()) // 2 + 1
    frames = waveforms.unfold(1, win, hop)  # (B, M, win), a view
    b, m = frames.shape[:2]
    # A few clips at a time, so that the framing passes and the FFT work on data still in cache: every
    # operation is per frame, so the chunking changes no value.
    chunk = max(1, _FBANK_CHUNK_BYTES // (m * padded * waveforms.element_size()))
    chunk = min(chunk, b)
    buffer = _scratch("fbank.frames", (chunk, m, padded), waveforms.dtype)
    buffer[..., win:] = 0
    previous = _scratch("fbank.previous", (chunk, m, win - 1), waveforms.dtype)
    power = _scratch("fbank.power", (b, m, bins), waveforms.dtype)
    for start in range(0, b, chunk):
        rows = slice(start, min(start + chunk, b))
        k = rows.stop - rows.start
        _frame_power(frames[rows], buffer[:k], previous[:k], power[rows])
    banks = _mel_banks(num_mel_bins, padded, sample_rate).T.to(power.dtype)
    return torch.matmul(power, banks, out=out)


_FBANK_CHUNK_BYTES = 2 * 2**20  # zero-padded frames per pass of _power_mel: within a core's L2 and L3 share


def _frame_power(frames: Tensor, buffer: Tensor, previous: Tensor, power: Tensor) -> None:
    """``power`` (B, M, bins) of ``frames`` (B, M, win), through the zero-padded work ``buffer`` (B, M, padded)."""
    win = frames.shape[-1]
    body = buffer[..., :win]
    torch.sub(frames, frames.mean(dim=2, keepdim=True), out=body)  # DC offset removed per frame
    # Pre-emphasis, x[i] - 0.97 * x[i - 1]; the first sample is its own predecessor.
    torch.mul(body[..., :-1], 0.97, out=previous)
    first = 0.97 * body[..., :1]
    body[..., 1:] -= previous
    body[..., :1] -= first
    body *= _hann(win, frames.dtype)
    # A fresh output: rfft(out=) into a reused buffer gives the same bits and is a third slower.
    spectrum = torch.fft.rfft(buffer, dim=2)
    ri = torch.view_as_real(spectrum)  # (B, M, bins, 2)
    if power.dtype == torch.float32 and power.device.type == "cpu" and not spectrum.requires_grad:
        _hypot_squared(ri, power)
    elif power.dtype == torch.float32:  # |X|^2 as .abs().pow(2): equal in float32 (abs's own path is slow)
        torch.hypot(ri[..., 0], ri[..., 1], out=power).square_()
    else:  # float64's abs() is not hypot() to the last bit
        torch.abs(spectrum, out=power).pow_(2)


_POWER_CHUNK = 16384  # complex bins per pass: the float64 work (384 KiB) stays in L2


def _hypot_squared(ri: Tensor, out: Tensor) -> Tensor:
    """``torch.hypot(re, im).square()`` of a CPU float32 spectrum ``ri`` (..., 2) into ``out``: the same bits, faster.

    On the interleaved views torch's hypot runs its scalar kernel, glibc's ``hypotf``, which is
    ``(float) sqrt((double) re * re + (double) im * im)``: both squares exact in float64, one rounded
    sum, one rounded root, one rounding to float32. The same operations run here vectorised, a
    cache-sized chunk at a time: 7.5 -> 5.1 ms for the synthetic benchmark's 32 clips of 1 s (medians
    of 40). torch's vectorised hypot (Sleef's) is not correctly rounded: it differs in about 1 bin in
    16 million of the synthetic benchmark's audio, enough to change the default run's batches (177afa5,
    reverted in 8aae907). Finite inputs only, as a log-mel has: ``hypotf(inf, nan)`` is inf, here nan.
    ``tests/test_transform_fast_paths.py`` checks the bits against ``torch.hypot``.
    """
    pairs = ri.detach().view(-1, 2).numpy()  # views: .view fails rather than copy a strided tensor
    power = out.view(-1).numpy()
    chunk = max(1, min(_POWER_CHUNK, len(pairs)))
    squares = np.empty((chunk, 2), np.float64)
    total = np.empty(chunk, np.float64)
    with np.errstate(over="ignore"):  # float32 overflow gives inf, silently, as torch.hypot does
        for start in range(0, len(pairs), chunk):
            _hypot_squared_chunk(pairs[start : start + chunk], power[start : start + chunk], squares, total)
    return out


def _hypot_squared_chunk(pairs: np.ndarray, power: np.ndarray, squares: np.ndarray, total: np.ndarray) -> None:
    sq, tot = squares[: len(pairs)], total[: len(pairs)]
    np.copyto(sq, pairs)
    np.multiply(sq, sq, out=sq)
    np.add(sq[:, 0], sq[:, 1], out=tot)
    np.sqrt(tot, out=tot)
    np.copyto(power, tot, casting="same_kind")
    np.multiply(power, power, out=power)


def fbank_clips(clips: Tensor, cfg: AudioInput) -> Tensor:
    """Mono clips ``(B, T)`` -> standardised log-mel ``(B, 1, num_mel_bins, target_frames)``."""
    _check_fbank_input(clips, cfg.sample_rate)
    centred = torch.sub(clips, clips.mean(dim=1, keepdim=True), out=_scratch("fbank.clips", clips.shape, clips.dtype))
    b, bins = len(clips), cfg.num_mel_bins
    win, hop = int(cfg.sample_rate * 0.025), int(cfg.sample_rate * 0.010)
    frames = (clips.shape[1] - win) // hop + 1
    mel = _power_mel(centred, cfg.sample_rate, bins, out=_scratch("fbank.mel", (b, frames, bins), clips.dtype))
    # The log-mel in a (B, target, F) tensor, as ``feats.transpose(1, 2)`` is laid out; frames past
    # the clip's end are 0 before the standardisation, as F.pad of the log-mel gives. Elementwise
    # from here on, so cropping first changes no value.
    kept = min(frames, cfg.target_frames)
    feats = clips.new_empty((b, cfg.target_frames, bins))
    feats[:, kept:] = 0
    torch.clamp_min(mel[:, :kept], torch.finfo(mel.dtype).eps, out=feats[:, :kept]).log_()
    feats -= cfg.mean
    feats /= cfg.std
    feats = feats.transpose(1, 2)
    return (feats if frames >= cfg.target_frames else feats.contiguous())[:, None]  # F.pad's layout


def read_audio(path: PathLike) -> tuple[np.ndarray, int]:
    """Read a WAV, FLAC or Ogg (Vorbis/Opus) file with soundfile.

    Args:
        path: Audio file with at least one sample.

    Returns:
        float32 array (C, T) in [-1, 1], and the sample rate in Hz.

    Raises:
        DataFileError: Unreadable, zero-length, truncated (WAV and FLAC; a truncated Ogg decodes as
            a shorter clip), non-finite, or floating-point audio peaking above MAX_FLOAT_AUDIO_PEAK.
    """
    path = checked_file(path)
    with decoding(path, "audio"), sf.SoundFile(as_file(path)) as f:
        if f.frames * f.channels > MAX_AUDIO_SAMPLES:
            raise DataFileError(path, f"header claims {f.frames} frames x {f.channels} channels; too large")
        _check_wav_complete(path, f)
        rate, declared = f.samplerate, f.frames
        samples = f.read(dtype="float32", always_2d=True)  # (T, C)
    if samples.shape[0] == 0:
        raise DataFileError(path, "audio has zero length (no samples)")
    if samples.shape[0] < declared:
        raise DataFileError(path, f"truncated: header declares {declared} frames, only {samples.shape[0]} decoded")
    samples = to_float32(path, samples, "audio")
    peak = float(np.abs(samples).max())
    if peak > MAX_FLOAT_AUDIO_PEAK:
        raise DataFileError(path, f"samples peak at {peak:.4g}, expected full scale 1.0; is it mis-scaled?")
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0).T), int(rate)


def _check_wav_complete(path: Path, f: sf.SoundFile) -> None:
    """Fail if a WAV's data chunk is shorter than its header says (libsndfile reads it silently)."""
    match = _WAV_DATA_LOG.search(f.extra_info) if f.format in ("WAV", "WAVEX") else None
    if match is None:
        return
    declared, available = int(match.group(1)), int(match.group(2))
    if available < declared < _WAV_UNKNOWN_LENGTH:
        raise DataFileError(path, f"truncated: data chunk declares {declared} bytes, file holds {available}")


@register_modality
class AudioSpec(ModalitySpec):
    name = "audio"
    input_config = AudioInput
    readers = dict.fromkeys((".wav", ".flac", ".ogg"), read_audio)
    clip_axis = True  # (B, S, 1, F, T): S clips per sample, ImageBind's layout
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "trunk": {"width": 768, "depth": 12, "heads": 12, "drop_path": 0.1},
        "head": {"pool": "cls"},
        "logit_scale": {"init": 20.0, "learnable": False},
    }
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        # 1 s of audio as 64 mel bins x 96 frames in non-overlapping 16 x 16 patches: 24 tokens.
        "tiny": {
            "input": {"clip_seconds": 1.0, "num_mel_bins": 64, "target_frames": 96, "patch_stride": 16},
            "trunk": {"width": 128, "depth": 2, "heads": 4, "drop_path": 0.0},
        },
        "small": {
            "input": {"clip_seconds": 1.0, "num_mel_bins": 64, "target_frames": 96, "patch_stride": 16},
            "trunk": {"width": 384, "depth": 6, "heads": 6, "drop_path": 0.0},
        },
        # ImageBind-huge: three clips per file placed as its loader places them, its left channel, a
        # learned key/value bias in every attention.
        "huge": {"input": {"num_clips": 3, "clip_sampler": "imagebind", "mono": "first"}, "trunk": {"kv_bias": True}},
    }

    def transform(self, raw, cfg: AudioInput) -> Tensor:
        """``(waveform (C, T) or (T,), sample_rate)`` or a waveform already at ``cfg.sample_rate``."""
        wav, sr = raw if isinstance(raw, tuple) else (raw, cfg.sample_rate)
        wav = torch.as_tensor(np.asarray(wav), dtype=torch.float32)
        wav = wav[0] if cfg.mono == "first" and wav.ndim == 2 else to_mono(wav)
        if sr != cfg.sample_rate:
            wav = torchaudio.functional.resample(wav, int(sr), cfg.sample_rate)
        return fbank_clips(cut_clips(wav, cfg), cfg)  # (S, 1, F, frames): the clip axis is always there (clip_axis)

    def transform_batch(self, raws, cfg: AudioInput) -> Tensor:
        """Equal-length waveforms ``(B, T)`` at ``cfg.sample_rate`` (synthetic data) in one vectorised pass."""
        n = round(cfg.clip_seconds * cfg.sample_rate)
        if isinstance(raws, Tensor) and raws.ndim == 2 and raws.shape[1] == n and cfg.num_clips == 1:
            return fbank_clips(raws.float(), cfg)[:, None]
        return super().transform_batch(raws, cfg)

    def build_preprocessor(self, cfg: AudioInput, width: int) -> nn.Module:
        size = (cfg.num_mel_bins, cfg.target_frames)
        return PatchTokenizer(cfg.channels, size, width, cfg.patch_size, cfg.patch_stride, norm=True)

    def dummy_input(self, cfg: AudioInput, batch_size: int, generator: torch.Generator) -> Tensor:
        shape = (batch_size, cfg.num_clips, cfg.channels, cfg.num_mel_bins, cfg.target_frames)
        return torch.randn(*shape, generator=generator)
