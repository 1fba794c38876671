"""Issue 14, part 3: one evaluation suite behind training, stage ends and bindspace-eval; a versioned metrics.json."""

from __future__ import annotations

import pytest
import torch

from bindspace.evaluation.suite import METRICS_FORMAT, evaluate_split, metrics_version, versioned


def split(n: int = 40, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    noisy = torch.nn.functional.normalize(base + 0.3 * torch.randn(n, dim, generator=g), dim=1)
    far = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    return {"image": base, "audio": noisy, "imu": far}, torch.arange(n), torch.arange(n) % 4


def test_the_suite_scores_retrieval_gap_and_flags_trained_pairs():
    found = evaluate_split(None, split(), [("image", "audio")])
    m = found.metrics
    assert set(m) >= {"retrieval", "retrieval_class", "gallery_size", "summary", "summary_ci", "chance", "zero_shot",
                      "bootstrap", "modality_gap"}  # fmt: skip
    assert m["gallery_size"] == 40 and m["zero_shot"] == {}  # no text encoder: nothing to prompt
    assert m["retrieval"]["image->audio"]["trained"] and not m["retrieval"]["image->imu"]["trained"]
    assert m["retrieval"]["image->audio"]["R@1"] > m["retrieval"]["image->imu"]["R@1"]
    assert "retrieval/image->audio/R@1" in found.per_query and found.per_query["ids"].shape == (40,)
    assert "modality_gap" not in evaluate_split(None, split(), [], gap=False).metrics


def test_metrics_files_are_versioned():
    written = versioned({"retrieval": {}, "format": "stale"})
    assert next(iter(written)) == "format" and written["format"] == METRICS_FORMAT
    assert metrics_version(written) == 2 and metrics_version({"retrieval": {}}) == 1  # earlier releases
    with pytest.raises(ValueError, match="newer than this bindspace reads"):
        metrics_version({"format": "bindspace-metrics/99"})
    with pytest.raises(ValueError, match="not a bindspace metrics file"):
        metrics_version({"format": "something-else/1"})
