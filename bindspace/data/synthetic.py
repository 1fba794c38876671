"""Procedural six-modality benchmark: every modality renders the same latent scene.

A scene is a class (a coloured shape) plus six instance factors in [0, 1). Every modality sees the
class and a subset of the factors (``VISIBLE_FACTORS``) through its own independent noise, so
cross-modal retrieval has to match instances, not only classes. Everything is a pure function of
(seed, scene_id, modality): no files, and a scene renders identically in any batch, worker or rank.

Example:
    scenes = SyntheticScenes(SyntheticConfig(), seed=0)
    images = scenes.render("image", range(256))  # (256, 3, 64, 64) float32 in [0, 1]
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
    """

    num_classes: int = 16
    image_size: int = 64
    audio_sample_rate: int = 16000
    audio_seconds: float = 1.0
    imu_length: int = 200
    imu_rate: float = 100.0
    noise: float = 1.0
    caption_dropout: float = 0.2

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= len(SHAPES) * len(COLOURS):
            raise ValueError(f"num_classes must be in [2, {len(SHAPES) * len(COLOURS)}], got {self.num_classes}")
        if self.image_size < 16 or self.imu_length < 1 or self.audio_sample_rate * self.audio_seconds < 64:
            raise ValueError(f"sizes too small to render anything meaningful: {self}")
        if self.noise < 0 or not 0 <= self.caption_dropout <= 1:
            raise ValueError(f"need noise >= 0 and caption_dropout in [0, 1], got {self}")


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective uint64 hash (wrap-around arithmetic is intended)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hash_uniform(seed: int, ids: np.ndarray, stream: int, n: int) -> np.ndarray:
    """Counter-based uniforms in [0, 1): (B, n), a pure function of (seed, id, stream, column)."""
    key = _mix64(np.full(ids.shape, seed, np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    key = _mix64(key ^ ids.astype(np.uint64))
    key = _mix64(key ^ np.uint64(stream * 0x632BE59BD9B4E019 % 2**64))
    counters = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return (_mix64(key[:, None] + counters) >> np.uint64(11)).astype(np.float64) / 2.0**53


def _scene_noise(seed: int, ids: np.ndarray, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean unit-variance noise of shape (B, *shape), one generator per scene.

    Uniform 16-bit noise cut from raw generator words: 3x faster than float draws and 7x faster than
    Gaussian ones, and sensor noise need not be Gaussian.
    """
    size = math.prod(shape)
    raw = np.empty((len(ids), -(-size // 4)), np.uint64)  # four int16 per 64-bit word
    for row, scene_id in zip(raw, ids.tolist(), strict=True):
        row[:] = np.random.SFC64(np.random.SeedSequence([seed, scene_id, stream])).random_raw(len(row))
    noise = raw.view(np.int16)[:, :size].astype(np.float32)
    noise *= np.float32(math.sqrt(3.0) / 32768)
    return noise.reshape(len(ids), *shape)


def _by_group(groups: np.ndarray, funcs: Sequence[Callable[..., np.ndarray]], *arrays: np.ndarray) -> np.ndarray:
    """out[i] = funcs[groups[i]](*arrays)[i], with one vectorised call per group present.

    Every func must return an array shaped like its first argument.
    """
    out = np.empty_like(arrays[0])
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        out[rows] = funcs[g](*(a[rows] for a in arrays))
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

    def __init__(self, seed: int, ids: np.ndarray, stream: int) -> None:
        self.seed, self.ids, self.stream = seed, ids, stream

    def uniform(self, n: int) -> np.ndarray:
        """(B, n) float64 uniforms in [0, 1), one row per scene."""
        return _hash_uniform(self.seed, self.ids, self.stream, n)

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        """(B, *shape) float32 zero-mean, unit-variance noise (uniformly distributed), one generator per scene."""
        return _scene_noise(self.seed, self.ids, self.stream, tuple(shape))


@dataclass(frozen=True)
class _Pose:
    """Per-pixel object-frame geometry of a batch, shared by image, depth and thermal."""

    u: np.ndarray  # (B, H, W) object-frame coordinates in units of the object radius
    v: np.ndarray  # (B, H, W)
    q: np.ndarray  # (B, H, W) 0 at the shape's core, 1 on its outline, > 1 outside
    r_px: np.ndarray  # (B, 1, 1) object radius in pixels, for anti-aliased edges
    marker: np.ndarray  # (B, H, W) in [0, 1], the orientation dot
    shape: np.ndarray  # (B,) index into SHAPES
    colour: np.ndarray  # (B,) index into COLOURS

    def alpha(self, edge_px: float) -> np.ndarray:
        """(B, H, W) coverage in [0, 1] with an edge ramp about edge_px pixels wide."""
        return np.clip((1 - self.q) * self.r_px / edge_px + 0.5, 0, 1)


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
        noise = SceneNoise(self.seed, ids, self._stream(modality))
        return spec.render_synthetic(self.factors(ids), noise, self.inputs.get(modality) or spec.default_config().input)

    def _check_ids(self, scene_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(scene_ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"scene_ids must be a 1-D integer sequence, got shape {ids.shape} dtype {ids.dtype}")
        if ids.size and ids.min() < 0:
            raise ValueError("scene_ids must be non-negative")
        return ids.astype(np.int64)

    def _stream(self, modality: str) -> int:
        if modality in MODALITIES:
            return 1 + MODALITIES.index(modality)
        # A plugin's stream follows from its name alone, whatever else is installed.
        return 1 + len(MODALITIES) + zlib.crc32(modality.encode()) % 2**20

    def _pose(self, f: dict[str, np.ndarray]) -> _Pose:
        g = self._grid
        cx = ((f["x"] * 2 - 1) * 0.6)[:, None, None]  # keeps the largest object inside the frame
        cy = ((f["y"] * 2 - 1) * 0.6)[:, None, None]
        radius = (0.2 + 0.2 * f["size"])[:, None, None]  # in half-widths
        theta = (2 * np.pi * f["orientation"])[:, None, None]
        cos, sin = np.cos(theta) / radius, np.sin(theta) / radius
        dx, dy = g[None, None, :] - cx, g[None, :, None] - cy  # (B, 1, W), (B, H, 1)
        # Scale the thin factors first: each full (B, H, W) array then costs a single addition.
        u, v = cos * dx + sin * dy, cos * dy - sin * dx  # (B, H, W)
        shape, colour = f["label"] % self._num_shapes, f["label"] // self._num_shapes
        q = _by_group(shape, _SHAPE_Q, u, v)
        marker = np.exp(-((u - _MARKER[0]) ** 2 + (v - _MARKER[1]) ** 2) / 0.02)
        r_px = radius * (self.config.image_size / 2)
        return _Pose(u, v, q, r_px, marker, shape, colour)

    def _image(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
        cfg, n, pose = self.config, self.config.image_size, self._pose(f)
        stream = self._stream("image")
        k = 3 * _CLUTTER**2
        field = _scene_noise(self.seed, ids, stream, (k + 3 * n * n,))
        clutter = field[:, :k].reshape(-1, 3, _CLUTTER, _CLUTTER)
        # Mostly grey clutter, so the object stays the most saturated thing in the frame.
        clutter = 0.6 * clutter + 0.4 * clutter.mean(axis=1, keepdims=True)
        background = self._upsample @ clutter @ self._upsample.T  # (B, 3, H, W)
        background *= 0.12 * cfg.noise
        background += 0.45
        jitter = (_hash_uniform(self.seed, ids, stream, 4) * 2 - 1).astype(np.float32)
        colour = np.array(list(COLOURS.values()), np.float32)[pose.colour]  # (B, 3)
        colour = np.clip(colour + 0.08 * cfg.noise * jitter[:, :3], 0, 1) * (1 + 0.15 * cfg.noise * jitter[:, 3:])
        texture = _by_group(pose.colour, _TEXTURES, pose.u, pose.v, np.minimum(pose.q, 1))
        shade = (0.55 + 0.45 * texture) * (1 - 0.8 * pose.marker)  # (B, H, W)
        # In place from here: 12 MB temporaries cost page faults, not just arithmetic.
        image = colour[:, :, None, None] * shade[:, None]
        image -= background
        image *= pose.alpha(1.0)[:, None]
        image += background
        pixel_noise = field[:, k:].reshape(-1, 3, n, n)
        pixel_noise *= 0.03 * cfg.noise
        image += pixel_noise
        return np.clip(image, 0, 1, out=image)

    def _depth(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
        cfg, g, pose = self.config, self._grid, self._pose(f)
        stream = self._stream("depth")
        wall = (_hash_uniform(self.seed, ids, stream, 3) * 2 - 1).astype(np.float32)[:, :, None, None]
        far = 6.0 + cfg.noise * (wall[:, 0] + 0.8 * wall[:, 1] * g[None, None, :] + 0.8 * wall[:, 2] * g[None, :, None])
        q = np.minimum(pose.q, 1)
        relief = _by_group(pose.shape, _RELIEF, q) + 0.5 * _by_group(pose.colour, _TEXTURES, pose.u, pose.v, q)
        # At 2.5 m a 60 degree camera sees 1.5 m per half-width; relief is as deep as the object is wide.
        radius_m = 1.5 * pose.r_px / (cfg.image_size / 2)
        near = 2.5 - radius_m * (relief + 0.6 * pose.marker)
        depth = far + pose.alpha(1.0) * (near - far)  # (B, H, W); mixed edge pixels, like real sensors
        # Structured-light style noise grows with the square of the distance.
        depth += 0.003 * cfg.noise * depth * depth * _scene_noise(self.seed, ids, stream, depth.shape[1:])
        return np.clip(depth, 0.5, 10.0, out=depth)

    def _thermal(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
        cfg, g, pose = self.config, self._grid, self._pose(f)
        stream = self._stream("thermal")
        room = (_hash_uniform(self.seed, ids, stream, 3) * 2 - 1).astype(np.float32)[:, :, None, None]
        ambient = 0.2 + 0.05 * cfg.noise * (room[:, 0] + room[:, 1] * g[None, None, :] + room[:, 2] * g[None, :, None])
        heat = _by_group(pose.colour, _HEAT, pose.u, pose.v, np.minimum(pose.q, 1))
        # The heat pattern has a fixed contrast on top of the mean temperature, so cold objects
        # still show their class; the hottest spots of the hottest objects just reach 1.
        excess = (0.05 + 0.4 * f["temperature"])[:, None, None] + 0.25 * heat + 0.1 * pose.marker
        thermal = ambient + pose.alpha(2.5) * excess  # a wider edge ramp: thermal optics are blurry
        thermal += 0.02 * cfg.noise * _scene_noise(self.seed, ids, stream, thermal.shape[1:])
        return np.clip(thermal, 0, 1, out=thermal)

    def _audio(self, ids: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
        cfg, stream = self.config, self._stream("audio")
        n = round(cfg.audio_sample_rate * cfg.audio_seconds)
        shape, colour = f["label"] % self._num_shapes, f["label"] // self._num_shapes
        phases = _hash_uniform(self.seed, ids, stream, 1 + _PARTIALS.shape[-1])  # note grid, partials
        f0 = 110.0 * 2.0 ** (2 * (1 - f["size"]))  # big objects sound low: 110-440 Hz
        ratios, amps = _PARTIALS[shape, 0], _PARTIALS[shape, 1]  # (B, P)
        # Synthesising on FFT bins (bin k is k / seconds Hz) makes all partials one inverse FFT.
        bins = np.rint(f0[:, None] * ratios * cfg.audio_seconds).astype(np.int64)
        ok = (amps > 0) & (bins > 0) & (bins < n // 2)
        rows = np.broadcast_to(np.arange(len(ids))[:, None], bins.shape)
        spec = np.zeros((len(ids), n // 2 + 1), np.complex64)
        np.add.at(spec, (rows[ok], bins[ok]), (amps * np.exp(2j * np.pi * phases[:, 1:]) * (n / 2))[ok])
        wave = np.fft.irfft(spec, n=n, axis=-1)  # (B, T) float32 steady partials
        tone_rms = np.sqrt((np.where(ok, amps, 0) ** 2).sum(axis=1) / 2)[:, None]  # Parseval, no pass over T
        # In-place arithmetic from here on: fresh 16 MB temporaries cost page faults, not just flops.
        notes_per_second = (1.5 + 6.0 * f["speed"])[:, None]  # the tempo follows the spin speed
        note_phase = np.arange(n, dtype=np.float32) / cfg.audio_sample_rate * notes_per_second
        note_phase += phases[:, :1].astype(np.float32)  # the note grid starts at a random offset
        note_phase -= np.floor(note_phase)
        wave *= _by_group(colour, _ENVELOPES, note_phase)
        noise = _scene_noise(self.seed, ids, stream, (n,))
        noise *= 0.1 * cfg.noise * tone_rms
        wave += noise
        wave /= np.maximum(wave.max(axis=1, keepdims=True), -wave.min(axis=1, keepdims=True)) + 1e-6
        return wave

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
        imu += 0.5 * scale[:, None] * _scene_noise(self.seed, ids, stream, imu.shape[1:])
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
