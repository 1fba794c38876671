"""Spoken digits: a tiny build is deterministic, well-formed, disjoint where it must be, and cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from sklearn.datasets import load_digits

from bindspace.datasets.spoken_digits.builder import (
    CAPTION_TEMPLATES,
    DIGIT_NAMES,
    SPLITS,
    TRAIN_VARIANTS,
    VAL_VARIANTS,
    SpokenDigitsParams,
    Utterance,
    build_spoken_digits,
    class_prompts,
    content_hash,
    default_cache_dir,
    render_utterance,
    upscale_digit,
)
from bindspace.datasets.spoken_digits.espeak import Speaker

TINY = {"n_train_per_edge": 40, "n_val": 20, "image_size": 32}
EXPECTED_KEYS = {
    "train_image_text": {"id", "label", "image", "text"},
    "train_image_audio": {"id", "label", "image", "audio"},
    "val": {"id", "label", "image", "audio", "text"},
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# Keep built data and the library copy Speaker makes out of the user's cache.
pytestmark = pytest.mark.usefixtures("bindspace_cache")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_spoken_digits(tmp_path_factory.mktemp("cache"), seed=0, **TINY)


@pytest.fixture(scope="module")
def rows(tiny) -> dict[str, list[dict]]:
    return {split: read_jsonl(tiny[split]) for split in SPLITS}


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_builds_are_byte_identical(tiny, tmp_path):
    again = build_spoken_digits(tmp_path, seed=0, **TINY)
    first, second = files_of(tiny["val"].parent), files_of(again["val"].parent)
    assert sorted(first) == sorted(second)
    assert [k for k in first if first[k] != second[k]] == []
    assert content_hash(tiny["val"].parent) == json.loads(tiny["info"].read_text())["content_sha256"]
    other_seed = build_spoken_digits(tmp_path, seed=1, **TINY)
    assert other_seed["val"].parent.name == "v1-seed1-train40-val20-img32"
    assert other_seed["val"].read_bytes() != tiny["val"].read_bytes()


def test_manifests_follow_the_format(tiny, rows):
    root, ids = tiny["val"].parent, []
    for split, samples in rows.items():
        assert len(samples) == TINY["n_val" if split == "val" else "n_train_per_edge"]
        for row in samples:
            assert set(row) == EXPECTED_KEYS[split], row
            assert row["label"] in DIGIT_NAMES
            for key in ("image", "audio"):
                if key in row:
                    assert not Path(row[key]).is_absolute() and ".." not in Path(row[key]).parts
                    assert (root / row[key]).is_file(), row[key]
            if "text" in row:  # the caption names the row's class
                label = DIGIT_NAMES.index(row["label"])
                assert row["label"] in row["text"].split() or str(label) in row["text"].split(), row
            ids.append(row["id"])
        counts = [sum(r["label"] == name for r in samples) for name in DIGIT_NAMES]
        assert max(counts) - min(counts) <= 1, (split, counts)
    assert len(ids) == len(set(ids))
    info = json.loads(tiny["info"].read_text())
    assert info["counts"]["val"] == TINY["n_val"] and info["params"]["seed"] == 0


def test_pools_are_disjoint_per_edge_and_from_val(tiny, rows):
    images = {split: {r["image"] for r in samples} for split, samples in rows.items()}
    assert not images["train_image_text"] & images["train_image_audio"]
    assert not images["val"] & (images["train_image_text"] | images["train_image_audio"])
    assert len(images["val"]) == len(rows["val"])  # every val sample has its own image
    audio = [r["audio"] for split in ("train_image_audio", "val") for r in rows[split]]
    assert len(audio) == len(set(audio))  # no utterance is reused, within or across splits
    utterances = read_jsonl(tiny["val"].parent / "audio" / "utterances.jsonl")
    speakers = {
        split: {u["voice"].split("+")[1] for u in utterances if u["audio"].startswith(f"audio/{split}/")}
        for split in ("train_image_audio", "val")
    }
    assert speakers["train_image_audio"] <= set(TRAIN_VARIANTS) and speakers["val"] <= set(VAL_VARIANTS)
    assert not set(TRAIN_VARIANTS) & set(VAL_VARIANTS)
    assert not set(TRAIN_VARIANTS + VAL_VARIANTS) & set(Speaker().nondeterministic_variants())


def test_images_are_the_sklearn_digits(tiny, rows):
    digits, root = load_digits(), tiny["val"].parent
    for samples in rows.values():
        for row in samples:
            index = int(Path(row["image"]).stem)
            decoded = np.array(Image.open(root / row["image"]))
            np.testing.assert_array_equal(decoded, upscale_digit(digits.images[index], TINY["image_size"]))
            assert row["label"] == DIGIT_NAMES[digits.target[index]]
    # the documented upscaling is invertible: every 4th pixel, rescaled, gives the 0..16 ink back
    np.testing.assert_array_equal(np.rint(upscale_digit(digits.images[5], 32)[::4, ::4] / 255 * 16), digits.images[5])


def test_audio_is_speech_described_by_its_metadata(tiny):
    root = tiny["val"].parent
    records = read_jsonl(root / "audio" / "utterances.jsonl")
    utterances = [Utterance(**{**u, "pad_seconds": tuple(u["pad_seconds"])}) for u in records]
    assert len(utterances) == TINY["n_train_per_edge"] + TINY["n_val"]
    for u in utterances:
        wave, rate = sf.read(root / u.audio, dtype="float32")
        assert rate == 16000 and wave.ndim == 1 and 0.15 < len(wave) / rate < 1.1
        assert np.abs(wave).max() > 0.2  # peak gain is drawn from 0.25..0.9
    u = utterances[0]  # rebuilding one utterance from its metadata gives the file (up to 16-bit rounding)
    wave, _ = sf.read(root / u.audio, dtype="float32")
    np.testing.assert_allclose(render_utterance(Speaker(), u, 16000), wave, atol=1.5 / 32768)


def test_rebuild_is_skipped_unless_parameters_change(tmp_path):
    small = {"n_train_per_edge": 10, "n_val": 10, "image_size": 8}
    paths = build_spoken_digits(tmp_path, **small)
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    assert build_spoken_digits(tmp_path, **small) == paths
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == stamps
    other = build_spoken_digits(tmp_path, **{**small, "n_val": 20})
    assert other["val"].parent != paths["val"].parent and len(read_jsonl(other["val"])) == 20
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == stamps
    info = json.loads(paths["info"].read_text())  # a build from another recipe in the same folder is replaced
    paths["info"].write_text(json.dumps({**info, "params_sha256": "stale"}))
    build_spoken_digits(tmp_path, **small)
    assert json.loads(paths["info"].read_text()) == info
    build_spoken_digits(tmp_path, **small, force=True)
    assert paths["val"].stat().st_mtime_ns != stamps["val"]
    assert json.loads(paths["info"].read_text()) == info  # same content hash
    folders = sorted(p.name for p in paths["val"].parent.parent.iterdir())
    assert folders == ["v1-seed0-train10-val10-img8", "v1-seed0-train10-val20-img8"]  # no staging leftovers


def test_folder_names_and_cache_dir(monkeypatch, tmp_path):
    assert SpokenDigitsParams().folder_name() == "v1-seed0"
    assert SpokenDigitsParams(seed=3, sample_rate=22050).folder_name() == "v1-seed3-sr22050"
    monkeypatch.setenv("BINDSPACE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_val": 1800}, "leaves class"), ({"image_size": 30}, "multiple of 8"), ({"n_train_per_edge": 5}, ">= 10")],
)
def test_bad_parameters_fail_before_building(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_spoken_digits(tmp_path, **kwargs)


def test_class_prompts():
    prompts = class_prompts()
    assert list(prompts) == list(DIGIT_NAMES)
    assert prompts["seven"][:3] == ["the number seven", "a spoken seven", "the digit 7"]
    assert all(len(p) == len(CAPTION_TEMPLATES) for p in prompts.values())
    flat = [p for ps in prompts.values() for p in ps]
    assert len(flat) == len(set(flat))  # no prompt is shared by two classes
