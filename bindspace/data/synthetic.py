"""Procedural six-modality benchmark: every modality renders the same latent scene.

A scene is a class (a coloured shape) plus six instance factors in [0, 1). Every modality sees the
class and a subset of the factors (``VISIBLE_FACTORS``) through its own independent noise, so
cross-modal retrieval has to match instances, not only classes. Everything is a pure function of
(seed, scene_id, modality): no files, and a scene renders identically in any batch, worker or rank.

Two versions of the renderer (``SyntheticConfig.version``) show the same scenes (classes, factors,
shapes, colours, textures, motion, sound, captions) and differ in where sensor noise comes from:
- 1, the data of the synthetic numbers published until 2026-12-04: each scene's noise from its own generator
  (``SFC64(SeedSequence([seed, id, stream]))``) and the image background from 192 values of it;
- 2, the default since then and the data of every synthetic number in the README and docs, cheaper to
  generate (``make bench`` (d)): each scene's noise cut from one seeded noise bank per
  modality at a per-scene offset, and the image clutter drawn from the counter-based hash. Noise has
  the same distribution (uniform, unit variance) and amplitude; two scenes whose offsets fall close
  share part of their pixel noise, shifted (about 2% of image pairs), never their clutter.

Example:
    scenes = SyntheticScenes(SyntheticConfig(), seed=0)
    images = scenes.render("image", range(256))  # (256, 3, 64, 64) float32 in [0, 1]
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from bindspace.data.scene_rng import scene_words

MODALITIES = ("image", "text", "audio", "depth", "thermal", "imu")  # rendered here; plugins render themselves
FACTORS = ("x", "y", "size", "orientation", "speed", "temperature")
# What each modality can recover besides the class; text sees its factors quantised to three words.
VISIBLE_FACTORS: dict[str, tuple[str, ...]] = {
    "image": ("x", "y", "size", "orientation"),
    "depth": ("x", "y", "size", "orientation"),
    "thermal": ("x", "y", "size", "orientation", "temperature"),
    "audio": ("size", "speed"),
    "imu": ("size", "orientation", "speed"),
    "text": ("x", "y", "size", "speed", "temperature"),
}
SHAPES = ("sphere", "cube", "cone", "star", "ring", "cross")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1), "purple": (0.6, 0.2, 0.8), "orange": (1.0, 0.5, 0.05),
    "cyan": (0.1, 0.85, 0.9), "white": (0.95, 0.95, 0.95),
}  # fmt: skip
_FACTOR_STREAM = 0  # noise streams of modality m are 1 + MODALITIES.index(m)
_CLUTTER = 8  # image background: random colour blobs on an 8 x 8 grid, upsampled
VERSIONS = (1, 2)  # of the renderer: see the module docstring
DEFAULT_VERSION = 2  # data.synthetic.version's default (configs/data/synthetic.yaml says the same; a test checks)
_MARKER = (0.7, 0.0)  # a painted dot in the object frame: makes orientation visible for any shape

# Audio timbre per shape: partial frequency ratios and amplitudes (harmonic, odd, bell, fifths, ...).
_PARTIALS = np.array([
    [[1, 2, 3, 4, 5, 6], [1, .5, .33, .25, .2, .17]],
    [[1, 3, 5, 7, 9, 11], [1, .33, .2, .14, .11, .09]],
    [[1, 2.76, 5.40, 8.93, 0, 0], [1, .6, .4, .25, 0, 0]],
    [[1, 1.5, 2, 3, 4, 0], [1, .8, .6, .4, .3, 0]],
    [[1, 2, 4, 8, 0, 0], [1, .7, .5, .35, 0, 0]],
    [[1, 1.19, 2.32, 4.25, 6.63, 0], [1, .9, .5, .3, .2, 0]],
], dtype=np.float32)  # fmt: skip  # (shape, 2, partial)
# IMU spin axis per shape (gyro); the linear shake runs along the next axis in the table.
_AXES = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0], [0.7, 0.7, 0], [0, 0.7, 0.7], [0.7, 0, 0.7]], np.float32)


def _frac(x: np.ndarray) -> np.ndarray:
    """x mod 1; numpy's float `%` is ~15x slower because it handles signs and infinities."""
    return x - np.floor(x)


def _q_sphere(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sqrt(u * u + v * v)


def _q_cube(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) / 0.8


def _q_cone(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral triangle with a vertex on +u, so the orientation marker lies inside it.
    return np.maximum(np.maximum(-u, 0.5 * u + 0.866 * v), 0.5 * u - 0.866 * v) / 0.5


def _q_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho = np.sqrt(u * u + v * v)
    c = u / (rho + 1e-6)
    cos5 = ((16 * c * c - 20) * c * c + 5) * c  # Chebyshev T5: cos(5 theta) without atan2
    return rho / (0.62 + 0.38 * cos5)


def _q_ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(np.sqrt(u * u + v * v) - 0.68) / 0.32


def _q_cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au, av / 0.32), np.maximum(au / 0.32, av)) / 0.95


# Each q(u, v) is 0 at the shape's core and 1 on its outline, in object-frame coordinates.
_SHAPE_Q = (_q_sphere, _q_cube, _q_cone, _q_star, _q_ring, _q_cross)
# Depth relief per shape as a function of q in [0, 1]: dome, bevelled box, cone, ...
_RELIEF = (
    lambda q: np.sqrt(1 - q * q), lambda q: np.minimum(1, 4 * (1 - q)), lambda q: 1 - q,
    lambda q: 1 - q, lambda q: np.sqrt(1 - q * q), lambda q: np.minimum(1, 4 * (1 - q)),
)  # fmt: skip
# Surface texture per colour (image brightness, depth bumps), in [0, 1].
_TEXTURES = (
    lambda u, v, q: 0.5 + 0.5 * np.cos(7 * u), lambda u, v, q: 0.5 + 0.5 * np.cos(6 * u) * np.cos(6 * v),
    lambda u, v, q: 0.5 + 0.5 * np.cos(9 * q), lambda u, v, q: np.full_like(u, 0.8),
    lambda u, v, q: 0.5 + 0.5 * np.cos(5 * (u + v)), lambda u, v, q: np.clip(0.5 + 0.5 * u, 0, 1),
    lambda u, v, q: (np.cos(7 * u) * np.cos(7 * v)) ** 2, lambda u, v, q: 0.5 + 0.25 * (np.cos(7 * u) + np.cos(7 * v)),
)  # fmt: skip
# Heat pattern per colour: hot core, hot rim, stripes, hot back, uniform, checks, rings, spots.
_HEAT = (
    lambda u, v, q: 1 - q * q, lambda u, v, q: q * q, lambda u, v, q: 0.5 + 0.5 * np.cos(6 * v),
    lambda u, v, q: np.clip(0.5 - 0.5 * u, 0, 1), lambda u, v, q: np.full_like(u, 0.7),
    lambda u, v, q: 0.5 + 0.5 * np.cos(5 * u) * np.cos(5 * v), lambda u, v, q: 0.5 + 0.5 * np.cos(10 * q),
    lambda u, v, q: (np.cos(5 * u) * np.cos(5 * v)) ** 4,
)  # fmt: skip
# Audio note envelope per colour, of the phase within one note in [0, 1).
_ENVELOPES = (
    lambda p: np.exp(-8 * p), lambda p: p * p, lambda p: (p < 0.5).astype(p.dtype),
    lambda p: 0.55 + 0.45 * np.cos(2 * np.pi * p), lambda p: np.exp(-12 * _frac(2 * p)),
    lambda p: 1 - np.abs(2 * p - 1), lambda p: (p < 0.2).astype(p.dtype), lambda p: 0.8 * (p < 0.85),
)  # fmt: skip
# IMU motion waveform per colour, of the spin phase in radians, in [-1, 1].
_WAVEFORMS = (
    np.sin, lambda p: np.tanh(3 * np.sin(p)), lambda p: 2 * _frac(p / (2 * np.pi)) - 1,
    lambda p: 2 * np.abs(np.sin(p)) - 1, lambda p: (np.sin(p) + 0.5 * np.sin(2 * p)) / 1.3,
    lambda p: 2 / np.pi * np.arcsin(np.sin(p)), lambda p: np.sin(p) ** 3, lambda p: np.sin(p + np.sin(2 * p)),
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and noise of the procedural benchmark.

    Attributes:
        num_classes: Classes are colour x shape pairs, so at most len(SHAPES) * len(COLOURS) = 48.
        image_size: H = W for image, depth and thermal.
        audio_sample_rate: Waveform sample rate in Hz.
        audio_seconds: Clip length; also the pitch resolution (1 / seconds Hz), since partials are
            synthesised on FFT bins.
        imu_length: Samples per IMU window (T).
        imu_rate: IMU sample rate in Hz; with the spin rates of 0.5-3 Hz the default 2 s window
            holds 1-6 cycles, enough for speed to be readable.
        noise: Global multiplier on every modality's noise level (0 = clean).
        caption_dropout: Chance that a caption leaves out each attribute phrase (scaled by noise),
            so text is not a lossless code of the factors.
        version: Of the renderer (``VERSIONS``; the module docstring says how they differ). 2 (the
            default) is the data of the README's and docs' synthetic numbers; 1, of those published before.
    """

    num_classes: int = 16
    image_size: int = 64
    audio_sample_rate: int = 16000
    audio_seconds: float = 1.0
    imu_length: int = 200
    imu_rate: float = 100.0
    noise: float = 1.0
    caption_dropout: float = 0.2
    version: int = DEFAULT_VERSION

    def __post_init__(self) -> None:
        # Messages start with the field at fault (bindspace.config reports them as data.scene.<field>, or
        # data.synthetic.<field> for RENDERER_KEYS).
        if isinstance(self.version, bool) or self.version not in VERSIONS:
            raise ValueError(f"version must be one of {list(VERSIONS)}, got {self.version!r}")
        most = len(SHAPES) * len(COLOURS)
        if not _is_number(self.num_classes, integer=True) or not 2 <= self.num_classes <= most:
            raise ValueError(f"num_classes must be an integer in [2, {most}], got {self.num_classes!r}")
        if not _is_number(self.noise) or not self.noise >= 0:
            raise ValueError(f"noise must be a number >= 0, got {self.noise!r}")
        if not _is_number(self.caption_dropout) or not 0 <= self.caption_dropout <= 1:
            raise ValueError(f"caption_dropout must be a number in [0, 1], got {self.caption_dropout!r}")
        if self.image_size < 16 or self.imu_length < 1 or self.audio_sample_rate * self.audio_seconds < 64:
            raise ValueError(f"sizes too small to render anything meaningful: {self}")


def _is_number(value: Any, integer: bool = False) -> bool:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)


RENDERER_KEYS = ("version",)  # SyntheticConfig's fields set by data.synthetic (how scenes are drawn), not data.scene
# The run settings that decide which scenes a synthetic run draws and scores (besides the model's input sizes).
SCENE_SETTINGS = ("seed", "data.synthetic.version", "data.scene.num_classes", "data.scene.noise")


def scene_settings(run_config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``SCENE_SETTINGS`` of a run config (plain data, as composed or as stored in ``.hydra/config.yaml`` after
    :func:`bindspace.utils.config_migration.migrate_config`), defaults filled in; None when it is not a
    synthetic run (another ``data.name``) or not a mapping. Two runs with equal settings draw the same scenes."""
    if not isinstance(run_config, Mapping):
        return None
    data = run_config.get("data")
    data = data if isinstance(data, Mapping) else {}
    if data.get("name", "synthetic") != "synthetic":
        return None
    defaults = {
        "seed": 0,
        "data.synthetic.version": DEFAULT_VERSION,
        "data.scene.num_classes": SyntheticConfig.num_classes,
        "data.scene.noise": SyntheticConfig.noise,
    }
    out = {}
    for key in SCENE_SETTINGS:
        value: Any = run_config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        out[key] = defaults[key] if value is None else value
    return out


def scene_config(
    configs: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, renderer: Mapping[str, Any] | None = None
) -> SyntheticConfig:
    """The benchmark's config for a model: rendered at the model's input geometry (``configs``: modality
    name -> ModalityConfig), so transforms do no resampling on the hot path; ``overrides`` are ``data.scene``
    (what the scenes show), ``renderer`` is ``data.synthetic`` (``RENDERER_KEYS``: how they are drawn).

    Raises:
        ValueError: starting with the field at fault, e.g. ``version must be one of [1, 2], got 3``, or
            with the full key of a renderer key among the scene's (``data.scene.version``, its name before
            2026-12-04) or a scene key among the renderer's.
    """
    overrides, renderer = dict(overrides or {}), dict(renderer or {})
    misplaced = [k for k in overrides if k in RENDERER_KEYS] + [k for k in renderer if k not in RENDERER_KEYS]
    if misplaced:
        k = misplaced[0]
        raise ValueError(
            f"data.scene.{k} is now data.synthetic.{k} (the renderer's options moved there on 2026-12-04)"
            if k in RENDERER_KEYS
            else f"data.synthetic.{k}: not a renderer option; data.synthetic takes {list(RENDERER_KEYS)} "
            "(what the scenes show is data.scene)"
        )
    derived: dict[str, Any] = {}
    if "image" in configs:
        derived["image_size"] = configs["image"].input.size
    elif "depth" in configs:
        derived["image_size"] = configs["depth"].input.size
    if "audio" in configs:
        derived["audio_sample_rate"] = configs["audio"].input.sample_rate
        derived["audio_seconds"] = configs["audio"].input.clip_seconds
    if "imu" in configs:
        derived["imu_length"] = configs["imu"].input.length
    return SyntheticConfig(**{**derived, **overrides, **renderer})


_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_U64 = {k: np.uint64(k) for k in (11, 27, 30, 31, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, _GOLDEN)}


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective uint64 hash (wrap-around arithmetic is intended), in place."""
    z ^= z >> _U64[30]
    z *= _U64[0xBF58476D1CE4E5B9]
    z ^= z >> _U64[27]
    z *= _U64[0x94D049BB133111EB]
    z ^= z >> _U64[31]
    return z


def _mix64_int(z: int) -> int:
    """``_mix64`` of one Python int (a key shared by the whole batch)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _hash_uniform(seed: int, ids: np.ndarray, stream: int, n: int) -> np.ndarray:
    """Counter-based uniforms in [0, 1): (B, n), a pure function of (seed, id, stream, column)."""
    key = ids.astype(np.uint64)
    key ^= np.uint64(_mix64_int((seed + _GOLDEN) & _M64))
    key = _mix64(key)
    key ^= np.uint64(stream * 0x632BE59BD9B4E019 % 2**64)
    key = _mix64(key)
    bits = _mix64(key[:, None] + np.arange(1, n + 1, dtype=np.uint64) * _U64[_GOLDEN])
    bits >>= _U64[11]
    out = bits.astype(np.float64)
    out /= 2.0**53
    return out


_WORK = threading.local()
_SCRATCH_MAX_BYTES = 16 * 2**20  # per buffer: training batches of the tiny and small presets need a few MiB


def _scratch(slot: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """A work buffer of this thread, reused across renders; never part of a returned array.

    Fresh multi-megabyte temporaries cost a page fault per 4 KiB on every render (the allocator hands
    large blocks back to the OS when they are freed), more than the arithmetic done in them.
    """
    size = math.prod(shape)
    if size * np.dtype(dtype).itemsize > _SCRATCH_MAX_BYTES:  # a one-off large batch: not kept
        return np.empty(shape, dtype)
    buffers = _WORK.__dict__.setdefault("buffers", {})
    buf = buffers.get(slot)
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = buffers[slot] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _scene_noise(
    seed: int, ids: np.ndarray, stream: int, shape: tuple[int, ...], out: np.ndarray | None = None
) -> np.ndarray:
    """Zero-mean unit-variance noise of shape (B, *shape), one generator per scene.

    Uniform 16-bit noise cut from raw generator words: 3x faster than float draws and 7x faster than
    Gaussian ones, and sensor noise need not be Gaussian. Scene ``i`` draws from
    ``SFC64(SeedSequence([seed, ids[i], stream]))``, seeded for the whole batch at once (``scene_rng``).
    ``out`` (float32, (B, *shape)) receives the noise instead of a new array.
    """
    size = math.prod(shape)
    words = -(-size // 4)  # four int16 per 64-bit word
    raw = scene_words(seed, ids, stream, words, out=_scratch("noise.words", (len(ids), words), np.uint64))
    # int16 -> float32 is exact, so converting inside the multiply gives the same floats in one pass.
    out = np.empty((len(ids), *shape), np.float32) if out is None else out
    np.multiply(raw.view(np.int16)[:, :size], _NOISE_UNIT, out=out.reshape(len(ids), size))
    return out


_NOISE_UNIT = np.float32(math.sqrt(3.0) / 32768)  # int16 -> uniform noise of unit variance

# Version 2's shared noise. Generators and offsets use streams above every modality's (< 2**21).
_BANK_STREAM = 1 << 30  # generator of modality stream s's noise bank: scene_words(seed, [s], _BANK_STREAM)
_OFFSET_STREAM = 1 << 31  # per-scene offsets of stream s: _hash_uniform(seed, ids, _OFFSET_STREAM + s)
_BANK_MIN = 1 << 20  # noise values per bank (4 MiB of float32) at least ...
_BANK_SPAN = 64  # ... and at least this many times the longest noise field drawn from it


def _bank_size(field: int) -> int:
    return max(_BANK_MIN, 1 << (_BANK_SPAN * field - 1).bit_length())


@functools.lru_cache(maxsize=16)
def _noise_bank(seed: int, stream: int, size: int) -> np.ndarray:
    """(size,) float32 read-only uniform noise of unit variance: modality ``stream``'s bank (version 2)."""
    words = scene_words(seed, np.array([stream]), _BANK_STREAM, size // 4)[0]
    bank = np.multiply(words.view(np.int16), _NOISE_UNIT, dtype=np.float32)
    bank.flags.writeable = False
    return bank


@functools.lru_cache(maxsize=16)
def _scaled_bank(seed: int, stream: int, size: int, scale: float) -> np.ndarray:
    """``_noise_bank`` times ``scale``, kept: a renderer adds its slices without a multiply per scene."""
    bank = np.multiply(_noise_bank(seed, stream, size), np.float32(scale))
    bank.flags.writeable = False
    return bank


def _bank_noise(
    seed: int, ids: np.ndarray, stream: int, shape: tuple[int, ...], out: np.ndarray | None = None
) -> np.ndarray:
    """Version 2's ``_scene_noise``: scene ``i``'s noise is ``size`` consecutive values of the stream's bank,
    from an offset drawn for (seed, ids[i], stream). A gather, or into ``out`` (as ``_scene_noise``) one
    copy per scene."""
    size = math.prod(shape)
    bank = _noise_bank(seed, stream, _bank_size(size))
    starts = _positions(_hash_uniform(seed, ids, _OFFSET_STREAM + stream, 1)[:, 0], len(bank) - size + 1)
    fields = as_strided(bank, (len(bank) - size + 1, size), (bank.itemsize, bank.itemsize), writeable=False)
    if out is None:
        return fields[starts].reshape(len(ids), *shape)  # a gather: np.take would copy the whole strided view
    flat = out.reshape(len(ids), size)
    for row, start in enumerate(starts.tolist()):
        flat[row] = bank[start : start + size]
    return out


_NOISE = {1: _scene_noise, 2: _bank_noise}  # per renderer version: (seed, ids, stream, shape, out) -> noise


def _positions(draws: np.ndarray, count: int) -> np.ndarray:
    """(B,) int64 in [0, count) from (B,) uniforms in [0, 1)."""
    return np.minimum((draws * count).astype(np.int64), count - 1)


_CHUNK = 8  # scenes per pass in full-frame loops: a few hundred KiB, cache-sized


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _by_group(groups: np.ndarray, funcs: Sequence[Callable[..., np.ndarray]], *arrays: np.ndarray) -> np.ndarray:
    """out[i] = funcs[groups[i]](*arrays)[i], with one vectorised call per group present.

    Every func must return an array shaped like its first argument.
    """
    out = np.empty_like(arrays[0])
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        out[rows] = funcs[g](*(a[rows] for a in arrays))
    return out


def _by_run(groups: np.ndarray, funcs: Sequence[Callable[..., np.ndarray]], *arrays: np.ndarray) -> np.ndarray:
    """``_by_group`` for rows ordered so that equal groups come in a few runs: one call per run, on
    slices of the arrays (no rows copied in)."""
    out = np.empty_like(arrays[0])
    if not len(groups):
        return out
    bounds = [0, *(np.flatnonzero(groups[1:] != groups[:-1]) + 1).tolist(), len(groups)]
    for start, stop in itertools.pairwise(bounds):
        out[start:stop] = funcs[groups[start]](*(a[start:stop] for a in arrays))
    return out


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation matrix: upsampling is then two small matmuls."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.minimum(pos.astype(int), n_in - 2)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - (pos - lo)
    m[np.arange(n_out), lo + 1] = pos - lo
    return m


def renderable_modalities() -> list[str]:
    """Registered modalities the benchmark renders, in registry order: the six built-ins and every
    plugin whose spec implements ``render_synthetic``."""
    from bindspace.modalities import get_modality, list_modalities

    return [m for m in list_modalities() if m in MODALITIES or get_modality(m).renders_synthetic]


def _plugin_spec(modality: str) -> Any:
    from bindspace.modalities import get_modality, list_modalities

    if modality not in list_modalities() or not get_modality(modality).renders_synthetic:
        raise ValueError(f"the synthetic benchmark cannot render {modality!r}; it renders {renderable_modalities()}")
    return get_modality(modality)


class SceneNoise:
    """Deterministic randomness for one modality of a batch of scenes (what plugin renderers draw from).

    Every draw is a pure function of (seed, scene id, the modality's stream, the draw's position), so
    a scene renders identically in any batch, worker or rank.
    """

    def __init__(self, seed: int, ids: np.ndarray, stream: int, version: int = 1) -> None:
        self.seed, self.ids, self.stream, self.version = seed, ids, stream, version

    def uniform(self, n: int) -> np.ndarray:
        """(B, n) float64 uniforms in [0, 1), one row per scene."""
        return _hash_uniform(self.seed, self.ids, self.stream, n)

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        """(B, *shape) float32 zero-mean, unit-variance noise (uniformly distributed): one generator per scene
        (version 1), or cut from the stream's noise bank (version 2)."""
        return _NOISE[self.version](self.seed, self.ids, self.stream, tuple(shape))


# Every shape lies within this many object radii of its centre at q <= 1 (the cube's corners, 0.8 * sqrt 2;
# the other shapes reach 1), and q grows in proportion to distance, so coverage ends within REACH * q radii.
_REACH = 1.14
# Object windows per batch (``SyntheticScenes._poses``): scenes grouped by object size, each group on the window
# its largest object needs. At the default sizes (objects 6.4-12.8 px in radius in a 64 px frame) two groups
# cut the window pixels by a fifth, and the default step's image render by 0.7 ms of 18.4 (version 1) and 1.0 of
# 14.0 (version 2); three or four groups save no more, as each group costs a few dozen more numpy calls.
_SIZE_GROUPS = 2
_GROUP_MIN = 48  # scenes per group at least: below it (depth, thermal: 32) the calls cost more than they save


@dataclass(frozen=True)
class _Pose:
    """Object-frame geometry of a batch on a square window around each object (image, depth, thermal).

    Outside its window a scene's coverage ``alpha`` is exactly 0, so the renderers compute the object
    there only and blend it onto the full-frame background: the same floats as a full-frame render, on
    about a quarter of the pixels at the default sizes. Windows are ordered by shape, then colour
    (``order``), so that the per-shape and per-colour functions work on slices of the batch (``_by_run``).
    """

    u: np.ndarray  # (B, S, S) object-frame coordinates in units of the object radius
    v: np.ndarray  # (B, S, S)
    q: np.ndarray  # (B, S, S) 0 at the shape's core, 1 on its outline, > 1 outside
    r_px: np.ndarray  # (B, 1, 1) object radius in pixels, for anti-aliased edges
    marker: np.ndarray  # (B, S, S) in [0, 1], the orientation dot
    shape: np.ndarray  # (B,) index into SHAPES
    colour: np.ndarray  # (B,) index into COLOURS
    order: np.ndarray  # (B,) the frame (row of the batch) of each window
    top: np.ndarray  # (B,) first row of each scene's window
    left: np.ndarray  # (B,) first column
    size: int  # S, the window's side (the full frame when objects are that large)

    def alpha(self, edge_px: float) -> np.ndarray:
        """(B, S, S) coverage in [0, 1] with an edge ramp about edge_px pixels wide."""
        a = 1 - self.q
        a *= self.r_px
        a /= edge_px
        a += 0.5
        return np.clip(a, 0, 1, out=a)

    def blend(
        self, frame: np.ndarray, over: np.ndarray, alpha: np.ndarray, mix: bool = True, clip: bool = False
    ) -> np.ndarray:
        """Composite the object onto ``frame`` (B, ..., H, W) in place on each scene's window; returns ``frame``.

        ``mix``: ``frame + alpha * (over - frame)`` (the object replaces what is behind it), else
        ``frame + alpha * over`` (it adds to it). ``over`` (B, ..., S, S) is used as scratch. ``clip``:
        the windows' results are clipped to [0, 1] (rounding can put a mix of two such values an ulp out).
        """
        alpha = alpha[:, None] if over.ndim == 4 else alpha
        # Every window of every frame as one strided view (B, H - S + 1, W - S + 1, ..., S, S): the scenes'
        # windows are then one gather and one scatter, instead of three small operations per scene. Each
        # frame holds one window, so the scatter writes every pixel at most once.
        s, (h, w), st = self.size, frame.shape[-2:], frame.strides
        windows = as_strided(
            frame, (len(frame), h - s + 1, w - s + 1, *frame.shape[1:-2], s, s), (*st[:1], *st[-2:], *st[1:])
        )
        where = (self.order, self.top, self.left)
        below = windows[where]  # (B, ..., S, S), a copy
        if mix:
            over -= below
        over *= alpha
        below += over
        if clip:
            np.clip(below, 0, 1, out=below)
        windows[where] = below
        return frame


class SyntheticScenes:
    """An endless, deterministic set of six-modality scenes, indexed by integer scene id.

    Factors (all uniform in [0, 1)): x (left to right), y (top to bottom), size, orientation
    (fraction of a turn), speed (spin rate) and temperature; plus the class label.

    Args:
        config: Sizes and noise levels.
        seed: Non-negative integer; a different seed is a different benchmark.
    """

    def __init__(self, config: SyntheticConfig, seed: int = 0, inputs: Mapping[str, Any] | None = None):
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.config = config
        self.seed = int(seed)
        self.inputs = dict(inputs or {})  # plugin modalities' input configs (their render geometry)
        # Fewest shapes that still give every class its own (shape, colour) pair.
        self._num_shapes = min(len(SHAPES), math.ceil(math.sqrt(config.num_classes)))
        n = config.image_size
        self._grid = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1  # pixel centres in [-1, 1]
        self._upsample = _interp_matrix(n, _CLUTTER)

    def class_names(self) -> list[str]:
        """Human-readable class names such as "red sphere", indexed by label."""
        colours = list(COLOURS)
        return [
            f"{colours[c // self._num_shapes]} {SHAPES[c % self._num_shapes]}" for c in range(self.config.num_classes)
        ]

    def factors(self, scene_ids: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Latent factors of the scenes.

        Args:
            scene_ids: (B,) non-negative integer scene ids.

        Returns:
            "label" as (B,) int64 and every name in FACTORS as (B,) float32 in [0, 1).
        """
        ids = self._check_ids(scene_ids)
        draws = _hash_uniform(self.seed, ids, _FACTOR_STREAM, 1 + len(FACTORS))
        out = {"label": np.floor(draws[:, 0] * self.config.num_classes).astype(np.int64)}
        out.update({name: draws[:, i + 1].astype(np.float32) for i, name in enumerate(FACTORS)})
        return out

    def labels(self, scene_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """(B,) int64 class labels of the scenes."""
        return self.factors(scene_ids)["label"]

    def render(self, modality: str, scene_ids: Sequence[int] | np.ndarray) -> np.ndarray | list[str]:
        """Render one modality of a batch of scenes.

        Args:
            modality: One of MODALITIES.
            scene_ids: (B,) non-negative integer scene ids.

        Returns:
            image (B, 3, H, W) float32 in [0, 1]; depth (B, H, W) float32 metres in [0.5, 10];
            thermal (B, H, W) float32 in [0, 1]; audio (B, T) float32 peak-normalised to [-1, 1];
            imu (B, 6, T) float32, accelerometer xyz in m/s^2 then gyroscope xyz in rad/s;
            text a list of B captions.

        Raises:
            ValueError: For an unknown modality or malformed scene ids.
        """
        ids = self._check_ids(scene_ids)
        if modality in MODALITIES:
            return getattr(self, f"_{modality}")(ids, self.factors(ids))
        spec = _plugin_spec(modality)
        noise = SceneNoise(self.seed, ids, self._stream(modality), self.config.version)
        return spec.render_synthetic(self.factors(ids), noise, self.inputs.get(modality) or spec.default_config().input)

    def _check_ids(self, scene_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(scene_ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"scene_ids must be a 1-D integer sequence, got shape {ids.shape} dtype {ids.dtype}")
        if ids.size and ids.min() < 0:
            raise ValueError("scene_ids must be non-negative")
        return ids.astype(np.int64)

    def _noise(self, ids: np.ndarray, stream: int, shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """(B, *shape) unit-variance sensor noise of this renderer's version (``SceneNoise.normal``)."""
        return _NOISE[self.config.version](self.seed, ids, stream, shape, out=out)

    def _stream(self, modality: str) -> int:
        if modality in MODALITIES:
            return 1 + MODALITIES.index(modality)
        # A plugin's stream follows from its name alone, whatever else is installed.
        return 1 + len(MODALITIES) + zlib.crc32(modality.encode()) % 2**20

    def _poses(self, f: dict[str, np.ndarray], edge_px: float) -> list[_Pose]:
        """The batch's object windows, as a few groups of scenes by object size, each group on the window its
        largest object needs (``_SIZE_GROUPS``): every pixel where a coverage ramp of ``edge_px`` is non-zero,
        on a fifth fewer pixels than one window for the batch's largest object. The groups hold
        disjoint frames, and every pixel value is computed scene by scene, so the grouping changes no value."""
        b = len(f["label"])
        groups = max(1, min(_SIZE_GROUPS, b // _GROUP_MIN))
        r_px = (0.2 + 0.2 * f["size"]) * (self.config.image_size / 2)  # as _pose_of computes it
        group = np.empty(b, np.int64)
        group[np.argsort(r_px, kind="stable")] = np.arange(b) * groups // max(b, 1)
        shape, colour = f["label"] % self._num_shapes, f["label"] // self._num_shapes
        order = np.lexsort((colour, shape, group))  # by size group, then shape, then colour
        bounds = np.searchsorted(group[order], np.arange(groups + 1))
        return [self._pose_of(f, order[lo:hi], edge_px) for lo, hi in itertools.pairwise(bounds.tolist()) if hi > lo]

    def _pose_of(self, f: dict[str, np.ndarray], order: np.ndarray, edge_px: float) -> _Pose:
        """Geometry of the scenes ``order`` (rows of the batch, in window order) on one window size."""
        g, n = self._grid, self.config.image_size
        f = {k: f[k][order] for k in ("label", "x", "y", "size", "orientation")}
        cx = (f["x"] * 2 - 1) * 0.6  # keeps the largest object inside the frame
        cy = (f["y"] * 2 - 1) * 0.6
        radius = 0.2 + 0.2 * f["size"]  # in half-widths
        r_px = radius * (n / 2)
        # alpha > 0 needs q < 1 + edge_px / (2 r_px): closer than REACH * (r_px + edge_px / 2) pixels to
        # the centre (0.01 px more absorbs rounding). Pixel j's centre lies at j + 0.5, the object's at
        # c = (x + 1) n / 2, so the pixels within ext of it are ceil(c - ext - 0.5) .. (at most ceil(2 ext)).
        ext = _REACH * (float(r_px.max(initial=0.0)) + edge_px / 2) + 0.01
        size = min(n, math.ceil(2 * ext))
        first = lambda c: np.ceil((c.astype(np.float64) + 1) * (n / 2) - ext - 0.5).astype(np.int64)  # noqa: E731
        top, left = np.clip(first(cy), 0, n - size), np.clip(first(cx), 0, n - size)
        span = np.arange(size)
        gx, gy = g[left[:, None] + span], g[top[:, None] + span]  # (B, S) pixel centres of the window
        theta = (2 * np.pi * f["orientation"])[:, None, None]
        radius = radius[:, None, None]
        cos, sin = np.cos(theta) / radius, np.sin(theta) / radius
        dx, dy = gx[:, None, :] - cx[:, None, None], gy[:, :, None] - cy[:, None, None]  # (B, 1, S), (B, S, 1)
        # Scale the thin factors first: each (B, S, S) array then costs a single addition.
        u, v = cos * dx + sin * dy, cos * dy - sin * dx  # (B, S, S)
        shape, colour = f["label"] % self._num_shapes, f["label"] // self._num_shapes
        q = _by_run(shape, _SHAPE_Q, u, v)
        # exp(-((u - mu) ** 2 + (v - mv) ** 2) / 0.02), in place
        marker = u - _MARKER[0]
        np.square(marker, out=marker)
        marker += np.square(v - _MARKER[1], out=_scratch("pose.marker", u.shape))
        np.negative(marker, out=marker)
        marker /= 0.02
        # Far from the dot exp() underflows to subnormals, about 10x slower; below e^-87 (1.6e-38) every
        # use of the marker rounds to the same pixel value, so the argument is floored there.
        np.maximum(marker, -87.0, out=marker)
        np.exp(marker, out=marker)
        return _Pose(u, v, q, r_px[:, None, None], marker, shape, colour, order, top, left, size)

    def _colours(self, ids: np.ndarray, f: dict[str, np.ndarray], stream: int) -> np.ndarray:
        """(B, 3) each scene's object colour, jittered per scene, in batch order."""
        cfg = self.config
        jitter = (_hash_uniform(self.seed, ids, stream, 4) * 2 - 1).astype(np.float32)
        colour = np.array(list(COLOURS.values()), np.float32)[f["label"] // self._num_shapes]  # (B, 3)
        return np.clip(colour + 0.08 * cfg.noise * jitter[:, :3], 0, 1) * (1 + 0.15 * cfg.noise * jitter[:, 3:])

    def _object_colour(self, colours: np.ndarray, pose: _Pose) -> np.ndarray:
        """(B, 3, S, S) the object's colour (``colours``, from ``_colours``) times its shading (texture,
        orientation dot), in window order."""
        colour = colours[pose.order]  # in window order
        # shade = (0.55 + 0.45 * texture) * (1 - 0.8 * marker), in place; (B, S, S)
        shade = _by_run(pose.colour, _TEXTURES, pose.u, pose.v, np.minimum(pose.q, 1))
        shade *= 0.45
        shade += 0.55
        dot = np.multiply(pose.marker, 0.8, out=_scratch("image.dot", shade.shape))
        shade *= np.subtract(1, dot, out=dot)
        return colour[:, :, None, None] * shade[:, None]

    def _image(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
        if self.config.version == 2:
            return self._image_v2(ids, f)
        cfg, n, poses = self.config, self.config.image_size, self._poses(f, 1.0)
        stream = self._stream("image")
        k = 3 * _CLUTTER**2
        words = -(-(k + 3 * n * n) // 4)
        raw = scene_words(self.seed, ids, stream, words, out=_scratch("image.words", (len(ids), words), np.uint64))
        field = raw.view(np.int16)  # the clutter's k values, then 3 * n * n pixel noise values per scene
        clutter = np.multiply(field[:, :k], _NOISE_UNIT, dtype=np.float32).reshape(-1, 3, _CLUTTER, _CLUTTER)
        # Mostly grey clutter, so the object stays the most saturated thing in the frame.
        clutter = 0.6 * clutter + 0.4 * clutter.mean(axis=1, keepdims=True)
        image = np.empty((len(ids), 3, n, n), np.float32)  # the background, a few scenes at a time
        for rows in _chunks(len(ids), _CHUNK):
            np.matmul(self._upsample @ clutter[rows], self._upsample.T, out=image[rows])
            image[rows] *= 0.12 * cfg.noise
            image[rows] += 0.45
        # The object over the background on its window; elsewhere alpha is 0 and the pixel is the background.
        colours = self._colours(ids, f, stream)
        for pose in poses:
            pose.blend(image, self._object_colour(colours, pose), pose.alpha(1.0))
        # Pixel noise, a few scenes at a time so that each pass over them stays in cache.
        noise = field[:, k : k + 3 * n * n].reshape(image.shape)
        for rows in _chunks(len(ids), _CHUNK):
            pixel_noise = np.multiply(noise[rows], _NOISE_UNIT, out=_scratch("image.noise", noise[rows].shape))
            pixel_noise *= 0.03 * cfg.noise
            image[rows] += pixel_noise
            np.clip(image[rows], 0, 1, out=image[rows])
        return image

    def _image_v2(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
        """Version 2: version 1's picture (a clutter background of 8 x 8 colour blobs, the object, pixel noise)
        with the clutter drawn from the counter-based hash (192 values a scene) and scaled before it is
        upsampled, and the pixel noise cut from the image bank: the full frame costs an upsampling and an
        addition. The background needs no clip up to noise 2 (it stays within [0.19, 0.71] at 1); the
        object's window gets its own noise and its clip, and replaces the background's noise where it
        covers it. Noise is indexed by absolute pixel, so a scene renders the same in any batch."""
        cfg, n = self.config, self.config.image_size
        stream, b = self._stream("image"), len(ids)
        k, field = 3 * _CLUTTER**2, 3 * n * n
        draws = _hash_uniform(self.seed, ids, _OFFSET_STREAM + stream, 1 + k)  # noise offset, clutter
        clutter = ((draws[:, 1:] * 2 - 1) * math.sqrt(3)).astype(np.float32).reshape(b, 3, _CLUTTER, _CLUTTER)
        # Mostly grey clutter, so the object stays the most saturated thing in the frame; scaled and offset
        # before upsampling (the interpolation's rows sum to 1), so the full frame is written once.
        clutter = 0.6 * clutter + 0.4 * clutter.mean(axis=1, keepdims=True)
        clutter *= 0.12 * cfg.noise
        clutter += 0.45
        image = np.matmul(np.matmul(self._upsample, clutter), self._upsample.T)  # (B, 3, n, n)
        bank = _scaled_bank(self.seed, stream, _bank_size(field), 0.03 * cfg.noise)
        starts = _positions(draws[:, 0], len(bank) - field + 1)
        frames = image.reshape(b, field)
        for row, start in enumerate(starts.tolist()):
            frames[row] += bank[start : start + field]
        if (0.12 + 0.03) * math.sqrt(3) * cfg.noise > 0.45:  # noise above ~2.1x can leave [0, 1]
            np.clip(image, 0, 1, out=image)
        # The object with its own pixel noise: its frame's noise on its window, from the same offset.
        colours = self._colours(ids, f, stream)
        for pose in self._poses(f, 1.0):
            over = self._object_colour(colours, pose)
            s, isz = pose.size, bank.itemsize
            count = len(bank) - 2 * n * n - (s - 1) * (n + 1)  # every start below it keeps the window in the bank
            windows = as_strided(bank, (count, 3, s, s), (isz, n * n * isz, n * isz, isz), writeable=False)
            over += windows[starts[pose.order] + pose.top * n + pose.left]  # (B, 3, S, S), a gather
            np.clip(over, 0, 1, out=over)
            pose.blend(image, over, pose.alpha(1.0), clip=True)
        return image

    def _depth(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
        cfg, g = self.config, self._grid
        stream = self._stream("depth")
        wall = (_hash_uniform(self.seed, ids, stream, 3) * 2 - 1).astype(np.float32)[:, :, None, None]
        # far = 6.0 + noise * (tilted plane), in place: the wall, then the object pasted on it
        depth = wall[:, 0] + 0.8 * wall[:, 1] * g[None, None, :] + 0.8 * wall[:, 2] * g[None, :, None]
        depth *= cfg.noise
        depth += 6.0
        for pose in self._poses(f, 1.0):
            q = np.minimum(pose.q, 1)
            relief = _by_run(pose.shape, _RELIEF, q) + 0.5 * _by_run(pose.colour, _TEXTURES, pose.u, pose.v, q)
            # At 2.5 m a 60 degree camera sees 1.5 m per half-width; relief is as deep as the object is wide.
            radius_m = 1.5 * pose.r_px / (cfg.image_size / 2)
            near = 2.5 - radius_m * (relief + 0.6 * pose.marker)
            pose.blend(depth, near, pose.alpha(1.0))  # mixed edge pixels, like real sensors
        # Structured-light style noise grows with the square of the distance: depth += c * depth^2 * noise.
        grain = np.multiply(depth, 0.003 * cfg.noise, out=_scratch("depth.grain", depth.shape))
        grain *= depth
        grain *= self._noise(ids, stream, depth.shape[1:], out=_scratch("depth.noise", depth.shape))
        depth += grain
        return np.clip(depth, 0.5, 10.0, out=depth)

    def _thermal(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
        cfg, g = self.config, self._grid
        stream = self._stream("thermal")
        room = (_hash_uniform(self.seed, ids, stream, 3) * 2 - 1).astype(np.float32)[:, :, None, None]
        # ambient = 0.2 + 0.05 * noise * (tilted plane), in place
        thermal = room[:, 0] + room[:, 1] * g[None, None, :] + room[:, 2] * g[None, :, None]
        thermal *= 0.05 * cfg.noise
        thermal += 0.2
        for pose in self._poses(f, 2.5):
            heat = _by_run(pose.colour, _HEAT, pose.u, pose.v, np.minimum(pose.q, 1))
            # The heat pattern has a fixed contrast on top of the mean temperature, so cold objects
            # still show their class; the hottest spots of the hottest objects just reach 1.
            excess = (0.05 + 0.4 * f["temperature"][pose.order])[:, None, None] + 0.25 * heat + 0.1 * pose.marker
            pose.blend(thermal, excess, pose.alpha(2.5), mix=False)  # a wider ramp: thermal optics are blurry
        grain = self._noise(ids, stream, thermal.shape[1:], out=_scratch("thermal.noise", thermal.shape))
        grain *= 0.02 * cfg.noise
        thermal += grain
        return np.clip(thermal, 0, 1, out=thermal)

    def _audio(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
        cfg, stream = self.config, self._stream("audio")
        n, b = round(cfg.audio_sample_rate * cfg.audio_seconds), len(ids)
        # Scenes are synthesised grouped by envelope (colour), so that each group's rows are one slice
        # small enough to stay in cache through all the steps after the FFT; every row is computed on
        # its own and written to the caller's order at the end.
        order = np.argsort(f["label"] // self._num_shapes, kind="stable")
        ids, f = ids[order], {k: v[order] for k, v in f.items()}
        shape, colour = f["label"] % self._num_shapes, f["label"] // self._num_shapes
        phases = _hash_uniform(self.seed, ids, stream, 1 + _PARTIALS.shape[-1])  # note grid, partials
        f0 = 110.0 * 2.0 ** (2 * (1 - f["size"]))  # big objects sound low: 110-440 Hz
        ratios, amps = _PARTIALS[shape, 0], _PARTIALS[shape, 1]  # (B, P)
        # Synthesising on FFT bins (bin k is k / seconds Hz) makes all partials one inverse FFT.
        bins = np.rint(f0[:, None] * ratios * cfg.audio_seconds).astype(np.int64)
        ok = (amps > 0) & (bins > 0) & (bins < n // 2)
        spec = _scratch("audio.spectrum", (b, n // 2 + 1), np.complex64)
        spec.fill(0)
        cells = (np.arange(b)[:, None] * spec.shape[1] + bins)[ok]
        np.add.at(spec.reshape(-1), cells, (amps * np.exp(2j * np.pi * phases[:, 1:]) * (n / 2))[ok])
        wave = np.fft.irfft(spec, n=n, axis=-1, out=_scratch("audio.wave", (b, n)))  # (B, T) steady partials
        tone_rms = np.sqrt((np.where(ok, amps, 0) ** 2).sum(axis=1) / 2)[:, None]  # Parseval, no pass over T
        notes_per_second = (1.5 + 6.0 * f["speed"])[:, None]  # the tempo follows the spin speed
        grid_start = phases[:, :1].astype(np.float32)  # the note grid starts at a random offset
        if cfg.version == 1:  # raw words, scaled per group below
            words = -(-n // 4)
            noise = scene_words(self.seed, ids, stream, words, out=_scratch("audio.words", (b, words), np.uint64))
            noise = noise.view(np.int16)[:, :n]
        else:
            noise = _bank_noise(self.seed, ids, stream, (n,), out=_scratch("audio.noise", (b, n)))
        t = np.arange(n, dtype=np.float32) / cfg.audio_sample_rate
        out = np.empty((b, n), np.float32)
        starts = np.searchsorted(colour, np.arange(len(_ENVELOPES) + 1))
        for g in np.unique(colour):
            rows = slice(starts[g], starts[g + 1])
            phase = np.multiply(t, notes_per_second[rows], out=_scratch("audio.phase", (len(colour[rows]), n)))
            phase += grid_start[rows]
            phase -= np.floor(phase, out=_scratch("audio.floor", phase.shape))
            w = wave[rows]
            w *= _ENVELOPES[g](phase).astype(np.float32, copy=False)
            if cfg.version == 1:
                hiss = np.multiply(noise[rows], _NOISE_UNIT, out=phase)
                hiss *= 0.1 * cfg.noise * tone_rms[rows]
            else:
                hiss = np.multiply(noise[rows], 0.1 * cfg.noise * tone_rms[rows], out=phase)
            w += hiss
            w /= np.maximum(w.max(axis=1, keepdims=True), -w.min(axis=1, keepdims=True)) + 1e-6
            out[order[rows]] = w
        return out

    def _imu(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
        cfg, stream = self.config, self._stream("imu")
        shape, colour = f["label"] % self._num_shapes, f["label"] // self._num_shapes
        draws = _hash_uniform(self.seed, ids, stream, 7).astype(np.float32)  # spin phase, 6 biases
        t = np.arange(cfg.imu_length, dtype=np.float32) / cfg.imu_rate
        freq = (0.5 + 2.5 * f["speed"])[:, None]  # spin rate in Hz, (B, 1)
        phase = 2 * np.pi * (freq * t + draws[:, :1])  # (B, T)
        waves = _by_group(colour, _WAVEFORMS, np.stack([phase, phase + np.pi / 2], axis=1))  # (B, 2, T)
        gyro = (2 * np.pi * freq)[:, :, None] * _AXES[shape][:, :, None] * waves[:, None, 0]  # (B, 3, T)
        heading, tilt = 2 * np.pi * f["orientation"], 0.6  # orientation sets where gravity falls
        gravity = 9.81 * np.stack([np.sin(tilt) * np.cos(heading), np.sin(tilt) * np.sin(heading),
                                   np.full_like(heading, np.cos(tilt))], axis=1)  # fmt: skip
        shake = (1 + 3 * f["size"])[:, None, None] * _AXES[(shape + 1) % len(_AXES)][:, :, None]
        imu = np.concatenate([gravity[:, :, None] + shake * waves[:, None, 1], gyro], axis=1)  # (B, 6, T)
        scale = cfg.noise * np.array([0.3, 0.3, 0.3, 0.05, 0.05, 0.05], np.float32)  # acc m/s^2, gyro rad/s
        imu += (scale * (draws[:, 1:] * 2 - 1))[:, :, None]  # per-scene sensor bias
        imu += 0.5 * scale[:, None] * self._noise(ids, stream, imu.shape[1:])
        return imu.astype(np.float32, copy=False)

    def _text(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> list[str]:
        draws = _hash_uniform(self.seed, ids, self._stream("text"), 10)
        drop = min(1.0, self.config.caption_dropout * self.config.noise)
        keep = draws[:, :5] >= drop  # one coin per attribute: x, y, size, speed, temperature
        words = {k: np.minimum(f[k] * 3, 2).astype(np.int64) for k in ("x", "y", "size", "speed", "temperature")}
        names = self.class_names()
        return [
            _caption(names[f["label"][i]], {k: int(w[i]) for k, w in words.items()}, keep[i], draws[i, 5:])
            for i in range(len(ids))
        ]


_SIZE_WORDS = (("small", "little", "tiny"), ("medium-sized", "mid-sized"), ("large", "big", "huge"))
_TEMPERATURE_WORDS = (("cold", "icy", "cool"), ("warm", "lukewarm"), ("hot", "scorching"))
_SPEED_WORDS = (
    ("spinning slowly", "turning slowly", "rotating lazily"),
    ("spinning steadily", "turning at a moderate pace"),
    ("spinning fast", "whirling quickly", "rotating rapidly"),
)
_X_WORDS = ("on the left", "in the middle", "on the right")
_Y_WORDS = ("near the top", "at mid-height", "near the bottom")
_OPENERS = ("{}", "a photo of {}", "there is {}", "{} can be seen", "a picture showing {}")


def _caption(name: str, words: dict[str, int], keep: np.ndarray, draws: np.ndarray) -> str:
    """One caption from a class name, factor word bins, attribute keep flags and 5 uniforms."""

    def pick(options: tuple[str, ...], r: float) -> str:
        return options[int(r * len(options))]

    adjectives = [pick(_SIZE_WORDS[words["size"]], draws[0])] if keep[2] else []
    adjectives += [pick(_TEMPERATURE_WORDS[words["temperature"]], draws[1])] if keep[4] else []
    noun = " ".join([*adjectives, name])
    tail = [pick(_SPEED_WORDS[words["speed"]], draws[2])] if keep[3] else []
    tail += [_X_WORDS[words["x"]]] if keep[0] else []
    tail += [_Y_WORDS[words["y"]]] if keep[1] else []
    if tail and draws[3] < 0.5:
        tail = tail[1:] + tail[:1]
    article = "an" if noun[0] in "aeiou" else "a"
    return pick(_OPENERS, draws[4]).format(" ".join([article, noun, *tail]))
