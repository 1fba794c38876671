"""Zero-shot classification against text prompts, on constructed embeddings with known answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bindspace.evaluation.zero_shot import Prompts, class_embeddings, load_prompts, zero_shot
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
    assert acc == {"top1": 75.0, "top2": 75.0, "top5": 100.0}  # top5 > number of classes counts all


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
