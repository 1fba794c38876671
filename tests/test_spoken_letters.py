"""Spoken letters: a tiny build is deterministic, well-formed, holds out fonts and speakers, is cached, and trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config
from PIL import Image

from bindspace.data.readers import read_file
from bindspace.datasets.spoken_digits.builder import TRAIN_VARIANTS, VAL_VARIANTS, Utterance, render_utterance
from bindspace.datasets.spoken_digits.espeak import Speaker
from bindspace.datasets.spoken_letters.builder import (
    IMU_LENGTH,
    LETTER_NAMES,
    LETTERS,
    SPLITS,
    TRAIN_FONTS,
    VAL_FONTS,
    Glyph,
    SpokenLettersParams,
    Trace,
    build_spoken_letters,
    class_prompts,
    content_hash,
    font_path,
    glyph_contours,
    render_glyph,
    render_trace,
)

TINY = {"n_train_per_edge": 52, "n_val": 26, "image_size": 32}
EXPECTED_KEYS = {
    "train_image_text": {"id", "label", "image", "text"},
    "train_image_audio": {"id", "label", "image", "audio"},
    "train_image_imu": {"id", "label", "image", "imu"},
    "val": {"id", "label", "image", "text", "audio", "imu"},
}

# Keep built data and the library copy Speaker makes out of the user's cache.
pytestmark = pytest.mark.usefixtures("bindspace_cache")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_spoken_letters(tmp_path_factory.mktemp("cache"), seed=0, **TINY)


@pytest.fixture(scope="module")
def rows(tiny) -> dict[str, list[dict]]:
    return {split: read_jsonl(tiny[split]) for split in SPLITS}


def records(tiny, kind: str) -> dict[str, dict]:
    """How each file was made (images/glyphs.jsonl, audio/utterances.jsonl, imu/traces.jsonl), by file."""
    path = {"image": "images/glyphs.jsonl", "audio": "audio/utterances.jsonl", "imu": "imu/traces.jsonl"}[kind]
    return {r[kind]: r for r in read_jsonl(tiny["val"].parent / path)}


def test_two_builds_are_byte_identical(tiny, tmp_path):
    again = build_spoken_letters(tmp_path, seed=0, **TINY)
    first, second = files_of(tiny["val"].parent), files_of(again["val"].parent)
    assert sorted(first) == sorted(second)
    assert [k for k in first if first[k] != second[k]] == []
    info = json.loads(tiny["info"].read_text())
    assert (
        content_hash(tiny["val"].parent)
        == info["content_sha256"]
        == json.loads(again["info"].read_text())["content_sha256"]
    )
    assert tiny["val"].parent.name == "v1-seed0-train52-val26-img32"
    assert SpokenLettersParams().folder_name() == "v1-seed0"


def test_manifests_follow_the_format(tiny, rows):
    root, ids = tiny["val"].parent, []
    for split, samples in rows.items():
        assert len(samples) == TINY["n_val" if split == "val" else "n_train_per_edge"]
        for row in samples:
            assert set(row) == EXPECTED_KEYS[split], row
            assert row["label"] in LETTERS
            for key in ("image", "audio", "imu"):
                if key in row:
                    assert not Path(row[key]).is_absolute() and ".." not in Path(row[key]).parts
                    assert (root / row[key]).is_file(), row[key]
            if "text" in row:  # the caption names the row's letter (as drawn, in lower case, or by name)
                words = row["text"].split()
                name = LETTER_NAMES[LETTERS.index(row["label"])]
                assert {row["label"], row["label"].upper(), name} & set(words), row
            ids.append(row["id"])
        counts = [sum(r["label"] == letter for r in samples) for letter in LETTERS]
        assert max(counts) - min(counts) <= 1, (split, counts)
    assert len(ids) == len(set(ids))
    files = [r[k] for samples in rows.values() for r in samples for k in ("image", "audio", "imu") if k in r]
    assert len(files) == len(set(files))  # every row has its own image, utterance and trace
    info = json.loads(tiny["info"].read_text())
    assert info["counts"]["val"] == TINY["n_val"] and info["counts"]["imu"] == TINY["n_train_per_edge"] + TINY["n_val"]


def test_files_read_through_bindspace_readers(tiny, rows):
    root, images = tiny["val"].parent, records(tiny, "image")
    for split in ("train_image_imu", "val"):
        for row in rows[split][:15]:
            png = Image.open(root / row["image"])
            assert png.mode == "L" and png.size == (TINY["image_size"],) * 2  # grayscale
            rgb = read_file("image", root / row["image"])
            assert rgb.shape == (32, 32, 3) and rgb.max() > 200 and (rgb[..., 0] > 128).mean() > 0.005  # ink
            assert np.median(rgb) < 40  # on black
            imu = read_file("imu", root / row["imu"])
            assert imu.shape == (6, IMU_LENGTH) and imu.dtype == np.float32 and np.isfinite(imu).all()
            assert 0.1 < np.abs(imu[:2]).max() < 50 and 0.05 < np.abs(imu[3:]).max() < 50  # m/s^2, rad/s
            assert images[row["image"]]["char"].lower() == row["label"]
    for row in rows["val"][:5]:
        wave, rate = read_file("audio", root / row["audio"])
        assert rate == 16000 and wave.shape[0] == 1 and 0.15 < wave.shape[1] / rate < 1.3
        assert np.abs(wave).max() > 0.2  # peak gain is drawn from 0.25..0.9


def test_val_fonts_and_voices_never_occur_in_training(tiny):
    assert not set(TRAIN_FONTS) & set(VAL_FONTS) and not set(TRAIN_VARIANTS) & set(VAL_VARIANTS)
    for kind, field, train, val in (
        ("image", "font", TRAIN_FONTS, VAL_FONTS),
        ("imu", "font", TRAIN_FONTS, VAL_FONTS),
        ("audio", "voice", TRAIN_VARIANTS, VAL_VARIANTS),
    ):
        used: dict[bool, set[str]] = {True: set(), False: set()}
        for path, record in records(tiny, kind).items():
            used[path.split("/")[1] == "val"].add(record[field].split("+")[-1])
        assert used[False] and used[False] <= set(train), (kind, used[False])
        assert used[True] and used[True] <= set(val), (kind, used[True])


def test_each_file_is_a_pure_function_of_its_record(tiny, rows):
    root, row = tiny["val"].parent, rows["val"][0]
    g = records(tiny, "image")[row["image"]]
    glyph = Glyph(**{**g, "shift": tuple(g["shift"])})
    np.testing.assert_array_equal(render_glyph(glyph, TINY["image_size"]), np.array(Image.open(root / row["image"])))
    trace = Trace(**records(tiny, "imu")[row["imu"]])
    np.testing.assert_array_equal(render_trace(trace), np.load(root / row["imu"]))
    u = records(tiny, "audio")[row["audio"]]
    assert u["word"] == row["label"]  # eSpeak spells the letter: "a" is said "ay"
    utterance = Utterance(**{**u, "pad_seconds": tuple(u["pad_seconds"])})
    wave, _ = read_file("audio", root / row["audio"])
    np.testing.assert_allclose(render_utterance(Speaker(), utterance, 16000), wave[0], atol=1.5 / 32768)


def test_every_font_draws_every_letter_distinctly():
    for font in TRAIN_FONTS + VAL_FONTS:
        assert font_path(font).is_file()
        images = set()
        for char in "abegijklmoqrwxzABEGIJKMOQRWX":
            glyph = Glyph("x.png", char, font, 0.6, 0.0, (0.0, 0.0), 0, 0.0, 0)
            pixels = render_glyph(glyph, 32)
            assert pixels.max() > 200, (font, char)
            images.add(pixels.tobytes())
            assert glyph_contours(font, char), (font, char)
        assert len(images) == 28, font  # no fallback box: every letter has its own glyph


def test_rebuild_is_skipped_unless_parameters_change(tmp_path):
    small = {"n_train_per_edge": 26, "n_val": 26, "image_size": 16}
    paths = build_spoken_letters(tmp_path, **small)
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    assert build_spoken_letters(tmp_path, **small) == paths
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == stamps
    info = json.loads(paths["info"].read_text())  # a build from another recipe in the same folder is replaced
    paths["info"].write_text(json.dumps({**info, "params_sha256": "stale"}))
    build_spoken_letters(tmp_path, **small)
    assert json.loads(paths["info"].read_text()) == info
    assert [p.name for p in paths["val"].parent.parent.iterdir()] == ["v1-seed0-train26-val26-img16"]


@pytest.mark.parametrize(("kwargs", "message"), [({"n_val": 25}, ">= 26"), ({"image_size": 8}, "image_size >= 16")])
def test_bad_parameters_fail_before_building(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_spoken_letters(tmp_path, **kwargs)


def test_class_prompts_are_distinct_and_short():
    prompts = class_prompts()
    assert list(prompts) == list(LETTERS)
    assert {"the letter b", "a capital B", "lowercase b", "the letter bee", "someone saying bee"} <= set(prompts["b"])
    flat = [p for ps in prompts.values() for p in ps]
    assert len(flat) == len(set(flat))  # no prompt is shared by two classes
    assert max(len(p.encode()) for p in flat) < 40  # inside every preset's text context


def test_training_runs_through_the_config(tmp_path, monkeypatch):
    """``experiment=spoken_letters`` composes (data, prompts, four modalities, three edges) and trains."""
    monkeypatch.setenv("BINDSPACE_CACHE", str(tmp_path / "cache"))
    from bindspace.train import run

    build = [f"data.{k}={v}" for k, v in TINY.items()]
    cfg = compose_config(
        ["experiment=spoken_letters", *build, "data.batch_size=8", "trainer.max_steps=3",
         "trainer.val_check_interval=3", "optim.warmup_steps=1", "checkpoint.every_n_train_steps=3"],
        run_dir=str(tmp_path / "run"), synthetic=False,
    )  # fmt: skip
    assert cfg.data.name == "spoken_letters" and list(cfg.graph.modalities) == ["image", "text", "audio", "imu"]
    metrics = run(cfg)
    assert metrics["steps"] == 3 and metrics["gallery_size"] == TINY["n_val"]
    trained = {pair: v["trained"] for pair, v in metrics["retrieval"].items()}
    assert trained["image->text"] and trained["image->audio"] and trained["image->imu"]
    assert not (trained["audio->text"] or trained["imu->text"] or trained["audio->imu"])  # emergent
    assert {"image", "audio", "imu"} <= set(metrics["zero_shot"])
