"""Inputs that fit: every built-in caption inside every preset's text context, truncation counted and warned
about, held-out sets too small for R@K named."""

from __future__ import annotations

import logging
from importlib import resources

import numpy as np
import pytest
import yaml
from test_manifest import build, paired_rows, write_rows

from bindspace.data import build_datamodule
from bindspace.data import synthetic as syn
from bindspace.data.checks import (
    SYNTHETIC_POOL_SAMPLE,
    caption_truncation,
    datamodule_captions,
    report_caption_truncation,
    small_heldout_message,
    text_lengths,
    trivial_recalls,
)
from bindspace.data.cli import main, preset_text_inputs
from bindspace.datasets.spoken_digits.builder import class_prompts
from bindspace.datasets.spoken_letters.builder import class_prompts as letter_prompts
from bindspace.modalities import get_modality
from bindspace.modalities.clip_bpe import clip_bpe
from bindspace.modalities.text import TextInput, byte_tokenize


def longest_synthetic_caption() -> str:
    """The generator's longest possible caption: every phrase kept, the longest option of each."""

    def longest(options: tuple[str, ...]) -> tuple[int, float]:  # (bin or index, the draw that picks it)
        i = max(range(len(options)), key=lambda j: len(options[j]))
        return i, (i + 0.5) / len(options)

    def longest_bin(table) -> tuple[int, float]:
        b = max(range(len(table)), key=lambda j: max(map(len, table[j])))
        return b, longest(table[b])[1]

    (size, d_size), (temp, d_temp), (speed, d_speed) = map(
        longest_bin, (syn._SIZE_WORDS, syn._TEMPERATURE_WORDS, syn._SPEED_WORDS)
    )
    words = {"size": size, "temperature": temp, "speed": speed}
    words |= {"x": longest(syn._X_WORDS)[0], "y": longest(syn._Y_WORDS)[0]}
    names = syn.SyntheticScenes(syn.SyntheticConfig(num_classes=len(syn.SHAPES) * len(syn.COLOURS))).class_names()
    draws = np.array([d_size, d_temp, d_speed, 0.9, longest(syn._OPENERS)[1]])
    return syn._caption(max(names, key=len), words, np.ones(5, bool), draws)


def preset_and_experiment_contexts() -> dict[str, TextInput]:
    """Every model preset's text input, plus experiments that set their own context."""
    out = preset_text_inputs()
    for path in (resources.files("bindspace.configs") / "experiment").iterdir():
        text = ((yaml.safe_load(path.read_text()) or {}).get("modalities") or {}).get("text") or {}
        if "context_length" in (text.get("input") or {}):
            out[f"experiment={path.name[:-5]}"] = TextInput(context_length=text["input"]["context_length"])
    return out


def test_the_longest_synthetic_caption_bounds_every_rendered_one():
    longest = longest_synthetic_caption()
    rendered = syn.SyntheticScenes(syn.SyntheticConfig(num_classes=48)).render("text", np.arange(50_000))
    assert max(len(c.encode()) for c in rendered) <= len(longest.encode())
    assert len(longest.encode()) > 100  # the bound is not vacuous: most of every phrase list is in it


def test_every_builtin_caption_fits_every_preset_context():
    synthetic = [longest_synthetic_caption()]
    built = [c for prompts in (class_prompts(), letter_prompts()) for captions in prompts.values() for c in captions]
    contexts = preset_and_experiment_contexts()
    assert {"model=tiny", "model=small", "model=base", "model=huge"} <= set(contexts)
    for name, text_input in contexts.items():
        assert caption_truncation(built, text_input) == (0, len(built)), name
        if name.startswith("model="):  # experiments with a short context run the built benchmarks only
            assert caption_truncation(synthetic, text_input) == (0, 1), (name, text_input.context_length)


def test_caption_truncation_counts_what_the_tokenizer_cuts():
    text_input = TextInput(context_length=8)  # 6 bytes between BOS and EOS
    captions = ["abcdef", "abcdefg", "abcdé", "abcdeé", ""]  # é is two bytes
    assert text_lengths(captions, text_input) == [8, 9, 8, 9, 2]
    assert caption_truncation(captions, text_input) == (2, 5)
    for caption, n in zip(captions, text_lengths(captions, text_input), strict=True):
        _, mask = byte_tokenize(caption, 8)
        assert (int(mask.sum()) < n) == (n > 8)  # cut exactly when the tokenizer drops bytes


def test_a_run_reports_its_synthetic_captions_and_warns_above_one_percent(caplog):
    edges = [("image", "text"), ("image", "audio"), ("text", "audio")]
    for context, level in ((64, logging.WARNING), (128, logging.INFO)):
        configs = {m: get_modality(m).config_from_dict({"input": {}}) for m in ("image", "text", "audio")}
        configs["text"].input.context_length = context
        data = {"name": "synthetic", "pool_size": 20_000, "val_size": 50, "test_size": 70}
        dm = build_datamodule(data, configs, edges, seed=0)
        assert len(datamodule_captions(dm)) == 2 * SYNTHETIC_POOL_SAMPLE + 50 + 70  # two text pools
        with caplog.at_level(logging.INFO, logger="bindspace.data"):
            caplog.clear()
            truncated, total = report_caption_truncation(dm, configs)
        assert [r.levelno for r in caplog.records] == [level]
        assert f"exceed the {context}-token text context" in caplog.text
        assert (truncated / total > 0.5) == (context == 64)  # most captions are longer than 62 bytes
    assert report_caption_truncation(dm, {"image": configs["image"]}) is None  # no text, nothing to report


def test_manifest_captions_count_each_sample_once(tmp_path):
    rows = paired_rows(tmp_path, 20, ["image", "text", "audio"], "s")
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    dm = build([("image", "text"), ("text", "audio")], train=str(manifest), val_fraction=0.5)
    assert sorted(datamodule_captions(dm)) == sorted(r["text"] for r in rows)  # train pools + val, each once


def test_small_heldout_sets_name_the_recalls_they_trivialise(tmp_path):
    assert trivial_recalls(8) == {"R@1": 12.5, "R@5": 62.5, "R@10": 100.0}
    assert trivial_recalls(1000) == {} and small_heldout_message(1000, "data.val") is None
    assert list(trivial_recalls(60)) == ["R@10"]
    message = small_heldout_message(8, "data.val")
    assert message.startswith("data.val: a held-out set of 8 samples makes R@1 (chance 12.5%)")
    assert "R@10 (chance 100.0%)" in message and "\n" not in message
    # The case: 60 rows with the default 10% held out by id hash.
    rows = paired_rows(tmp_path, 60, ["image", "text"], "row")
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    with pytest.warns(UserWarning, match=r"data\.val: a held-out set of \d+ samples makes .*R@10 \(chance 100\.0%\)"):
        dm = build([("image", "text")], train=str(manifest))
    assert len(dm.val_set) < 10


def test_data_check_reports_caption_truncation_per_preset_and_for_a_given_context(tmp_path, capsys):
    rows = paired_rows(tmp_path, 3, ["image", "text"], "a-rather-long-sample-name-")
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    assert main(["check", str(manifest)]) == 0
    out = capsys.readouterr().out
    for preset in ("tiny", "small", "base"):
        assert f"text: 0 of 3 captions (0.0%) exceed the 128-token text context (model={preset})" in out
    # huge is ImageBind's CLIP BPE in 77 positions, counted in BPE tokens
    longest_bpe = max(len(clip_bpe().encode(r["text"])) for r in rows) + 2
    line = (
        f"text: 0 of 3 captions (0.0%) exceed the 77-token text context (model=huge) (longest caption: {longest_bpe} "
    )
    assert line in out and longest_bpe < len(rows[0]["text"]) + 2
    assert main(["check", str(manifest), "--context-length", "16"]) == 0  # cut captions are not bad files
    out = capsys.readouterr().out
    assert "warning: text: 3 of 3 captions (100.0%) exceed the 16-token text context (--context-length)" in out
    assert f"(longest caption: {len(rows[0]['text']) + 2} tokens)" in out  # BOS + 35 bytes + EOS


@pytest.mark.slow
def test_training_warns_at_startup_when_captions_are_cut(tmp_path, caplog):
    from conftest import compose_config

    from bindspace.train import run

    # TINY_OVERRIDES shrink the text context to 48 tokens, which cuts most synthetic captions.
    cfg = compose_config(["trainer.max_steps=1", "eval.final=false"], run_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="bindspace.data"):
        run(cfg)
    cut = [r for r in caplog.records if "exceed the 48-token text context" in r.getMessage()]
    assert len(cut) == 1 and cut[0].levelno == logging.WARNING
