"""Decoded audio at the model's sample rate, resampled once per file with a kernel built once per rate pair.

``torchaudio.functional.resample`` builds its windowed-sinc kernel on every call (for 44.1 -> 16 kHz,
160 phases x 29 taps of sin, cos and a window), and ``AudioSpec.transform`` called it for every audio
sample of every step: a third of a manifest run's time went to rebuilding the same kernel. Here the
kernel lives in one ``torchaudio.transforms.Resample`` per (original rate, target rate, dtype), whose
output equals ``torchaudio.functional.resample`` with the same defaults; and the manifest datamodule
keeps each audio file, decoded once at startup, as mono float32 at the model's rate
(:class:`DecodedAudio`), so a training step only cuts clips and computes filterbanks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import Tensor

from bindspace.modalities.audio import to_mono

log = logging.getLogger("bindspace.data")

# The built-in audio spec: its transform takes a (waveform, rate) pair or a mono waveform at its rate.
AUDIO = "audio"


_RESAMPLERS: dict[tuple[int, int, torch.dtype], torchaudio.transforms.Resample] = {}
_RESAMPLERS_LOCK = threading.Lock()


def resampler(orig_rate: int, new_rate: int, dtype: torch.dtype = torch.float32) -> torchaudio.transforms.Resample:
    """The resampling module of one rate pair: its sinc kernel is built on first use, once (the
    startup scan asks from many threads at the same time)."""
    key = (int(orig_rate), int(new_rate), dtype)
    module = _RESAMPLERS.get(key)
    if module is None:
        with _RESAMPLERS_LOCK:
            module = _RESAMPLERS.get(key)
            if module is None:
                module = _RESAMPLERS[key] = torchaudio.transforms.Resample(*key[:2], dtype=dtype).eval()
    return module


def clear_resamplers() -> None:
    """Forget the built kernels (tests count builds)."""
    with _RESAMPLERS_LOCK:
        _RESAMPLERS.clear()


def resample(waveform: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """``torchaudio.functional.resample(waveform, orig_rate, new_rate)`` (default filter), kernel cached.

    Args:
        waveform: ``(..., T)`` floating-point samples.
        orig_rate, new_rate: Sample rates in Hz (integers).
    """
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return waveform
    with torch.no_grad():
        return resampler(orig_rate, new_rate, waveform.dtype)(waveform)


def mono_at_rate(raw: Any, sample_rate: int) -> Tensor:
    """A decoded audio file -> mono float32 ``(T',)`` at ``sample_rate``, as ``AudioSpec.transform`` prepares it.

    Args:
        raw: ``(waveform (C, T) or (T,), rate)`` as the audio readers return it, or a waveform already
            at ``sample_rate``.
        sample_rate: The model's rate (``AudioInput.sample_rate``).

    The spec's transform, given the result, cuts the same clips and computes the same filterbanks as
    given ``raw`` itself, without resampling again.
    """
    wav, rate = raw if isinstance(raw, tuple) else (raw, sample_rate)
    wav = to_mono(torch.as_tensor(np.asarray(wav), dtype=torch.float32))
    return resample(wav, rate, sample_rate)


def prepare(modality: str, raw: Any, cfg: Any) -> Any:
    """What the data side hands ``transform`` for a decoded file: audio at the model's rate, others as read."""
    return mono_at_rate(raw, cfg.sample_rate) if modality == AUDIO else raw


class DecodedAudio(Mapping[Path, Tensor]):
    """Audio files decoded once (at startup) and kept as mono float32 at the model's sample rate.

    Filled from the threads that check every file (``keep``), up to ``budget_bytes``; files beyond the
    budget are decoded again at each use (still resampled with the cached kernel). Read-only once filled.

    Args:
        sample_rate: The model's audio rate.
        budget_bytes: At most this many bytes of waveforms are kept.
    """

    def __init__(self, sample_rate: int, budget_bytes: float) -> None:
        self.sample_rate, self.budget = int(sample_rate), float(budget_bytes)
        self._waves: dict[Path, Tensor] = {}
        self.bytes, self.over_budget = 0, 0
        self._lock = threading.Lock()

    def keep(self, modality: str, path: Path, raw: Any) -> None:
        """Scan callback: keep ``raw`` (a decoded ``modality`` file) if it is audio and fits the budget."""
        if modality != AUDIO:
            return
        with self._lock:
            if Path(path) in self._waves:
                return
            if self.bytes >= self.budget:  # full: skip the resampling as well
                self.over_budget += 1
                return
        wave = mono_at_rate(raw, self.sample_rate)
        with self._lock:
            if self.bytes + wave.nbytes > self.budget:
                self.over_budget += 1
                return
            self._waves[Path(path)] = wave
            self.bytes += wave.nbytes

    def __getitem__(self, path: Path) -> Tensor:
        return self._waves[Path(path)]

    def __iter__(self):
        return iter(self._waves)

    def __len__(self) -> int:
        return len(self._waves)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers started by spawn get a copy, no lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def summary(self) -> str:
        text = f"kept {len(self)} audio file(s) decoded at {self.sample_rate} Hz ({self.bytes / 2**20:.1f} MiB)"
        if self.over_budget:
            text += f"; {self.over_budget} more over the budget are decoded at each use"
        return text
