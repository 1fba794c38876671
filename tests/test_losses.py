"""The contrastive loss against plain reference computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bindspace.losses import LogitScale, MultiEdgeLoss, edge_key, gather_features, infonce
from bindspace.modalities import LogitScaleConfig


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def reference_infonce(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP's loss written out element by element: -log softmax of the diagonal, both directions."""
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        row = torch.tensor([scale * float(a[i] @ b[j]) for j in range(n)])
        col = torch.tensor([scale * float(b[i] @ a[j]) for j in range(n)])
        total += -(row[i] - torch.logsumexp(row, 0)) - (col[i] - torch.logsumexp(col, 0))
    return total / (2 * n)


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_infonce_equals_reference(scale):
    a, b = unit(7, 5, 0), unit(7, 5, 1)
    torch.testing.assert_close(infonce(a, b, scale), reference_infonce(a, b, scale).float(), rtol=1e-5, atol=1e-5)


def test_infonce_is_symmetric_and_minimal_for_perfect_pairs():
    a, b = unit(8, 16, 0), unit(8, 16, 1)
    torch.testing.assert_close(infonce(a, b, 10.0), infonce(b, a, 10.0))
    assert infonce(a, a, 50.0) < 0.01 < infonce(a, b, 50.0)
    # With random embeddings and scale ~0 every pair is equally likely: loss = log(B).
    assert math.isclose(float(infonce(a, b, 1e-6)), math.log(8), rel_tol=1e-4)


def test_infonce_with_labels_matches_default_on_square_case():
    a, b = unit(6, 4, 2), unit(6, 4, 3)
    torch.testing.assert_close(infonce(a, b, 5.0, labels=torch.arange(6)), infonce(a, b, 5.0))


def test_infonce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="batches must match"):
        infonce(unit(4, 3, 0), unit(5, 3, 0), 1.0)
    with pytest.raises(ValueError, match=r"expects \(B, D\)"):
        infonce(unit(4, 3, 0), unit(4, 2, 0), 1.0)


def test_logit_scale_fixed_learnable_and_clamped():
    fixed = LogitScale(LogitScaleConfig(init=20.0, learnable=False))
    assert not list(fixed.parameters()) and math.isclose(float(fixed()), 20.0, rel_tol=1e-6)
    learn = LogitScale(LogitScaleConfig(init=10.0, learnable=True, max=50.0))
    assert len(list(learn.parameters())) == 1
    with torch.no_grad():
        learn.log_scale.fill_(math.log(1000.0))
    assert math.isclose(float(learn()), 50.0, rel_tol=1e-6)


def test_multi_edge_loss_is_the_weighted_sum():
    edges = [("image", "text"), ("image", "audio")]
    scales = {"image|text": LogitScaleConfig(10.0, True), "image|audio": LogitScaleConfig(20.0, False)}
    loss = MultiEdgeLoss(edges, scales, weights={"image|audio": 0.5})
    pairs = {"image|text": (unit(4, 8, 0), unit(4, 8, 1)), "image|audio": (unit(4, 8, 2), unit(4, 8, 3))}
    total, per_edge = loss(pairs)
    expected = infonce(*pairs["image|text"], 10.0) + 0.5 * infonce(*pairs["image|audio"], 20.0)
    torch.testing.assert_close(total, expected)
    assert set(per_edge) == {"image|text", "image|audio"}
    # Only the active edges that are passed contribute.
    total_one, _ = loss({"image|text": pairs["image|text"]})
    torch.testing.assert_close(total_one, infonce(*pairs["image|text"], 10.0))


def test_gather_is_identity_in_one_process_and_validates_mode():
    x = unit(3, 2, 0)
    assert gather_features(x, "global") is x
    with pytest.raises(ValueError, match="backprop must be one of"):
        gather_features(x, "sideways")
    assert edge_key(("image", "audio")) == "image|audio"
