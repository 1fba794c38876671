"""Spoken letters: a small image/text/audio/IMU benchmark of the 26 letters, built offline and deterministically.

A harder sibling of spoken digits (26 classes, three edges to the image), for confirming recipes tuned there.

- image: the letter's glyph, upper or lower case at random, rendered with PIL from the TrueType fonts that
  ship inside matplotlib (:data:`TRAIN_FONTS`, :data:`VAL_FONTS`), at a random size, rotation, shift and
  stroke weight, with light noise; grayscale PNG, white ink on black. Every image row has its own image.
- audio: eSpeak NG saying the letter's name (it spells a single letter: "a" is said "ay", never the
  article), drawn and rendered exactly as spoken digits' utterances (accents, speakers, rate, pitch, gain,
  noise, padding; :func:`bindspace.datasets.spoken_digits.builder.draw_utterance`).
- imu: a pen tracing the glyph, six axes (accelerometer xyz, gyroscope xyz) at 100 Hz, ``(6, 200)``
  float32 ``.npy``. Not recorded handwriting: the pen follows the font's outlines (matplotlib's
  ``TextPath``), contour after contour at a jittered constant speed, lifted between contours; the
  accelerometer is the second difference of the smoothed pen position (x, y) and of the lift height (z),
  the gyroscope the rate of a small tilt that leans with the velocity (x, y) and the turning rate of the
  stroke (z), each with sensor noise and bias (:func:`render_trace`).
- text: a caption from :data:`CAPTION_TEMPLATES` ("the letter b", "a capital B", "someone saying bee", ...);
  one that names a case names the case of its row's image.

Files, under ``<cache>/spoken_letters/<version>-seed<seed>[-<non-default sizes>]/``::

    train_image_text.jsonl   {"id", "label", "image", "text"}
    train_image_audio.jsonl  {"id", "label", "image", "audio"}
    train_image_imu.jsonl    {"id", "label", "image", "imu"}
    val.jsonl                {"id", "label", "image", "text", "audio", "imu"}  held-out fonts and speakers
    images/<split>/<id>.png  one rendered glyph per row;  images/glyphs.jsonl  how each was drawn (font, ...)
    audio/<split>/<id>.wav   one utterance per audio row; audio/utterances.jsonl (voice, rate, pitch, ...)
    imu/<split>/<id>.npy     one pen trace per IMU row;   imu/traces.jsonl     (font, case, size, ...)
    manifest_info.json       parameters and their hash, counts, versions, content hash

Paths in manifests are relative to the manifest's folder; ``label`` is the lower-case letter. Rows of one
split are balanced over classes (counts differ by at most one); the modalities of a row share its class
only (evaluate at class level). Validation fonts (images and traces) and speakers never occur in training.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import string
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from bindspace.datasets.spoken_digits.builder import (
    ACCENTS,
    GAINS,
    INTONATIONS,
    MAX_PAD_SECONDS,
    PITCHES,
    RATES,
    SNR_DB,
    TRAIN_VARIANTS,
    VAL_VARIANTS,
    Utterance,
    balanced,
    build_cli,
    cached_build,
    checked_speaker,
    content_hash,
    default_cache_dir,
    draw_utterance,
    write_jsonl,
    write_utterances,
)
from bindspace.datasets.spoken_digits.espeak import Speaker

VERSION = "v1"  # bump when the recipe changes in a way the parameters below do not capture
LETTERS = tuple(string.ascii_lowercase)
# How each letter's name is written in captions; the audio is eSpeak spelling the letter itself.
LETTER_NAMES = ("ay", "bee", "see", "dee", "ee", "ef", "gee", "aitch", "eye", "jay", "kay", "el", "em", "en", "oh",
                "pee", "cue", "ar", "ess", "tee", "you", "vee", "double-u", "ex", "why", "zee")  # fmt: skip
# (template, the image cases it may caption): {char} is the letter in the row image's case, {letter} the
# lower-case letter, {name} its name.
CAPTION_TEMPLATES = (
    ("the letter {char}", "lower upper"), ("{char}", "lower upper"), ("the character {char}", "lower upper"),
    ("a picture of the letter {char}", "lower upper"), ("the letter {name}", "lower upper"),
    ("someone saying {name}", "lower upper"), ("the letter {letter}", "lower upper"), ("a capital {char}", "upper"),
    ("uppercase {char}", "upper"), ("lowercase {char}", "lower"), ("a small {char}", "lower"),
)  # fmt: skip
# Fonts shipped in matplotlib's mpl-data/fonts/ttf whose a-z and A-Z are latin letters (checked by rendering:
# cmsy10, cmex10, the STIXNonUni*/STIXSiz* and *Display fonts and LastResortHE draw symbols or nothing).
# Validation fonts are held out of training, as validation speakers are.
TRAIN_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSansMono-Bold",
               "DejaVuSansMono-BoldOblique", "DejaVuSansMono-Oblique", "DejaVuSerif", "DejaVuSerif-Bold",
               "DejaVuSerif-BoldItalic", "STIXGeneral", "STIXGeneralBolIta", "STIXGeneralItalic", "cmb10", "cmmi10",
               "cmr10", "cmtt10")  # fmt: skip
VAL_FONTS = ("DejaVuSans-BoldOblique", "DejaVuSansMono", "DejaVuSerif-Italic", "STIXGeneralBol", "cmss10", "cmti10")
# Image draws: glyph extent (fraction of the side), rotation (degrees), shift (fraction of the side, each
# axis), stroke (PIL rank filter size on the 2x canvas: negative thins, positive thickens), noise (gray levels).
GLYPH_SIZES, MAX_ANGLE, MAX_SHIFT, STROKES, IMAGE_NOISE = (0.45, 0.72), 15.0, 0.08, (-3, 0, 3, 5), (0.0, 10.0)
# IMU: window, rate; draws: glyph height (m), aspect, slant; writing time (fraction of the window), lift (m).
IMU_LENGTH, IMU_RATE = 200, 100
TRACE_HEIGHTS, TRACE_ASPECTS, MAX_SLANT = (0.015, 0.04), (0.85, 1.15), 0.25
WRITING, LIFTS = (0.75, 0.95), (0.003, 0.008)
PEN_UP_SPEED = 1.5  # travel between contours, relative to writing speed
SPEED_JITTER, SPEED_KNOTS = 0.25, 8  # log-normal speed changes at this many points along the trace
SMOOTH_SAMPLES = 1.5  # Gaussian smoothing of the pen position (sigma, samples): hand and pen dynamics
TILT_GAIN, TURN_GAIN = 0.5, 0.05  # pen tilt (rad) per m/s of velocity; gyroscope z per rad/s of turning
ACCEL_NOISE, GYRO_NOISE, ACCEL_BIAS, GYRO_BIAS = (0.02, 0.1), (0.005, 0.03), 0.05, 0.01  # m/s^2, rad/s

SPLITS = {  # manifest name -> (id prefix, modalities besides image)
    "train_image_text": ("it", ("text",)),
    "train_image_audio": ("ia", ("audio",)),
    "train_image_imu": ("im", ("imu",)),
    "val": ("val", ("text", "audio", "imu")),
}


@dataclass(frozen=True)
class SpokenLettersParams:
    """What the dataset depends on (besides the tables above, which are hashed with it)."""

    seed: int = 0
    n_train_per_edge: int = 1040  # rows per training manifest (40 per letter)
    n_val: int = 390  # rows in val.jsonl (15 per letter), each with its own image, utterance and trace
    image_size: int = 64
    sample_rate: int = 16000

    def folder_name(self) -> str:
        defaults = SpokenLettersParams()
        tags = {"n_train_per_edge": "train", "n_val": "val", "image_size": "img", "sample_rate": "sr"}
        extra = "".join(
            f"-{tag}{getattr(self, k)}" for k, tag in tags.items() if getattr(self, k) != getattr(defaults, k)
        )
        return f"{VERSION}-seed{self.seed}{extra}"

    def fingerprint(self) -> str:
        """SHA-256 of the parameters and the recipe tables: a different value means a different dataset."""
        recipe = {
            "version": VERSION,
            "params": asdict(self),
            "tables": [LETTER_NAMES, CAPTION_TEMPLATES, TRAIN_FONTS, VAL_FONTS, ACCENTS, TRAIN_VARIANTS, VAL_VARIANTS],
            "draws": [RATES, PITCHES, INTONATIONS, GAINS, SNR_DB, MAX_PAD_SECONDS, GLYPH_SIZES, MAX_ANGLE, MAX_SHIFT,
                      STROKES, IMAGE_NOISE, TRACE_HEIGHTS, TRACE_ASPECTS, MAX_SLANT, WRITING, LIFTS],
            "imu": [IMU_LENGTH, IMU_RATE, PEN_UP_SPEED, SPEED_JITTER, SPEED_KNOTS, SMOOTH_SAMPLES, TILT_GAIN,
                    TURN_GAIN, ACCEL_NOISE, GYRO_NOISE, ACCEL_BIAS, GYRO_BIAS],
        }  # fmt: skip
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Glyph:
    """Everything an image is rendered from (a pure function of these fields and the font file)."""

    image: str  # path relative to the dataset folder
    char: str  # the letter as drawn, in its case
    font: str  # a name from TRAIN_FONTS or VAL_FONTS
    extent: float  # the glyph's larger side, as a fraction of the image side
    angle: float  # degrees, counter-clockwise
    shift: tuple[float, float]  # (x, y) fractions of the image side
    stroke: int  # rank filter size on the 2x canvas: < 0 MinFilter (thinner), > 0 MaxFilter (bolder), 0 none
    noise: float  # Gaussian noise, gray levels
    noise_seed: int


@dataclass(frozen=True)
class Trace:
    """Everything an IMU window is rendered from (a pure function of these fields and the font file)."""

    imu: str  # path relative to the dataset folder
    char: str
    font: str
    height: float  # glyph height in metres
    aspect: float  # width scale
    slant: float  # shear: x += slant * y
    angle: float  # degrees
    writing: float  # fraction of the window spent tracing (the rest is rest, before and after)
    lead: float  # fraction of the resting time that comes before the trace
    lift: float  # pen height between contours, metres
    seed: int  # speed profile, sensor noise and bias


def caption(template: str, char: str) -> str:
    """Fill a template with the letter as drawn (``{char}``), in lower case (``{letter}``) and its name."""
    letter = char.lower()
    return template.format(char=char, letter=letter, name=LETTER_NAMES[LETTERS.index(letter)])


def class_prompts() -> dict[str, list[str]]:
    """Letter -> its captions over every template and case (zero-shot prompts: embed, average, normalise)."""
    prompts = {}
    for letter in LETTERS:
        filled = [caption(t, char) for t, cases in CAPTION_TEMPLATES for char in _chars(letter, cases)]
        prompts[letter] = list(dict.fromkeys(filled))
    return prompts


def _chars(letter: str, cases: str) -> list[str]:
    return [letter.upper() if case == "upper" else letter for case in cases.split()]


def font_path(name: str) -> Path:
    """The TrueType file of a font shipped with matplotlib (``mpl-data/fonts/ttf/<name>.ttf``)."""
    import matplotlib  # a declared dependency; imported here so that importing this module stays light

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib {matplotlib.__version__} ships no font {path.name} (looked in {path})")
    return path


@lru_cache(maxsize=512)
def _font(name: str, pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(name)), pixels)


def render_glyph(g: Glyph, size: int) -> np.ndarray:
    """The image of ``g``: uint8 ``(size, size)``, white ink on black (drawn on a 2x canvas, then reduced)."""
    side, ref = 2 * size, 200
    left, top, right, bottom = _font(g.font, ref).getbbox(g.char)
    pixels = max(1, round(ref * g.extent * side / max(right - left, bottom - top)))
    font = _font(g.font, pixels)
    left, top, right, bottom = font.getbbox(g.char)
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).text((side / 2 - (left + right) / 2, side / 2 - (top + bottom) / 2), g.char, 255, font)
    if g.stroke:
        canvas = canvas.filter((ImageFilter.MaxFilter if g.stroke > 0 else ImageFilter.MinFilter)(abs(g.stroke)))
    shift = (round(g.shift[0] * side), round(g.shift[1] * side))
    canvas = canvas.rotate(g.angle, resample=Image.Resampling.BICUBIC, translate=shift).reduce(2)
    noise = np.random.default_rng(g.noise_seed).standard_normal((size, size)) * g.noise
    return np.clip(np.rint(np.asarray(canvas, dtype=np.float64) + noise), 0, 255).astype(np.uint8)


@lru_cache(maxsize=2048)
def glyph_contours(font: str, char: str) -> tuple[np.ndarray, ...]:
    """The outline of ``char`` in ``font``: closed polygons ``(N, 2)`` in drawing order, the glyph's bounding
    box centred on the origin and its larger side 1 (y up)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    path = TextPath((0, 0), char, size=1, prop=FontProperties(fname=str(font_path(font))))
    polygons = [np.asarray(p, dtype=np.float64) for p in path.to_polygons() if len(p) >= 3]
    if not polygons:
        raise ValueError(f"font {font} has no outline for {char!r}")
    points = np.concatenate(polygons)
    low, high = points.min(axis=0), points.max(axis=0)
    return tuple((p - (low + high) / 2) / (high - low).max() for p in polygons)


def pen_path(t: Trace, length: int = IMU_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """Pen position ``(length, 2)`` in metres and pen-up flag ``(length,)`` in [0, 1] over the window.

    The contours are traced in the font's order, each from its first point round to it again, with
    straight pen-up travel (at :data:`PEN_UP_SPEED`) from one to the next; arc length is mapped to
    time through a speed that varies smoothly (log-normal changes at :data:`SPEED_KNOTS` points).
    """
    rng = np.random.default_rng(t.seed)
    theta = np.deg2rad(t.angle)
    shape = np.array([[1.0, t.slant], [0.0, 1.0]]) @ np.diag([t.aspect, 1.0])
    rotate = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    contours = [p @ (rotate @ shape).T * t.height for p in glyph_contours(t.font, t.char)]
    points, up = [contours[0]], [np.zeros(len(contours[0]))]
    for before, after in itertools.pairwise(contours):
        points.append(np.stack([before[-1], after[0]]))  # pen-up travel
        up.append(np.ones(2))
        points.append(after)
        up.append(np.zeros(len(after)))
    xy, lifted = np.concatenate(points), np.concatenate(up)
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    step_up = (lifted[1:] > 0) & (lifted[:-1] > 0)
    cost = np.concatenate([[0.0], np.cumsum(np.where(step_up, steps / PEN_UP_SPEED, steps))])
    n_write = max(2, round(t.writing * length))
    speed = np.exp(SPEED_JITTER * rng.standard_normal(SPEED_KNOTS))
    profile = np.interp(np.linspace(0, 1, n_write), np.linspace(0, 1, SPEED_KNOTS), speed)
    progress = np.concatenate([[0.0], np.cumsum(profile[1:])])
    where = progress / progress[-1] * cost[-1]
    written = np.stack([np.interp(where, cost, xy[:, 0]), np.interp(where, cost, xy[:, 1])], axis=1)
    pen_up = np.interp(where, cost, lifted)
    lead = round(t.lead * (length - n_write))
    trail = length - n_write - lead
    position = np.concatenate([np.repeat(written[:1], lead, 0), written, np.repeat(written[-1:], trail, 0)])
    return position, np.concatenate([np.zeros(lead), pen_up, np.zeros(trail)])


def render_trace(t: Trace, length: int = IMU_LENGTH, rate: int = IMU_RATE) -> np.ndarray:
    """The IMU window of ``t``: float32 ``(6, length)``, accelerometer xyz (m/s^2) then gyroscope xyz (rad/s)."""
    from scipy.ndimage import gaussian_filter1d  # scipy comes with scikit-learn

    position, pen_up = pen_path(t, length)
    dt = 1.0 / rate
    xy = gaussian_filter1d(position, SMOOTH_SAMPLES, axis=0, mode="nearest")
    z = gaussian_filter1d(pen_up * t.lift, 2 * SMOOTH_SAMPLES, mode="nearest")
    pos = np.column_stack([xy, z])
    velocity = np.gradient(pos, dt, axis=0)
    accel = np.gradient(velocity, dt, axis=0)
    tilt = TILT_GAIN * velocity[:, :2]  # the pen leans into its motion
    tilt_rate = np.gradient(tilt, dt, axis=0)
    vx, vy, ax, ay = velocity[:, 0], velocity[:, 1], accel[:, 0], accel[:, 1]
    turning = (vx * ay - vy * ax) / (vx**2 + vy**2 + 1e-4)  # heading rate (rad/s), damped at rest
    gyro = np.column_stack([-tilt_rate[:, 1], tilt_rate[:, 0], TURN_GAIN * turning])
    rng = np.random.default_rng([t.seed, 1])  # independent of the speed profile's draws
    accel_sigma, gyro_sigma = rng.uniform(*ACCEL_NOISE), rng.uniform(*GYRO_NOISE)
    accel = accel + ACCEL_BIAS * rng.standard_normal(3) + accel_sigma * rng.standard_normal(accel.shape)
    gyro = gyro + GYRO_BIAS * rng.standard_normal(3) + gyro_sigma * rng.standard_normal(gyro.shape)
    return np.concatenate([accel, gyro], axis=1).T.astype(np.float32)


def build_spoken_letters(
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    n_train_per_edge: int = 1040,
    n_val: int = 390,
    image_size: int = 64,
    sample_rate: int = 16000,
    force: bool = False,
) -> dict[str, Path]:
    """Build the dataset once into ``<cache_dir>/spoken_letters/<folder>``; later calls reuse it.

    Built in a temporary sibling and renamed into place (readers never see a half-built dataset); an
    existing folder is reused when its ``manifest_info.json`` carries the same parameter hash.

    Args:
        cache_dir: cache root; default :func:`default_cache_dir`.
        seed: drives every draw (labels, cases, fonts, geometry, captions, voices, noise).
        n_train_per_edge: rows in each of the three training manifests (at least 26).
        n_val: rows in ``val.jsonl`` (at least 26).
        image_size: PNG side in pixels, at least 16.
        sample_rate: WAV sample rate in Hz.
        force: rebuild even if a matching build exists.

    Returns:
        ``{"train_image_text", "train_image_audio", "train_image_imu", "val", "info"}`` -> absolute paths.
    """
    params = SpokenLettersParams(seed, n_train_per_edge, n_val, image_size, sample_rate)
    if min(n_train_per_edge, n_val) < len(LETTERS) or image_size < 16 or sample_rate < 8000:
        raise ValueError(f"need n_train_per_edge, n_val >= 26, image_size >= 16, sample_rate >= 8000: {params}")
    root = Path(cache_dir or default_cache_dir()).expanduser().resolve() / "spoken_letters" / params.folder_name()
    cached_build(root, params.fingerprint(), SPLITS, lambda folder: _write_dataset(folder, params), force)
    return {**{split: root / f"{split}.jsonl" for split in SPLITS}, "info": root / "manifest_info.json"}


def _draw_glyph(rng: np.random.Generator, letter: str, path: str, fonts: tuple[str, ...]) -> Glyph:
    def uniform(bounds: tuple[float, float], digits: int = 3) -> float:
        return round(float(rng.uniform(*bounds)), digits)

    char = letter.upper() if rng.integers(2) else letter
    return Glyph(
        image=path,
        char=char,
        font=fonts[rng.integers(len(fonts))],
        extent=uniform(GLYPH_SIZES),
        angle=uniform((-MAX_ANGLE, MAX_ANGLE), 2),
        shift=(uniform((-MAX_SHIFT, MAX_SHIFT)), uniform((-MAX_SHIFT, MAX_SHIFT))),
        stroke=int(STROKES[rng.integers(len(STROKES))]),
        noise=uniform(IMAGE_NOISE, 2),
        noise_seed=int(rng.integers(2**63)),
    )


def _draw_trace(rng: np.random.Generator, letter: str, path: str, fonts: tuple[str, ...]) -> Trace:
    def uniform(bounds: tuple[float, float], digits: int = 3) -> float:
        return round(float(rng.uniform(*bounds)), digits)

    char = letter.upper() if rng.integers(2) else letter
    return Trace(
        imu=path,
        char=char,
        font=fonts[rng.integers(len(fonts))],
        height=uniform(TRACE_HEIGHTS, 4),
        aspect=uniform(TRACE_ASPECTS),
        slant=uniform((-MAX_SLANT, MAX_SLANT)),
        angle=uniform((-MAX_ANGLE, MAX_ANGLE), 2),
        writing=uniform(WRITING),
        lead=uniform((0.0, 1.0)),
        lift=uniform(LIFTS, 4),
        seed=int(rng.integers(2**63)),
    )


def _plan(params: SpokenLettersParams) -> tuple[dict[str, list[dict]], list[Glyph], list[Utterance], list[Trace]]:
    """Every random choice of the build, drawn in a fixed order from one generator."""
    rng = np.random.default_rng(params.seed)
    manifests: dict[str, list[dict]] = {}
    glyphs: list[Glyph] = []
    utterances: list[Utterance] = []
    traces: list[Trace] = []
    for split, (prefix, extra) in SPLITS.items():
        counts = balanced(params.n_val if split == "val" else params.n_train_per_edge, len(LETTERS))
        labels = rng.permutation(np.repeat(np.arange(len(LETTERS)), counts))
        fonts, variants = (VAL_FONTS, VAL_VARIANTS) if split == "val" else (TRAIN_FONTS, TRAIN_VARIANTS)
        rows = []
        for k, label in enumerate(labels):
            letter, row_id = LETTERS[label], f"{prefix}-{k:05d}"
            glyphs.append(_draw_glyph(rng, letter, f"images/{split}/{row_id}.png", fonts))
            row = {"id": row_id, "label": letter, "image": glyphs[-1].image}
            if "text" in extra:
                templates = _captions_for(glyphs[-1].char)
                row["text"] = caption(templates[rng.integers(len(templates))], glyphs[-1].char)
            if "audio" in extra:  # eSpeak spells a lone letter: "a" is the letter's name, not the article
                utterances.append(draw_utterance(rng, letter, f"audio/{split}/{row_id}.wav", variants))
                row["audio"] = utterances[-1].audio
            if "imu" in extra:
                traces.append(_draw_trace(rng, letter, f"imu/{split}/{row_id}.npy", fonts))
                row["imu"] = traces[-1].imu
            rows.append(row)
        manifests[split] = rows
    return manifests, glyphs, utterances, traces


def _captions_for(char: str) -> list[str]:
    case = "upper" if char.isupper() else "lower"
    return [t for t, cases in CAPTION_TEMPLATES if case in cases.split()]


def _write_dataset(folder: Path, params: SpokenLettersParams) -> None:
    manifests, glyphs, utterances, traces = _plan(params)
    for name in TRAIN_FONTS + VAL_FONTS:
        font_path(name)  # fail before rendering anything if matplotlib lacks one
    speaker = checked_speaker()
    for g in glyphs:
        (folder / g.image).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_glyph(g, params.image_size), "L").save(folder / g.image, format="PNG")
    write_utterances(folder, speaker, utterances, params.sample_rate)
    for t in traces:
        (folder / t.imu).parent.mkdir(parents=True, exist_ok=True)
        np.save(folder / t.imu, render_trace(t), allow_pickle=False)
    for split, rows in manifests.items():
        write_jsonl(folder / f"{split}.jsonl", rows)
    write_jsonl(folder / "images" / "glyphs.jsonl", [asdict(g) for g in glyphs])
    write_jsonl(folder / "audio" / "utterances.jsonl", [asdict(u) for u in utterances])
    write_jsonl(folder / "imu" / "traces.jsonl", [asdict(t) for t in traces])
    info = _info(manifests, params, speaker)
    info["content_sha256"] = content_hash(folder)
    (folder / "manifest_info.json").write_text(json.dumps(info, indent=2) + "\n")


def _info(manifests: dict[str, list[dict]], params: SpokenLettersParams, speaker: Speaker) -> dict:
    from PIL import features

    counts = {split: len(rows) for split, rows in manifests.items()}
    per_class = {split: {n: sum(r["label"] == n for r in rows) for n in LETTERS} for split, rows in manifests.items()}
    for modality in ("image", "audio", "imu"):
        counts[modality] = sum(modality in r for rows in manifests.values() for r in rows)
    packages = ("espeakng-loader", "matplotlib", "numpy", "scipy", "soundfile", "pillow")
    return {
        "dataset": "spoken_letters",
        "version": VERSION,
        "seed": params.seed,
        "params": asdict(params),
        "params_sha256": params.fingerprint(),
        "counts": counts,
        "per_class": per_class,
        "fonts": {"train": TRAIN_FONTS, "val": VAL_FONTS},
        "speakers": {"train": TRAIN_VARIANTS, "val": VAL_VARIANTS, "accents": ACCENTS},
        "imu": {"length": IMU_LENGTH, "rate_hz": IMU_RATE, "axes": "accel xyz (m/s^2), gyro xyz (rad/s)"},
        "versions": {
            **{p: metadata.version(p) for p in packages},
            "freetype": features.version("freetype2"),
            "espeak-ng": speaker.version,
        },
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m bindspace.datasets.spoken_letters``: build (or find) the dataset and print its files."""
    build_cli(__doc__.splitlines()[0], SpokenLettersParams, build_spoken_letters, argv)


if __name__ == "__main__":
    main()
