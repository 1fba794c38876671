"""Training-time augmentation per modality, on model input, random per (seed, step, sample).

Small paired datasets are memorised within a few hundred steps; augmentation is what lets them
generalise. ``modalities.<m>.augment`` turns it on for one modality:

    modalities.image.augment=default                                  # the preset below
    modalities.audio.augment='{gain_db: 6, masks: 2, time_mask: 0.1}'  # exactly these, the rest off
    modalities.text.augment=null                                      # off (the default)

========  =====================================================================  ==========================
modality  keys (what each does)                                                  ``default``
========  =====================================================================  ==========================
image     crop_scale: random resized crop, area in [crop_scale, 1], aspect 3:4 to  crop_scale 0.5, flip 0.5,
          4:3 (torchvision v2); flip: probability of a horizontal flip; jitter:    jitter 0.3
          brightness, contrast and saturation factors in [1 - j, 1 + j] (on the
          un-normalised RGB); noise: Gaussian std in model-input units
depth     crop_scale, flip, noise (as image)                                     crop_scale 0.5, flip 0.5,
                                                                                 noise 0.05
thermal   crop_scale, flip, noise                                                crop_scale 0.5, flip 0.5,
                                                                                 noise 0.05
audio     gain_db: level change in [-g, g] dB (a constant on the log-mel);      gain_db 6, time_shift 0.1,
          time_shift: circular shift by up to that fraction of the frames;       masks 2, freq_mask 0.15,
          masks: SpecAugment masks of each kind; freq_mask / time_mask: widest   time_mask 0.1, noise 0.05
          mask as a fraction of the mel bins / frames (set to the normalised
          mean, 0); noise: Gaussian std on the normalised log-mel
imu       rotate: the sensor frame turned about a random axis by up to that        rotate 0.1, scale 0.1,
          fraction of 180 degrees (accelerometer and gyroscope together; 1 is    noise 0.05
          any orientation); scale: per-sensor factor in [1 - s, 1 + s];
          time_shift: circular shift fraction; noise: Gaussian std
text      word_dropout: each word left out with this probability (one word at    word_dropout 0.1
          least is kept; start/end tokens never), for the byte, CLIP BPE and
          transformers (WordPiece, SentencePiece, byte-level BPE) tokenizers
========  =====================================================================  ==========================

How it is random. Every sample of a training step gets its own generator, seeded from
``(seed, step, edge, modality, row of the global batch)``; so a resumed run augments exactly as an
uninterrupted one, and two DDP ranks augment their halves of the global batch exactly as one process
does the whole batch. Augmentation runs only on training batches (validation and test never see it),
after the modality's transform, in the DataLoader workers. A modality served from the frozen-feature
cache cannot be augmented (the cache holds one feature per sample id): that combination is refused.

Other modalities register their own with :func:`register_augmenter`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bindspace.errors import ConfigError

Augment = dict[str, float]


@dataclass(frozen=True)
class Augmenter:
    """One modality's augmentation: its keys with their valid ranges, its preset, and the function.

    ``apply(x, cfg, aug, generators)``: ``x`` the model input of a batch (a tensor with the sample
    axis first, or a dict of such tensors), ``cfg`` the modality's input config, ``aug`` the
    validated settings, ``generators`` one per row. Returns the augmented batch (may work in place).
    """

    keys: Mapping[str, tuple[float, float]]  # key -> (low, high), inclusive
    default: Mapping[str, float]
    apply: Callable[[Any, Any, Augment, Sequence[torch.Generator]], Any]


AUGMENTERS: dict[str, Augmenter] = {}


def register_augmenter(modality: str, augmenter: Augmenter) -> None:
    """Make ``modalities.<modality>.augment`` available (a plugin modality calls this at import)."""
    AUGMENTERS[modality] = augmenter


def parse_augment(modality: str, value: Any) -> Augment | None:
    """``modalities.<m>.augment`` -> the settings (``None``: off), checked key by key.

    Raises:
        ConfigError: an unknown preset or key (with the closest valid one), or a value out of range,
            naming ``modalities.<m>.augment``.
    """
    where = f"modalities.{modality}.augment"
    if value is None or value is False or value == "none" or value == {}:
        return None
    augmenter = AUGMENTERS.get(modality)
    if augmenter is None:
        raise ConfigError(
            f"{where}: {modality!r} has no augmentations (modalities with some: {sorted(AUGMENTERS)}; "
            "a plugin adds its own with bindspace.data.augment.register_augmenter)"
        )
    if value == "default" or value is True:
        return dict(augmenter.default)
    if isinstance(value, str):
        raise ConfigError(f"{where}={value!r}: use default, none, or a mapping of {sorted(augmenter.keys)}")
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be default, none or a mapping, got {value!r}")
    out: Augment = {}
    for key, raw in value.items():
        if key not in augmenter.keys:
            from bindspace.cli import did_you_mean

            raise ConfigError(
                f"{where}: unknown key {key!r}{did_you_mean(str(key), list(augmenter.keys))}; "
                f"{modality} takes {sorted(augmenter.keys)}"
            )
        low, high = augmenter.keys[key]
        number = float(raw) if isinstance(raw, int | float) else None
        if number is None or not low <= number <= high:
            raise ConfigError(f"{where}.{key} must be a number in [{low}, {high}], got {raw!r}")
        out[key] = number
    return out or None


def check_augment_input(modality: str, augment: Augment, input_cfg: Any) -> None:
    """What only the input config decides: text's word boundaries, IMU's sensor layout."""
    if modality == "text" and augment.get("word_dropout", 0.0) > 0:
        _word_rule(input_cfg.tokenizer)  # ConfigError for a tokenizer without word boundaries
    if modality == "imu" and augment.get("rotate", 0.0) > 0 and getattr(input_cfg, "channels", 6) != 6:
        raise ConfigError(
            f"modalities.imu.augment.rotate needs accelerometer xyz + gyroscope xyz (6 channels), "
            f"got modalities.imu.input.channels={input_cfg.channels}"
        )


def row_generators(seed: int, step: int, edge: int, modality: str, rows: Sequence[int]) -> list[torch.Generator]:
    """One generator per row of the global batch, seeded from ``(seed, step, edge, modality, row)`` alone."""
    gens = []
    for row in rows:
        digest = hashlib.blake2b(f"{seed}:{step}:{edge}:{modality}:{row}".encode(), digest_size=8).digest()
        gens.append(torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1)))
    return gens


def augment_batch(
    batch: Mapping[str, Any],
    settings: Mapping[str, Augment],
    configs: Mapping[str, Any],
    seed: int,
    step: int,
    edge: int,
    rows: Sequence[int],
) -> dict[str, Any]:
    """Augment the modalities of one edge batch that have settings; ``rows``: each row's global index."""
    out = dict(batch)
    for m, aug in settings.items():
        if m in out and aug:
            gens = row_generators(seed, step, edge, m, rows)
            out[m] = AUGMENTERS[m].apply(out[m], configs[m].input, aug, gens)
    return out


# ---- the built-in augmenters ----------------------------------------------------------------------
def _uniform(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=g))


def _crop_flip(x: Tensor, aug: Augment, g: torch.Generator) -> Tensor:
    """Random resized crop and horizontal flip of one ``(C, H, W)`` sample (torchvision's v2 functionals)."""
    from torchvision.transforms.v2 import functional as TF

    h, w = x.shape[-2:]
    if aug.get("crop_scale", 1.0) < 1.0:
        area = _uniform(g, aug["crop_scale"], 1.0) * h * w
        ratio = math.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3)))
        cw = min(w, max(1, round(math.sqrt(area * ratio))))
        ch = min(h, max(1, round(math.sqrt(area / ratio))))
        top, left = _randint(g, 0, h - ch), _randint(g, 0, w - cw)
        x = TF.resized_crop(x, top, left, ch, cw, [h, w], antialias=True)
    if _uniform(g) < aug.get("flip", 0.0):
        x = TF.horizontal_flip(x)
    return x


def _noise(x: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    if sigma > 0:
        x = x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x


def _image(x: Tensor, cfg: Any, aug: Augment, gens: Sequence[torch.Generator]) -> Tensor:
    from torchvision.transforms.v2 import functional as TF

    mean = torch.tensor(cfg.mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype).view(-1, 1, 1)
    rows = []
    for sample, g in zip(x, gens, strict=True):
        sample = _crop_flip(sample, aug, g)
        j = aug.get("jitter", 0.0)
        if j > 0:
            rgb = (sample * std + mean).clamp(0, 1)
            rgb = TF.adjust_brightness(rgb, _uniform(g, 1 - j, 1 + j))
            rgb = TF.adjust_contrast(rgb, _uniform(g, 1 - j, 1 + j))
            rgb = TF.adjust_saturation(rgb, _uniform(g, 1 - j, 1 + j))
            sample = (rgb - mean) / std
        rows.append(_noise(sample, aug.get("noise", 0.0), g))
    return torch.stack(rows)


def _single_channel(x: Tensor, cfg: Any, aug: Augment, gens: Sequence[torch.Generator]) -> Tensor:
    rows = [_noise(_crop_flip(s, aug, g), aug.get("noise", 0.0), g) for s, g in zip(x, gens, strict=True)]
    return torch.stack(rows)


def _audio(x: Tensor, cfg: Any, aug: Augment, gens: Sequence[torch.Generator]) -> Tensor:
    """Log-mel ``(B, ..., F, T)`` (standardised with ``cfg.mean``/``cfg.std``), every clip of a sample alike."""
    x = x.clone()
    f, t = x.shape[-2:]
    per_db = math.log(10.0) / 10.0 / cfg.std  # a power gain of 1 dB on the standardised natural-log mel
    for sample, g in zip(x, gens, strict=True):
        if aug.get("gain_db", 0.0) > 0:
            sample += _uniform(g, -aug["gain_db"], aug["gain_db"]) * per_db
        shift = round(aug.get("time_shift", 0.0) * t)
        if shift > 0:
            sample.copy_(torch.roll(sample, _randint(g, -shift, shift), dims=-1))
        for _ in range(int(aug.get("masks", 0))):
            for axis, size, key in ((-2, f, "freq_mask"), (-1, t, "time_mask")):
                width = _randint(g, 0, int(aug.get(key, 0.0) * size))
                if width:
                    start = _randint(g, 0, size - width)
                    sample.narrow(axis, start, width).zero_()
        if aug.get("noise", 0.0) > 0:
            sample += aug["noise"] * torch.randn(sample.shape, generator=g, dtype=sample.dtype)
    return x


def _rotation(g: torch.Generator, largest: float) -> Tensor:
    """A rotation about a uniformly random axis by an angle uniform in ``[0, largest * pi]`` (Rodrigues)."""
    axis = torch.nn.functional.normalize(torch.randn(3, generator=g, dtype=torch.float64), dim=0)
    angle = _uniform(g, 0.0, largest * math.pi)
    k = torch.zeros(3, 3, dtype=torch.float64)
    k[0, 1], k[0, 2], k[1, 2] = -axis[2], axis[1], -axis[0]
    k = k - k.T
    return (torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)).float()


def _imu(x: Tensor, cfg: Any, aug: Augment, gens: Sequence[torch.Generator]) -> Tensor:
    """``(B, 6, T)``: accelerometer xyz then gyroscope xyz, each triad scaled by one constant (so a
    rotation of the scaled signal is the rotation of the physical one)."""
    x = x.clone()
    t = x.shape[-1]
    for sample, g in zip(x, gens, strict=True):
        if aug.get("rotate", 0.0) > 0:
            rot = _rotation(g, aug["rotate"]).to(sample.dtype)
            sample[:3] = rot @ sample[:3]
            sample[3:6] = rot @ sample[3:6]
        s = aug.get("scale", 0.0)
        if s > 0:
            sample[:3] *= _uniform(g, 1 - s, 1 + s)
            sample[3:6] *= _uniform(g, 1 - s, 1 + s)
        shift = round(aug.get("time_shift", 0.0) * t)
        if shift > 0:
            sample.copy_(torch.roll(sample, _randint(g, -shift, shift), dims=-1))
        if aug.get("noise", 0.0) > 0:
            sample += aug["noise"] * torch.randn(sample.shape, generator=g, dtype=sample.dtype)
    return x


# ---- text: word dropout on token ids ------------------------------------------------------------
@lru_cache(maxsize=8)
def _word_rule(tokenizer: str) -> tuple[str, frozenset[int], Any]:
    """(kind, special ids, per-id table) for finding word starts in a tokenizer's ids."""
    from bindspace.modalities.text import BOS, BYTE_OFFSET, CLIP_BPE, EOS, hf_tokenizer

    if tokenizer == "bytes":
        return "bytes", frozenset({BOS, EOS}), ord(" ") + BYTE_OFFSET
    if tokenizer == CLIP_BPE:
        from bindspace.modalities.clip_bpe import END, END_OF_WORD, START, clip_bpe

        bpe = clip_bpe()
        ends = np.zeros(max(END, START) + 1, bool)
        for symbol, i in bpe.ids.items():
            ends[i] = symbol.endswith(END_OF_WORD)
        return "ends", frozenset({START, END}), ends
    tok = hf_tokenizer(tokenizer)
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    if any(p.startswith("##") for p in pieces if p):
        starts = np.array([not (p or "").startswith("##") for p in pieces])
    elif any((p or "").startswith(("\u2581", "\u0120")) for p in pieces):
        starts = np.array([(p or "").startswith(("\u2581", "\u0120")) for p in pieces])
    else:
        raise ConfigError(f"modalities.text.augment.word_dropout: tokenizer {tokenizer!r} marks no word boundaries")
    return "starts", frozenset(tok.all_special_ids), starts


def _word_ids(ids: np.ndarray, kind: str, table: Any) -> np.ndarray:
    """Word number of each (non-special) token of one sequence."""
    if kind == "bytes":  # a space belongs to the word before it
        space = ids == table
        return np.concatenate([[0], np.cumsum(space[:-1])])
    if kind == "ends":
        ends = table[ids]
        return np.concatenate([[0], np.cumsum(ends[:-1])])
    starts = table[ids].copy()
    starts[0] = True
    return np.cumsum(starts) - 1


def _text(x: Mapping[str, Tensor], cfg: Any, aug: Augment, gens: Sequence[torch.Generator]) -> dict[str, Tensor]:
    p = aug.get("word_dropout", 0.0)
    if p <= 0:
        return dict(x)
    kind, specials, table = _word_rule(cfg.tokenizer)
    ids, mask = x["input_ids"].clone(), x["attention_mask"].clone()
    pad = 0
    for row, g in enumerate(gens):
        length = int(mask[row].sum())
        seq = ids[row, :length].numpy()
        special = np.isin(seq, list(specials))
        body = np.flatnonzero(~special)
        if len(body) == 0:
            continue
        words = _word_ids(seq[body], kind, table)
        count = int(words.max()) + 1
        drop = torch.rand(count, generator=g).numpy() < p
        if drop.all():
            drop[int(torch.randint(count, (), generator=g))] = False  # one word at least
        keep = np.ones(length, bool)
        keep[body[drop[words]]] = False
        kept = seq[keep]
        ids[row] = pad
        ids[row, : len(kept)] = torch.from_numpy(kept)
        mask[row] = 0
        mask[row, : len(kept)] = 1
    return {**x, "input_ids": ids, "attention_mask": mask}


_IMAGE_KEYS = {"crop_scale": (0.05, 1.0), "flip": (0.0, 1.0), "noise": (0.0, 10.0)}
register_augmenter(
    "image",
    Augmenter({**_IMAGE_KEYS, "jitter": (0.0, 1.0)}, {"crop_scale": 0.5, "flip": 0.5, "jitter": 0.3}, _image),
)
for _name in ("depth", "thermal"):
    register_augmenter(_name, Augmenter(_IMAGE_KEYS, {"crop_scale": 0.5, "flip": 0.5, "noise": 0.05}, _single_channel))
register_augmenter(
    "audio",
    Augmenter(
        {
            "gain_db": (0.0, 60.0),
            "time_shift": (0.0, 1.0),
            "masks": (0, 10),
            "freq_mask": (0.0, 1.0),
            "time_mask": (0.0, 1.0),
            "noise": (0.0, 10.0),
        },
        {"gain_db": 6.0, "time_shift": 0.1, "masks": 2, "freq_mask": 0.15, "time_mask": 0.1, "noise": 0.05},
        _audio,
    ),
)
register_augmenter(
    "imu",
    Augmenter(
        {"rotate": (0.0, 1.0), "scale": (0.0, 1.0), "time_shift": (0.0, 1.0), "noise": (0.0, 10.0)},
        {"rotate": 0.1, "scale": 0.1, "noise": 0.05},
        _imu,
    ),
)
register_augmenter("text", Augmenter({"word_dropout": (0.0, 1.0)}, {"word_dropout": 0.1}, _text))
