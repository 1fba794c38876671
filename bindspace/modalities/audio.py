"""Audio as log-mel filterbanks seen by a 1-channel ViT (ImageBind's recipe at the huge preset).

Mono, resampled to 16 kHz, clips of 2 s (ImageBind samples 3 clips per file and averages their
embeddings; ``num_clips``), 128-bin Kaldi fbank with a 25 ms Hanning window and 10 ms shift, padded
or cropped to 204 frames, standardised with mean -4.268 / std 9.138 (AudioSet statistics, as AST
and ImageBind). ViT: 16x16 patches at stride 10 (overlapping), width 768, 12 blocks, 12 heads,
drop path 0.1; logit scale 20.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from bindspace.modalities.base import ModalitySpec, register_modality
from bindspace.nn.layers import PatchTokenizer


@dataclass
class AudioInput:
    sample_rate: int = 16000
    clip_seconds: float = 2.0
    num_clips: int = 1  # > 1 gives (S, 1, F, T) per sample; the model averages the clip embeddings
    num_mel_bins: int = 128
    target_frames: int = 204
    mean: float = -4.268
    std: float = 9.138
    patch_size: int = 16
    patch_stride: int = 10
    channels: int = 1

    @property
    def ndim(self) -> int:  # (1, F, T) for one clip
        return 3


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


@lru_cache(maxsize=8)
def _mel_banks(num_bins: int, padded: int, sample_rate: int) -> Tensor:
    banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
        num_bins, padded, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0
    )
    return F.pad(banks, (0, 1))  # (bins, padded // 2 + 1): Kaldi ignores the Nyquist bin


def kaldi_fbank(waveforms: Tensor, sample_rate: int, num_mel_bins: int) -> Tensor:
    """Batched Kaldi log-mel filterbank, equal to ``torchaudio.compliance.kaldi.fbank`` per row.

    Settings are ImageBind's: 25 ms Hanning window, 10 ms shift, no dither, DC offset removed per
    frame, pre-emphasis 0.97, power spectrum, HTK-compatible, no energy term. One vectorised pass
    over ``(B, T)`` instead of a Python loop over clips (about 20x faster on a batch of 64).

    Returns:
        ``(B, frames, num_mel_bins)``.
    """
    win, hop = int(sample_rate * 0.025), int(sample_rate * 0.010)
    if waveforms.ndim != 2 or waveforms.shape[1] < win:
        raise ValueError(f"fbank needs (B, T) waveforms with T >= {win}, got {tuple(waveforms.shape)}")
    padded = 1 << (win - 1).bit_length()
    frames = waveforms.unfold(1, win, hop)  # (B, M, win)
    frames = frames - frames.mean(dim=2, keepdim=True)
    shifted = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)
    frames = (frames - 0.97 * shifted) * torch.hann_window(win, periodic=False, dtype=frames.dtype)
    power = torch.fft.rfft(F.pad(frames, (0, padded - win)), dim=2).abs().pow(2)  # (B, M, padded/2+1)
    mel = power @ _mel_banks(num_mel_bins, padded, sample_rate).T.to(power.dtype)
    return mel.clamp_min(torch.finfo(mel.dtype).eps).log()


def fbank_clips(clips: Tensor, cfg: AudioInput) -> Tensor:
    """Mono clips ``(B, T)`` -> standardised log-mel ``(B, 1, num_mel_bins, target_frames)``."""
    feats = kaldi_fbank(clips - clips.mean(dim=1, keepdim=True), cfg.sample_rate, cfg.num_mel_bins).transpose(1, 2)
    frames = feats.shape[2]
    if frames < cfg.target_frames:
        feats = F.pad(feats, (0, cfg.target_frames - frames))
    feats = feats[:, :, : cfg.target_frames]
    return ((feats - cfg.mean) / cfg.std)[:, None]


@register_modality
class AudioSpec(ModalitySpec):
    name = "audio"
    input_config = AudioInput
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "trunk": {"width": 768, "depth": 12, "heads": 12, "drop_path": 0.1},
        "head": {"pool": "cls"},
        "logit_scale": {"init": 20.0, "learnable": False},
    }

    def transform(self, raw, cfg: AudioInput) -> Tensor:
        """``(waveform (C, T) or (T,), sample_rate)`` or a waveform already at ``cfg.sample_rate``."""
        wav, sr = raw if isinstance(raw, tuple) else (raw, cfg.sample_rate)
        wav = to_mono(torch.as_tensor(np.asarray(wav), dtype=torch.float32))
        if sr != cfg.sample_rate:
            wav = torchaudio.functional.resample(wav, int(sr), cfg.sample_rate)
        n = round(cfg.clip_seconds * cfg.sample_rate)
        if wav.shape[0] < n:  # pad short files with silence so every clip is full length
            wav = F.pad(wav, (0, n - wav.shape[0]))
        clips = torch.stack([wav[s : s + n] for s in clip_starts(wav.shape[0], n, cfg.num_clips)])
        feats = fbank_clips(clips, cfg)  # (S, 1, F, frames)
        return feats[0] if cfg.num_clips == 1 else feats

    def transform_batch(self, raws, cfg: AudioInput) -> Tensor:
        """Equal-length waveforms ``(B, T)`` at ``cfg.sample_rate`` (synthetic data) in one vectorised pass."""
        n = round(cfg.clip_seconds * cfg.sample_rate)
        if isinstance(raws, Tensor) and raws.ndim == 2 and raws.shape[1] == n and cfg.num_clips == 1:
            return fbank_clips(raws.float(), cfg)
        return super().transform_batch(raws, cfg)

    def build_preprocessor(self, cfg: AudioInput, width: int) -> nn.Module:
        size = (cfg.num_mel_bins, cfg.target_frames)
        return PatchTokenizer(cfg.channels, size, width, cfg.patch_size, cfg.patch_stride, norm=True)

    def dummy_input(self, cfg: AudioInput, batch_size: int, generator: torch.Generator) -> Tensor:
        return torch.randn(batch_size, cfg.channels, cfg.num_mel_bins, cfg.target_frames, generator=generator)
