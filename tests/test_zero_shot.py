"""Zero-shot classification against text prompts, on constructed embeddings with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bindspace.evaluation import zero_shot_from_classes
from bindspace.evaluation.zero_shot import (
    Prompts,
    class_embeddings,
    evaluate_zero_shot,
    load_prompts,
    zero_shot,
    zero_shot_chance,
    zero_shot_per_query,
)
from bindspace.modalities import ConfigError

D = 8
CLASSES = ["cat", "dog", "owl"]
TEMPLATES = ["a photo of a {}", "the sound of a {}"]


def fake_text_encoder(texts: list[str]) -> torch.Tensor:
    """Class c's prompts point at axis c; the template adds its own off-axis component (axis 6 or 7)."""
    rows = []
    for t in texts:
        cls = next(i for i, c in enumerate(CLASSES) if t.endswith(c))
        tmpl = 6 if t.startswith("a photo") else 7
        rows.append(F.one_hot(torch.tensor(cls), D).float() + 0.5 * F.one_hot(torch.tensor(tmpl), D).float())
    return F.normalize(torch.stack(rows), dim=1)


def test_class_embedding_is_the_normalised_mean_over_templates():
    classes = class_embeddings(fake_text_encoder, CLASSES, TEMPLATES)
    assert classes.shape == (3, D)
    expected = F.normalize(fake_text_encoder(["a photo of a dog"]) + fake_text_encoder(["the sound of a dog"]), dim=1)
    assert torch.allclose(classes[1], expected[0], atol=1e-6)


def test_zero_shot_known_answers():
    # Samples 0-2 sit on their own class axis (correct); sample 3 is labelled cat but sits on owl's
    # axis, with dog second-closest (cat is its third choice).
    embeddings = F.normalize(
        torch.stack([
            F.one_hot(torch.tensor(0), D).float(),
            F.one_hot(torch.tensor(1), D).float(),
            F.one_hot(torch.tensor(2), D).float(),
            torch.tensor([0.0, 0.3, 1.0, 0, 0, 0, 0, 0]),
        ]),
        dim=1,
    )  # fmt: skip
    labels = torch.tensor([0, 1, 2, 0])
    acc = zero_shot(fake_text_encoder, embeddings, labels, CLASSES, TEMPLATES, ks=(1, 2, 5))
    points = {k: v for k, v in acc.items() if not k.endswith("_ci")}
    assert points == {"top1": 75.0, "top2": 75.0, "top5": 100.0}  # top5 > number of classes counts all
    assert acc["top5_ci"] == [100.0, 100.0]  # every resample is 100%
    assert acc["top1_ci"][0] <= 75.0 <= acc["top1_ci"][1]
    assert zero_shot(fake_text_encoder, embeddings, labels, CLASSES, TEMPLATES, bootstrap=None) == {
        "top1": 75.0,
        "top5": 100.0,
    }


def test_collapsed_model_scores_exactly_chance_at_zero_shot():
    # Every sample and every class embedding the same vector: all classes tie for every sample.
    c = F.normalize(torch.randn(1, D, generator=torch.Generator().manual_seed(0)), dim=1)
    for num_classes in (3, 7, 10):
        labels = torch.arange(50) % num_classes
        result = evaluate_zero_shot({"audio": c.expand(50, D)}, labels, c.expand(num_classes, D), ks=(1, 5))
        chance = zero_shot_chance(num_classes, ks=(1, 5))
        assert chance == {
            "num_classes": num_classes,
            "top1": 100 / num_classes,
            "top5": 100 * min(5, num_classes) / num_classes,
        }
        assert result.table["audio"]["top1"] == pytest.approx(chance["top1"], rel=1e-12)
        assert result.table["audio"]["top5"] == pytest.approx(chance["top5"], rel=1e-12)
        assert result.chance == chance


def test_tied_classes_count_their_expected_value():
    classes = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 1.0]])
    embeddings = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    # Sample 0 (true class 0) scores the classes 1, 1, 0, 2, 0: one class above, tied with one.
    # Sample 1 (true class 2) scores them 0.5, 0.5, 1, 1, 1: nothing above, tied three ways.
    per_sample = zero_shot_per_query(embeddings, torch.tensor([0, 2]), classes, ks=(1, 2, 3))
    assert per_sample["top1"].tolist() == [0.0, pytest.approx(1 / 3)]
    assert per_sample["top2"].tolist() == [0.5, pytest.approx(2 / 3)]
    assert per_sample["top3"].tolist() == [1.0, 1.0]


def test_evaluate_zero_shot_per_query_layout_and_shared_resamples():
    classes = class_embeddings(fake_text_encoder, CLASSES, TEMPLATES)
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(3, (40,), generator=generator)
    audio = F.normalize(classes[labels] + 0.9 * torch.randn(40, D, generator=generator), dim=1)
    result = evaluate_zero_shot({"audio": audio, "imu": audio.clone()}, labels, classes)
    assert set(result.per_query) == {f"zero_shot/{m}/top{k}" for m in ("audio", "imu") for k in (1, 5)}
    for values in result.per_query.values():
        assert values.dtype == np.float32 and values.shape == (40,)
    assert 100 * result.per_query["zero_shot/audio/top1"].mean() == pytest.approx(result.table["audio"]["top1"])
    # Identical inputs get identical intervals: every modality resamples the same samples.
    assert result.table["audio"] == result.table["imu"]
    assert result.table["audio"] == zero_shot_from_classes(audio, labels, classes)


def test_zero_shot_checks_shapes_and_labels():
    emb = F.normalize(torch.randn(4, D), dim=1)
    with pytest.raises(ValueError, match="labels must index"):
        zero_shot(fake_text_encoder, emb, torch.tensor([0, 1, 2, 3]), CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        zero_shot(fake_text_encoder, emb, torch.tensor([0, 1]), CLASSES, TEMPLATES)


def test_shipped_prompt_sets_load_and_name_classes():
    synthetic = load_prompts("synthetic")
    assert synthetic.classes is None and all(t.count("{}") == 1 for t in synthetic.templates)
    assert synthetic.class_names(["red sphere", "blue cube"]) == ["red sphere", "blue cube"]
    digits = load_prompts("spoken_digits")
    assert digits.class_names(["0", "7", "nine"]) == ["zero", "seven", "nine"]


def test_prompt_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"exactly one '\{\}'"):
        Prompts.from_dict({"templates": ["no placeholder"]})
    with pytest.raises(ConfigError, match="unknown key"):
        Prompts.from_dict({"templates": ["a {}"], "clases": ["x"]})
    with pytest.raises(ConfigError, match="no shipped prompt set 'nope'"):
        load_prompts("nope")
    with pytest.raises(ConfigError, match="lists 2 classes but the data has 3"):
        Prompts(["a {}"], ["a", "b"]).class_names(["x", "y", "z"])
    with pytest.raises(ConfigError, match="names none"):
        Prompts(["a {}"]).class_names(None)


def test_prompts_from_a_yaml_file(tmp_path):
    path = tmp_path / "pets.yaml"
    path.write_text("templates: ['a {}', 'my {}']\nclasses: [cat, dog]\n")
    assert load_prompts(path) == Prompts(["a {}", "my {}"], ["cat", "dog"])
