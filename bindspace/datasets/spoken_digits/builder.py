"""Spoken digits: a small real image/audio/text benchmark, built offline and deterministically.

- image: the 1797 real handwritten digits shipped with scikit-learn (``load_digits``, 8x8, ink 0..16),
  written as grayscale PNGs, white ink on black, upscaled by pixel repetition (:func:`upscale_digit`).
- audio: eSpeak NG saying the digit's name ("seven") in English accents x voice variants, random
  rate, pitch and intonation, trimmed, resampled, random gain, random silence padding and white noise
  at a random SNR; 16-bit mono WAV. Every audio sample has its own utterance (none is reused).
- text: a caption from :data:`CAPTION_TEMPLATES` ("the number seven", "the digit 7", ...).

Files, under ``<cache>/spoken_digits/<version>-seed<seed>[-<non-default sizes>]/``::

    train_image_text.jsonl   {"id", "label", "image", "text"}   one pool of images
    train_image_audio.jsonl  {"id", "label", "image", "audio"}  a disjoint pool: audio<->text is emergent
    val.jsonl                {"id", "label", "image", "audio", "text"}  held-out images and speakers
    images/<i>.png           sklearn image i (load_digits().images[i]), written once, shared by rows
    audio/<split>/<id>.wav   one utterance per audio row
    audio/utterances.jsonl   how each was made (voice, rate, pitch, gain, SNR, padding, noise seed)
    manifest_info.json       parameters and their hash, counts, versions, content hash

Paths in manifests are relative to the manifest's folder; ``label`` is the digit's name. Rows of
one split are balanced over classes (counts differ by at most one). When a split has more rows
than its pool has images, images repeat within that pool only, each time with a new caption or
utterance. Validation speakers (voice variants) never speak in training.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from bindspace.datasets.spoken_digits.espeak import Speaker

VERSION = "v1"  # bump when the recipe changes in a way the parameters below do not capture
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "the number {name}", "a spoken {name}", "the digit {digit}", "{name}", "a handwritten {name}",
    "the word {name}", "someone saying {name}", "a picture of the number {name}", "number {digit}",
    "the numeral {digit}", "a {name}", "{digit}",
)  # fmt: skip
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
# Speakers (eSpeak voice variants); validation speakers are held out of training. None adds breath
# noise: those variants are not reproducible (see bindspace.datasets.spoken_digits.espeak).
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "steph", "steph2", "klatt", "klatt2", "croak",
                  "Andy", "Annie", "anika", "belinda", "david", "edward", "ian", "john", "linda", "max", "paul",
                  "travis")  # fmt: skip
VAL_VARIANTS = ("m7", "m8", "f4", "steph3", "klatt4", "aunty", "grandma", "grandpa", "robert", "zac")
RATES, PITCHES, INTONATIONS = (120, 220), (25, 75), (20, 80)  # eSpeak units, drawn uniformly
GAINS, SNR_DB, MAX_PAD_SECONDS = (0.25, 0.9), (5.0, 30.0), 0.2  # peak before noise; white noise SNR
# Longest clip: "seven" at rate 120 (~0.65 s) plus both pads, about 1.05 s.

SPLITS = {  # manifest name -> (id prefix, modalities besides image)
    "train_image_text": ("it", ("text",)),
    "train_image_audio": ("ia", ("audio",)),
    "val": ("val", ("audio", "text")),
}
_SILENCE = 1e-4  # |sample| at or below this is eSpeak's leading/trailing silence


@dataclass(frozen=True)
class SpokenDigitsParams:
    """What the dataset depends on (besides the tables above, which are hashed with it)."""

    seed: int = 0
    n_train_per_edge: int = 1500  # rows per training manifest
    n_val: int = 300  # rows in val.jsonl, each with its own image and utterance
    image_size: int = 64  # a multiple of 8 (pixel repetition)
    sample_rate: int = 16000

    def folder_name(self) -> str:
        defaults = SpokenDigitsParams()
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
            "tables": [CAPTION_TEMPLATES, ACCENTS, TRAIN_VARIANTS, VAL_VARIANTS],
            "draws": [RATES, PITCHES, INTONATIONS, GAINS, SNR_DB, MAX_PAD_SECONDS],
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Utterance:
    """Everything an audio file is rendered from (a pure function of these fields)."""

    audio: str  # path relative to the dataset folder
    word: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    gain: float
    snr_db: float
    pad_seconds: tuple[float, float]
    noise_seed: int


def caption(template: str, label: int) -> str:
    """Fill a template with the digit's name (``{name}``) and numeral (``{digit}``)."""
    return template.format(name=DIGIT_NAMES[label], digit=label)


def class_prompts(templates: tuple[str, ...] = CAPTION_TEMPLATES) -> dict[str, list[str]]:
    """Class name -> prompts for zero-shot classification (embed each, average, normalise)."""
    return {name: [caption(t, label) for t in templates] for label, name in enumerate(DIGIT_NAMES)}


def upscale_digit(pixels: np.ndarray, size: int) -> np.ndarray:
    """8x8 sklearn digit (ink 0..16) -> uint8 (size, size): round(v * 255 / 16), each pixel repeated."""
    if pixels.shape != (8, 8) or size % 8:
        raise ValueError(f"need an (8, 8) digit and a size that is a multiple of 8, got {pixels.shape} and {size}")
    gray = np.rint(np.asarray(pixels, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)
    return np.repeat(np.repeat(gray, size // 8, axis=0), size // 8, axis=1)


def default_cache_dir() -> Path:
    """``$BINDSPACE_CACHE``, else ``~/.cache/bindspace``."""
    return Path(os.environ.get("BINDSPACE_CACHE") or "~/.cache/bindspace").expanduser()


def build_spoken_digits(
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    n_train_per_edge: int = 1500,
    n_val: int = 300,
    image_size: int = 64,
    sample_rate: int = 16000,
    force: bool = False,
) -> dict[str, Path]:
    """Build the dataset once into ``<cache_dir>/spoken_digits/<folder>``; later calls reuse it.

    The folder is built in a temporary sibling and renamed into place, so readers never see a
    half-built dataset. An existing folder is reused when its ``manifest_info.json`` carries the
    same parameter hash, and rebuilt otherwise.

    Args:
        cache_dir: cache root; default :func:`default_cache_dir`.
        seed: drives the split, pairing, captions, voices and noise.
        n_train_per_edge: rows in each training manifest.
        n_val: rows in ``val.jsonl`` (at most 1720: every class keeps two images for training).
        image_size: PNG side in pixels, a multiple of 8.
        sample_rate: WAV sample rate in Hz.
        force: rebuild even if a matching build exists.

    Returns:
        ``{"train_image_text", "train_image_audio", "val", "info"}`` -> absolute file paths.
    """
    params = SpokenDigitsParams(seed, n_train_per_edge, n_val, image_size, sample_rate)
    if min(n_train_per_edge, n_val) < len(DIGIT_NAMES) or image_size < 8 or image_size % 8 or sample_rate < 8000:
        raise ValueError(
            f"need n_train_per_edge, n_val >= 10, image_size a multiple of 8, sample_rate >= 8000: {params}"
        )
    root = Path(cache_dir or default_cache_dir()).expanduser().resolve() / "spoken_digits" / params.folder_name()
    cached_build(root, params.fingerprint(), SPLITS, lambda folder: _write_dataset(folder, params), force)
    return {**{split: root / f"{split}.jsonl" for split in SPLITS}, "info": root / "manifest_info.json"}


def cached_build(
    root: Path, fingerprint: str, splits: Iterable[str], write: Callable[[Path], None], force: bool = False
) -> None:
    """Build a dataset into ``root`` unless a build with the same parameter hash is there already.

    ``write(folder)`` writes every file, ``<split>.jsonl`` for each of ``splits`` and a
    ``manifest_info.json`` holding ``params_sha256 == fingerprint``, into an empty staging folder (a
    temporary sibling of ``root``), which is then renamed into place: readers never see a half-built
    dataset, and a build from other parameters in the same folder is replaced.
    """
    splits = tuple(splits)
    if force or not _is_built(root, fingerprint, splits):
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
        try:
            write(staging)
            _publish(staging, root, fingerprint, splits, force)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _is_built(root: Path, fingerprint: str, splits: tuple[str, ...]) -> bool:
    try:
        info = json.loads((root / "manifest_info.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("params_sha256") == fingerprint and all((root / f"{s}.jsonl").is_file() for s in splits)


def _publish(staging: Path, root: Path, fingerprint: str, splits: tuple[str, ...], force: bool) -> None:
    """Rename the finished build into place; a stale folder is moved aside first, then deleted."""
    if root.exists():
        if _is_built(root, fingerprint, splits) and not force:
            return  # another process finished the same build first
        stale = root.with_name(f".{root.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
        root.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging.rename(root)
    except OSError:
        if not _is_built(root, fingerprint, splits):  # lost a race to a process that built the same thing: fine
            raise


def balanced(total: int, n_classes: int = len(DIGIT_NAMES)) -> list[int]:
    """Per-class counts summing to ``total`` that differ by at most one (the first classes get the extras)."""
    return [total // n_classes + (c < total % n_classes) for c in range(n_classes)]


def _pick_images(
    labels: np.ndarray, params: SpokenDigitsParams, rng: np.random.Generator
) -> dict[str, list[tuple[int, int]]]:
    """(sklearn index, class) per row of each split, rows shuffled; the three image pools are disjoint."""
    val_counts, train_counts = balanced(params.n_val), balanced(params.n_train_per_edge)
    picks: dict[str, list[tuple[int, int]]] = {split: [] for split in SPLITS}
    for c in range(len(DIGIT_NAMES)):
        items = rng.permutation(np.flatnonzero(labels == c))
        if len(items) - val_counts[c] < 2:
            raise ValueError(f"n_val={params.n_val} leaves class {c} ({len(items)} images) no training images")
        picks["val"] += [(int(i), c) for i in items[: val_counts[c]]]
        rest = items[val_counts[c] :]
        for split, pool in (("train_image_text", rest[0::2]), ("train_image_audio", rest[1::2])):
            picks[split] += [(int(pool[k % len(pool)]), c) for k in range(train_counts[c])]
    return {split: [rows[i] for i in rng.permutation(len(rows))] for split, rows in picks.items()}


def draw_utterance(rng: np.random.Generator, word: str, path: str, variants: tuple[str, ...]) -> Utterance:
    """An utterance of ``word`` written to ``path``: accent, speaker from ``variants``, rate, pitch, intonation,
    pads, gain, SNR and noise seed, drawn from ``rng`` in that order (``word`` draws nothing)."""

    def uniform(bounds: tuple[float, float]) -> float:
        return round(float(rng.uniform(*bounds)), 3)

    voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{variants[rng.integers(len(variants))]}"
    rate, pitch, intonation = (int(rng.integers(lo, hi + 1)) for lo, hi in (RATES, PITCHES, INTONATIONS))
    pads = (uniform((0.0, MAX_PAD_SECONDS)), uniform((0.0, MAX_PAD_SECONDS)))
    return Utterance(
        audio=path,
        word=word,
        voice=voice,
        rate=rate,
        pitch=pitch,
        pitch_range=intonation,
        gain=uniform(GAINS),
        snr_db=uniform(SNR_DB),
        pad_seconds=pads,
        noise_seed=int(rng.integers(2**63)),
    )


def _plan(labels: np.ndarray, params: SpokenDigitsParams) -> tuple[dict[str, list[dict]], list[Utterance]]:
    """Every random choice of the build, drawn in a fixed order from one generator."""
    rng = np.random.default_rng(params.seed)
    manifests: dict[str, list[dict]] = {}
    utterances: list[Utterance] = []
    for split, picks in _pick_images(labels, params, rng).items():
        prefix, extra = SPLITS[split]
        variants = VAL_VARIANTS if split == "val" else TRAIN_VARIANTS
        rows = []
        for k, (image, label) in enumerate(picks):
            row = {"id": f"{prefix}-{k:05d}", "label": DIGIT_NAMES[label], "image": f"images/{image:04d}.png"}
            if "audio" in extra:
                utterances.append(draw_utterance(rng, DIGIT_NAMES[label], f"audio/{split}/{row['id']}.wav", variants))
                row["audio"] = utterances[-1].audio
            if "text" in extra:
                row["text"] = caption(CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))], label)
            rows.append(row)
        manifests[split] = rows
    return manifests, utterances


def render_utterance(speaker: Speaker, u: Utterance, sample_rate: int) -> np.ndarray:
    """The waveform of ``u``: float32 (T,) in [-1, 1] at ``sample_rate``."""
    from scipy.signal import resample_poly  # scipy comes with scikit-learn

    speech, native = speaker.say(u.word, u.voice, u.rate, u.pitch, u.pitch_range)
    loud = np.flatnonzero(np.abs(speech) > _SILENCE)
    if not len(loud):
        raise RuntimeError(f"eSpeak produced silence for {u}")
    speech = speech[loud[0] : loud[-1] + 1].astype(np.float64)
    if native != sample_rate:
        g = gcd(native, sample_rate)
        speech = resample_poly(speech, sample_rate // g, native // g)
    speech *= u.gain / np.abs(speech).max()
    lead, trail = (round(p * sample_rate) for p in u.pad_seconds)
    wave = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    noise_rms = np.sqrt(np.mean(speech**2) / 10 ** (u.snr_db / 10))
    wave += np.random.default_rng(u.noise_seed).standard_normal(len(wave)) * noise_rms
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def checked_speaker() -> Speaker:
    """A :class:`Speaker` that has every voice variant of the recipe, each reproducible; else RuntimeError."""
    speaker = Speaker()
    missing = sorted(set(TRAIN_VARIANTS + VAL_VARIANTS) - set(speaker.list_variants()))
    unstable = sorted(set(TRAIN_VARIANTS + VAL_VARIANTS) & set(speaker.nondeterministic_variants()))
    if missing or unstable:
        where = f"eSpeak NG {speaker.version} at {speaker.data_dir}"
        raise RuntimeError(f"{where}: voice variants missing {missing}, not reproducible {unstable}")
    return speaker


def write_utterances(folder: Path, speaker: Speaker, utterances: Iterable[Utterance], sample_rate: int) -> None:
    """Render each utterance into ``folder / u.audio``: 16-bit mono WAV at ``sample_rate``."""
    for u in utterances:
        (folder / u.audio).parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # libsndfile writing straight to a file costs ~5 ms in small writes and seeks
        sf.write(buffer, render_utterance(speaker, u, sample_rate), sample_rate, "PCM_16", format="WAV")
        (folder / u.audio).write_bytes(buffer.getvalue())


def _write_dataset(folder: Path, params: SpokenDigitsParams) -> None:
    from sklearn.datasets import load_digits  # imported here: only a build needs scikit-learn

    digits = load_digits()
    manifests, utterances = _plan(digits.target, params)
    speaker = checked_speaker()
    (folder / "images").mkdir()
    for index in sorted({int(Path(r["image"]).stem) for rows in manifests.values() for r in rows}):
        Image.fromarray(upscale_digit(digits.images[index], params.image_size), "L").save(
            folder / "images" / f"{index:04d}.png", format="PNG"
        )
    write_utterances(folder, speaker, utterances, params.sample_rate)
    for split, rows in manifests.items():
        write_jsonl(folder / f"{split}.jsonl", rows)
    write_jsonl(folder / "audio" / "utterances.jsonl", [asdict(u) for u in utterances])
    info = _info(manifests, utterances, params, speaker)
    info["content_sha256"] = content_hash(folder)
    (folder / "manifest_info.json").write_text(json.dumps(info, indent=2) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _info(
    manifests: dict[str, list[dict]], utterances: list[Utterance], params: SpokenDigitsParams, speaker: Speaker
) -> dict:
    counts = {split: len(rows) for split, rows in manifests.items()}
    per_class = {
        split: {n: sum(r["label"] == n for r in rows) for n in DIGIT_NAMES} for split, rows in manifests.items()
    }
    versions = {p: metadata.version(p) for p in ("espeakng-loader", "scikit-learn", "numpy", "soundfile", "pillow")}
    counts["utterances"] = len(utterances)
    counts["images"] = len({r["image"] for rows in manifests.values() for r in rows})
    return {
        "dataset": "spoken_digits",
        "version": VERSION,
        "seed": params.seed,
        "params": asdict(params),
        "params_sha256": params.fingerprint(),
        "counts": counts,
        "per_class": per_class,
        "speakers": {"train": TRAIN_VARIANTS, "val": VAL_VARIANTS, "accents": ACCENTS},
        "versions": {**versions, "espeak-ng": speaker.version, "libsndfile": sf.__libsndfile_version__},
    }


def content_hash(folder: str | os.PathLike[str]) -> str:
    """SHA-256 over every file's relative path and bytes, ``manifest_info.json`` excluded."""
    folder, digest = Path(folder), hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest_info.json"):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build_cli(description: str, params: type, build: Callable[..., dict[str, Path]], argv: list[str] | None) -> None:
    """A benchmark builder's command line: one ``--<param>`` per field of ``params``, ``--cache-dir``, ``--force``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--cache-dir", default=None, help="cache root (default: $BINDSPACE_CACHE or ~/.cache/bindspace)"
    )
    for f in fields(params):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default)
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    args = vars(parser.parse_args(argv))
    start = time.perf_counter()
    paths = build(**args)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    print(f"ready in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> None:
    """``python -m bindspace.datasets.spoken_digits``: build (or find) the dataset and print its files."""
    build_cli(__doc__.splitlines()[0], SpokenDigitsParams, build_spoken_digits, argv)


if __name__ == "__main__":
    main()
