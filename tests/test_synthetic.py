"""Tests for the procedural six-modality benchmark in bindspace.data.synthetic."""

from __future__ import annotations

import dataclasses
import pickle
import re
from collections.abc import Callable

import numpy as np
import pytest

from bindspace.data.synthetic import (
    _SIZE_WORDS,
    _SPEED_WORDS,
    _TEMPERATURE_WORDS,
    _X_WORDS,
    _Y_WORDS,
    FACTORS,
    MODALITIES,
    VERSIONS,
    VISIBLE_FACTORS,
    SceneNoise,
    SyntheticConfig,
    SyntheticScenes,
)

ARRAY_MODALITIES = tuple(m for m in MODALITIES if m != "text")
CONFIG = SyntheticConfig(audio_seconds=0.5)  # halves the audio cost; everything else at defaults


# Every property of the benchmark holds for every renderer version.
@pytest.fixture(scope="module", params=VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def config(request) -> SyntheticConfig:
    return SyntheticConfig(audio_seconds=0.5, version=request.param)


@pytest.fixture(scope="module")
def scenes(config: SyntheticConfig) -> SyntheticScenes:
    return SyntheticScenes(config, seed=0)


# Simple, pose-invariant features: enough for a linear read-out, no learned encoder needed.
def _log_fft2(x: np.ndarray) -> np.ndarray:  # (B, ..., H, W): |FFT| ignores where the object is
    h, w = x.shape[-2:]
    x = x.reshape(*x.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))  # only low frequencies are kept
    return np.log1p(np.abs(np.fft.rfft2(x))[..., :16, :16]).reshape(len(x), -1)


def _histogram(x: np.ndarray, lo: float, hi: float, bins: int = 64) -> np.ndarray:
    idx = np.clip(((x.reshape(len(x), -1) - lo) / (hi - lo) * bins).astype(int), 0, bins - 1)
    idx += np.arange(len(x))[:, None] * bins  # one bincount for the whole batch
    return np.bincount(idx.ravel(), minlength=len(x) * bins).reshape(len(x), bins) / idx.shape[1]


def _pool(x: np.ndarray, k: int = 8) -> np.ndarray:  # (B, H, W) -> (B, H/k * W/k)
    b, h, w = x.shape
    return x.reshape(b, h // k, k, w // k, k).mean(axis=(2, 4)).reshape(b, -1)


def _audio_features(x: np.ndarray) -> np.ndarray:
    """Log-frequency spectrum (pitch), its shift-invariant |FFT| (timbre), envelope statistics (tempo)."""
    sr = CONFIG.audio_sample_rate
    mag = np.abs(np.fft.rfft(x, axis=1))
    edges = np.unique((np.geomspace(50, sr / 2, 129) * x.shape[1] / sr).astype(int))
    bands = np.log1p(np.add.reduceat(mag, edges[:-1], axis=1))
    timbre = np.abs(np.fft.rfft(bands - bands.mean(axis=1, keepdims=True), axis=1))
    frames = x[:, : x.shape[1] // 160 * 160].reshape(len(x), -1, 160)
    envelope = np.sqrt((frames**2).mean(-1))
    envelope /= envelope.max(axis=1, keepdims=True)
    modulation = np.log1p(np.abs(np.fft.rfft(envelope, axis=1))[:, 1:])
    return np.c_[bands, timbre, modulation, np.sort(envelope, axis=1)]


def _imu_features(x: np.ndarray) -> np.ndarray:
    spectrum = np.log1p(np.abs(np.fft.rfft(x, axis=2))[:, :, 1:40]).reshape(len(x), -1)
    return np.c_[spectrum, x.mean(axis=2), x.std(axis=2)]


CLASS_FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "image": lambda x: np.concatenate([_log_fft2(x)] + [_histogram(x[:, c], 0.0, 1.0, 16) for c in range(3)], axis=1),
    "depth": lambda x: np.c_[_histogram(x, 0.5, 10.0), _log_fft2(x)],
    "thermal": lambda x: np.c_[_histogram(x, 0.0, 1.0), _log_fft2(x)],
    "audio": _audio_features,
    "imu": _imu_features,
}
FACTOR_FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "image": lambda x: _pool(x.std(axis=1)),  # colourfulness map: where the object is
    "depth": lambda x: _pool((x < 4.0).astype(np.float32)),  # foreground mask
    "thermal": lambda x: np.c_[_pool(x), np.sort(x.reshape(len(x), -1), axis=1)[:, ::64]],
    "audio": _audio_features,
    "imu": _imu_features,
}
TRAIN_IDS, TEST_IDS = np.arange(1200), np.arange(50_000, 50_400)


def _ridge(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, lam: float = 1e-2) -> np.ndarray:
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.c_[(train_x - mu) / sd, np.ones(len(train_x))]
    b = np.c_[(test_x - mu) / sd, np.ones(len(test_x))]
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ train_y)
    return b @ w


@pytest.fixture(scope="module")
def features(scenes: SyntheticScenes) -> dict[str, tuple[np.ndarray, ...]]:
    """Per modality: (class features train/test, factor features train/test), rendered once."""
    out = {}
    for m in CLASS_FEATURES:
        # Training-sized batches: one 1200-scene batch is slower, its temporaries outgrow the caches.
        train = np.concatenate([scenes.render(m, ids) for ids in np.array_split(TRAIN_IDS, 5)])
        test = scenes.render(m, TEST_IDS)
        out[m] = (
            CLASS_FEATURES[m](train),
            CLASS_FEATURES[m](test),
            FACTOR_FEATURES[m](train),
            FACTOR_FEATURES[m](test),
        )
    return out


def _expected_shapes(batch: int) -> dict[str, tuple[int, ...]]:
    n, t_audio = CONFIG.image_size, int(CONFIG.audio_sample_rate * CONFIG.audio_seconds)
    return {"image": (batch, 3, n, n), "depth": (batch, n, n), "thermal": (batch, n, n),
            "audio": (batch, t_audio), "imu": (batch, 6, CONFIG.imu_length)}  # fmt: skip


def test_shapes_dtypes_and_ranges(scenes: SyntheticScenes) -> None:
    ids = np.arange(100)
    ranges = {"image": (0.0, 1.0), "depth": (0.5, 10.0), "thermal": (0.0, 1.0), "audio": (-1.0, 1.0), "imu": (-60, 60)}
    for modality, shape in _expected_shapes(len(ids)).items():
        x = scenes.render(modality, ids)
        assert x.shape == shape and x.dtype == np.float32, modality
        lo, hi = ranges[modality]
        assert np.isfinite(x).all() and x.min() >= lo and x.max() <= hi, modality
        assert x.std(axis=tuple(range(1, x.ndim))).min() > 0, modality  # no blank renders
    audio_peak = np.abs(scenes.render("audio", ids)).max(axis=1)
    np.testing.assert_allclose(audio_peak, 1.0, atol=1e-3)
    gravity = np.linalg.norm(scenes.render("imu", ids)[:, :3].mean(axis=2), axis=1)
    assert np.all(np.abs(gravity - 9.81) < 1.5)  # accelerometer in m/s^2
    captions = scenes.render("text", ids)
    assert isinstance(captions, list) and len(captions) == 100 and all(isinstance(c, str) and c for c in captions)


def test_empty_batch(scenes: SyntheticScenes) -> None:
    for modality, shape in _expected_shapes(0).items():
        assert scenes.render(modality, np.arange(0)).shape == shape
    assert scenes.render("text", []) == []


def test_factors_and_labels(scenes: SyntheticScenes) -> None:
    f = scenes.factors(np.arange(2000))
    assert set(f) == {"label", *FACTORS}
    assert f["label"].dtype == np.int64 and f["label"].shape == (2000,)
    counts = np.bincount(f["label"], minlength=CONFIG.num_classes)
    assert len(counts) == CONFIG.num_classes and counts.min() > 2000 / CONFIG.num_classes / 2
    for name in FACTORS:
        assert f[name].shape == (2000,) and f[name].min() >= 0 and f[name].max() < 1
        assert abs(f[name].mean() - 0.5) < 0.05 and abs(np.corrcoef(f[name], f["label"])[0, 1]) < 0.1
    np.testing.assert_array_equal(scenes.labels(np.arange(2000)), f["label"])
    names = scenes.class_names()
    assert len(names) == CONFIG.num_classes == len(set(names)) and names[0] == "red sphere"


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_scene_renders_identically_in_any_batch(modality: str, config: SyntheticConfig) -> None:
    a, b = SyntheticScenes(config, seed=3), SyntheticScenes(config, seed=3)
    b.render("image", [1, 2])  # any earlier calls must not matter
    first = a.render(modality, [5, 3, 9])
    second = b.render(modality, np.array([9, 100, 5, 7, 3, 11]))
    for i, j in [(0, 2), (1, 4), (2, 0)]:
        if modality == "text":
            assert first[i] == second[j]
        else:
            np.testing.assert_array_equal(first[i], second[j])
    other_seed = SyntheticScenes(config, seed=4).render(modality, [5, 3, 9])
    assert any(np.any(np.asarray(x) != np.asarray(y)) for x, y in zip(first, other_seed, strict=True))


def test_pickles_for_dataloader_workers(config: SyntheticConfig) -> None:
    scenes = SyntheticScenes(config, seed=7)
    clone = pickle.loads(pickle.dumps(scenes))
    for modality in ARRAY_MODALITIES:
        np.testing.assert_array_equal(clone.render(modality, [4, 2]), scenes.render(modality, [4, 2]))


def test_different_seed_gives_different_factors() -> None:
    f0 = SyntheticScenes(CONFIG, seed=0).factors(range(100))
    f1 = SyntheticScenes(CONFIG, seed=1).factors(range(100))
    assert (f0["label"] != f1["label"]).mean() > 0.8
    assert abs(np.corrcoef(f0["x"], f1["x"])[0, 1]) < 0.3


def test_modalities_have_independent_noise(config: SyntheticConfig) -> None:
    ids = np.arange(64)
    noisy = SyntheticScenes(config, seed=0)
    clean = SyntheticScenes(dataclasses.replace(config, noise=0.0), seed=0)
    residual = {m: noisy.render(m, ids) - clean.render(m, ids) for m in ("image", "depth", "thermal")}
    residual["image"] = residual["image"].mean(axis=1)  # (B, H, W) like the others
    for name, r in residual.items():
        assert np.abs(r).mean() > 1e-3, name  # noise=0 really removes the noise
        # Neighbour differences minus their per-scene mean keep the pixel noise and drop the
        # per-scene offsets and tilts, which would leave only ~64 samples to correlate.
        r = np.diff(r, axis=-1)
        residual[name] = r - r.mean(axis=(1, 2), keepdims=True)
    for a, b in [("image", "depth"), ("image", "thermal"), ("depth", "thermal")]:
        corr = np.corrcoef(residual[a].ravel(), residual[b].ravel())[0, 1]
        assert abs(corr) < 0.02, (a, b, corr)


@pytest.mark.parametrize("modality", list(CLASS_FEATURES))
def test_class_is_linearly_decodable(modality: str, features: dict[str, tuple[np.ndarray, ...]]) -> None:
    train_x, test_x, _, _ = features[modality]
    labels = SyntheticScenes(CONFIG, seed=0).labels
    scores = _ridge(train_x, np.eye(CONFIG.num_classes)[labels(TRAIN_IDS)], test_x, lam=1.0)
    accuracy = (scores.argmax(axis=1) == labels(TEST_IDS)).mean()
    assert accuracy > 3 / CONFIG.num_classes, accuracy  # chance is 1 / 16


def _r2(modality: str, factor: str, features: dict[str, tuple[np.ndarray, ...]]) -> float:
    _, _, train_x, test_x = features[modality]
    scenes = SyntheticScenes(CONFIG, seed=0)
    train_y, test_y = scenes.factors(TRAIN_IDS)[factor], scenes.factors(TEST_IDS)[factor]
    return float(1 - ((_ridge(train_x, train_y, test_x) - test_y) ** 2).mean() / test_y.var())


@pytest.mark.parametrize(
    ("modality", "factor"),
    [("image", "x"), ("image", "y"), ("depth", "x"), ("depth", "size"), ("thermal", "y"),
     ("thermal", "temperature"), ("audio", "size"), ("audio", "speed"), ("imu", "speed"), ("imu", "size")],
)  # fmt: skip
def test_visible_instance_factor_is_decodable(modality: str, factor: str, features: dict) -> None:
    assert factor in VISIBLE_FACTORS[modality]
    assert _r2(modality, factor, features) > 0.3


@pytest.mark.parametrize("modality", list(FACTOR_FEATURES))
def test_hidden_instance_factors_are_not_decodable(modality: str, features: dict) -> None:
    for factor in set(FACTORS) - set(VISIBLE_FACTORS[modality]):
        assert _r2(modality, factor, features) < 0.1, factor


def test_imu_encodes_orientation_through_gravity(features: dict) -> None:
    _, _, train_x, test_x = features["imu"]
    scenes = SyntheticScenes(CONFIG, seed=0)
    angle = 2 * np.pi * scenes.factors(TRAIN_IDS)["orientation"]
    target = np.c_[np.cos(angle), np.sin(angle)]
    pred = _ridge(train_x, target, test_x)
    test_angle = 2 * np.pi * scenes.factors(TEST_IDS)["orientation"]
    error = np.angle(np.exp(1j * (np.arctan2(pred[:, 1], pred[:, 0]) - test_angle)))
    assert np.median(np.abs(error)) < 0.2  # radians


def _says(caption: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", caption) is not None  # "photo" does not say "hot"


def test_captions_name_class_and_attributes() -> None:
    ids = np.arange(300)
    clean = SyntheticScenes(SyntheticConfig(noise=0.0), seed=0)
    f, names = clean.factors(ids), clean.class_names()
    for i, caption in enumerate(clean.render("text", ids)):
        assert _says(caption, names[f["label"][i]])
        for key, table in [("size", _SIZE_WORDS), ("temperature", _TEMPERATURE_WORDS), ("speed", _SPEED_WORDS),
                           ("x", tuple((w,) for w in _X_WORDS)), ("y", tuple((w,) for w in _Y_WORDS))]:  # fmt: skip
            word_bin = min(int(f[key][i] * 3), 2)
            said = {b for b, words in enumerate(table) for w in words if _says(caption, w)}
            assert said == {word_bin}, (caption, key)
    # With noise, some attribute phrases are dropped, but the class is always named.
    noisy = SyntheticScenes(SyntheticConfig(), seed=0).render("text", ids)
    assert all(_says(c, names[f["label"][i]]) for i, c in enumerate(noisy))
    missing_size = np.mean([not any(_says(c, w) for words in _SIZE_WORDS for w in words) for c in noisy])
    assert 0.1 < missing_size < 0.3
    assert len(set(noisy)) > 250  # templates and synonyms vary


def test_other_class_counts_render(config: SyntheticConfig) -> None:
    for num_classes in (2, 10, 48):
        small = dataclasses.replace(config, num_classes=num_classes, image_size=32, audio_seconds=0.25)
        scenes = SyntheticScenes(small, seed=1)
        labels = scenes.labels(np.arange(500))
        assert labels.max() == num_classes - 1 and labels.min() == 0
        assert len(set(scenes.class_names())) == num_classes
        for modality in MODALITIES:
            assert len(scenes.render(modality, np.arange(500))) == 500


def test_invalid_inputs_raise(scenes: SyntheticScenes) -> None:
    with pytest.raises(ValueError, match="sonar"):
        scenes.render("sonar", [0])
    with pytest.raises(ValueError, match="1-D"):
        scenes.render("image", np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        scenes.factors([-1])
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticConfig(num_classes=49)
    for version in (0, 3, True, "2"):
        with pytest.raises(ValueError, match="version must be one of"):
            SyntheticConfig(version=version)
    with pytest.raises(ValueError, match="seed"):
        SyntheticScenes(CONFIG, seed=-1)


# ---- version 2: the same scenes, cheaper noise ---------------------------------------------------------------


def test_versions_differ_only_in_noise() -> None:
    """Without noise the two renderers give the same arrays, bit for bit: version 2 changes where the noise
    comes from, nothing else (shapes, colours, textures, motion, sound, captions)."""
    ids = np.r_[0:40, 10**9 : 10**9 + 8]
    v1, v2 = (SyntheticScenes(SyntheticConfig(audio_seconds=0.5, noise=0.0, version=v), seed=5) for v in (1, 2))
    for modality in MODALITIES:
        a, b = v1.render(modality, ids), v2.render(modality, ids)
        assert a == b if modality == "text" else np.array_equal(a, b), modality


def _residuals(version: int, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per modality: the render minus the noise-free render (the sensor noise), of ``ids``."""
    noisy = SyntheticScenes(SyntheticConfig(audio_seconds=0.5, version=version), seed=0)
    clean = SyntheticScenes(SyntheticConfig(audio_seconds=0.5, noise=0.0, version=version), seed=0)
    return {m: noisy.render(m, ids) - clean.render(m, ids) for m in ("image", "depth", "thermal", "imu")}


def test_version_2_noise_has_version_1_amplitude() -> None:
    """Pixel and sample noise as strong in version 2 as in version 1 (the image's object and background
    noise, depth's grain, thermal's grain, the IMU's bias and noise), judged on neighbour differences,
    which keep the per-pixel noise and drop smooth terms."""
    ids = np.arange(200)
    r1, r2 = _residuals(1, ids), _residuals(2, ids)
    for m in r1:
        s1, s2 = np.diff(r1[m], axis=-1).std(), np.diff(r2[m], axis=-1).std()
        assert 0.85 < s2 / s1 < 1.15, (m, s1, s2)
    # The whole residual too (the image's includes its clutter background).
    for m in r1:
        assert 0.8 < r2[m].std() / r1[m].std() < 1.25, m


def test_version_2_scenes_do_not_share_their_noise() -> None:
    """Scenes cut their noise from one bank at their own offsets: two scenes' noise is uncorrelated (an
    overlap of their offsets is rare and shifted), and so are two modalities' noise of one scene."""
    ids = np.arange(128)
    r = _residuals(2, ids)
    for m in ("depth", "thermal"):
        flat = np.diff(r[m], axis=-1).reshape(len(ids), -1)
        corr = np.corrcoef(flat)[np.triu_indices(len(ids), 1)]
        assert np.abs(corr).max() < 0.2 and np.abs(corr).mean() < 0.02, m
    image = np.diff(r["image"], axis=-1).reshape(len(ids), -1)
    corr = np.corrcoef(image)[np.triu_indices(len(ids), 1)]
    assert np.abs(corr).mean() < 0.02
    # Nor their clutter: the backgrounds' blobs (8 x 8 pixel means) are uncorrelated between scenes.
    image = SyntheticScenes(SyntheticConfig(audio_seconds=0.5, version=2), seed=0).render("image", ids)
    blobs = image.reshape(len(ids), 3, 8, 8, 8, 8).mean(axis=(3, 5)).reshape(len(ids), -1)
    corr = np.corrcoef(blobs - blobs.mean(axis=0))[np.triu_indices(len(ids), 1)]
    assert np.abs(corr).mean() < 0.15 and np.quantile(np.abs(corr), 0.99) < 0.5


def test_version_2_noise_depends_on_the_seed() -> None:
    ids = np.arange(16)
    a = SyntheticScenes(SyntheticConfig(audio_seconds=0.5, version=2), seed=0).render("depth", ids)
    b = SyntheticScenes(SyntheticConfig(audio_seconds=0.5, version=2), seed=1).render("depth", ids)
    clean = SyntheticScenes(SyntheticConfig(audio_seconds=0.5, version=2, noise=0.0), seed=0).render("depth", ids)
    assert not np.array_equal(a, b) and not np.array_equal(a, clean)


@pytest.mark.parametrize("version", VERSIONS)
def test_plugin_noise_is_a_function_of_the_scene(version: int) -> None:
    """What a plugin modality's renderer draws (``SceneNoise``) is per scene in either version."""
    stream = 7 + 12345
    whole = SceneNoise(0, np.arange(10), stream, version).normal((4, 9))
    part = SceneNoise(0, np.array([7, 2]), stream, version).normal((4, 9))
    np.testing.assert_array_equal(part, whole[[7, 2]])
    assert whole.shape == (10, 4, 9) and whole.dtype == np.float32 and 0.8 < whole.std() < 1.2
    assert not np.array_equal(whole, SceneNoise(1, np.arange(10), stream, version).normal((4, 9)))
