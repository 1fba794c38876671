"""Issue 17: each loss against its reference on one process (SigLIP: open_clip's SigLipLoss; DCL/DCLW and
multi-positive InfoNCE: float64 loops written here from the papers' formulas), and the loss config's checks.

The distributed forms are in tests/test_losses_distributed.py (gloo processes) and tests/test_losses_ddp.py
(the real CLI, 2 ranks x B/2 against 1 x B).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from omegaconf import OmegaConf

from bindspace.config import build_run_spec, edge_objectives
from bindspace.errors import ConfigError
from bindspace.losses import (
    SIGLIP_LOGIT_SCALE,
    EdgeLoss,
    LogitBiasConfig,
    MultiEdgeLoss,
    cyclip_terms,
    dcl,
    infonce,
    masked_infonce,
    multi_positive_infonce,
    siglip,
)
from bindspace.modalities import LogitScaleConfig

open_clip_loss = pytest.importorskip("open_clip.loss")


def unit(*shape: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1).requires_grad_()


def grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


# ---- SigLIP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,scale,bias", [(2, 10.0, -10.0), (7, 3.7, 0.5), (16, 55.0, -4.0)])
def test_siglip_equals_open_clip_loss_and_gradients(batch, scale, bias):
    a, o = unit(batch, 12, seed=batch), unit(batch, 12, seed=batch + 1)
    t = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    ours = siglip(a, o, t, b)
    reference = open_clip_loss.SigLipLoss()(a, o, t, b)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    for got, want in zip(grads(ours, a, o, t, b), grads(reference, a, o, t, b), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_multi_positive_siglip_equals_the_formula():
    """Pairs of one group are positives: sum_ij -log sigmoid(y_ij (t <a_i, o_j> + b)) / B, y_ij = +1 iff g_i = g_j."""
    a, o = unit(9, 5, seed=21), unit(9, 5, seed=22)
    groups = torch.tensor([0, 0, 0, 1, 2, 2, 3, 4, 4])
    t, b = 6.0, -2.0
    rows, cols, g = a.detach().tolist(), o.detach().tolist(), groups.tolist()
    total = 0.0
    for i, ai in enumerate(rows):
        for j, oj in enumerate(cols):
            y = 1.0 if g[i] == g[j] else -1.0
            logit = t * sum(p * q for p, q in zip(ai, oj, strict=True)) + b
            total += math.log1p(math.exp(-y * logit))
    got = siglip(a, o, torch.tensor(t, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), groups)
    assert float(got) == pytest.approx(total / len(rows), rel=1e-12)
    scale, bias = torch.tensor(t, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, y: siglip(x, y, scale, bias, groups), (a, o))
    # One member per group: the plain loss, bit for bit.
    plain = siglip(a, o, scale, bias)
    assert torch.equal(siglip(a, o, scale, bias, torch.arange(9) * 3), plain)


def test_siglip_edge_starts_at_the_papers_temperature_and_bias_and_learns_both():
    edges = [("image", "text"), ("image", "audio")]
    scales = {"image|text": SIGLIP_LOGIT_SCALE, "image|audio": LogitScaleConfig(20.0, False)}
    loss = MultiEdgeLoss(edges, scales, objectives={"image|text": EdgeLoss("siglip")})
    assert float(loss.logit_scales["image|text"]()) == pytest.approx(10.0, rel=1e-6)
    assert float(loss.logit_scales["image|text"].log_scale) == pytest.approx(math.log(10.0), rel=1e-6)
    assert float(loss.logit_biases["image|text"]()) == -10.0
    assert list(loss.logit_biases) == ["image|text"]  # the InfoNCE edge has no bias
    a, o = unit(6, 8, seed=0, dtype=torch.float32), unit(6, 8, seed=1, dtype=torch.float32)
    total, parts = loss({"image|text": (a, o)})
    reference = open_clip_loss.SigLipLoss()(a, o, torch.tensor(10.0), torch.tensor(-10.0))
    torch.testing.assert_close(parts["image|text"], reference, rtol=1e-6, atol=0)
    total.backward()
    assert loss.logit_scales["image|text"].log_scale.grad.abs() > 0
    assert loss.logit_biases["image|text"].bias.grad.abs() > 0
    # A curriculum that freezes the edge freezes its bias with its temperature.
    frozen = loss.set_frozen_edges({"image|text"})
    assert {id(p) for p in frozen} == {
        id(loss.logit_scales["image|text"].log_scale),
        id(loss.logit_biases["image|text"].bias),
    }


# ---- DCL / DCLW: the paper's eq. 6, in float64 loops ----------------------------------------------


def dcl_reference(a, o, t, weighting="none", sigma=0.5, in_modal=False) -> float:
    """Yeh et al. (2022), eq. 6 with cross-modal negatives (and in-modal ones too when asked), both directions.

    l_i^(k) = -w_i t <z_i^k, z_i^u> + log sum_{j != i, l in views} exp(t <z_i^k, z_j^l>); DCLW's
    w_i = 2 - exp(<z_i^1, z_i^2> / sigma) / mean_j exp(<z_j^1, z_j^2> / sigma).
    """
    a, o = a.detach().tolist(), o.detach().tolist()
    n = len(a)
    dot = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    positive = [math.exp(dot(a[i], o[i]) / sigma) for i in range(n)]
    w = [2 - p / (sum(positive) / n) for p in positive] if weighting == "vmf" else [1.0] * n
    total = 0.0
    for zs, zu in ((a, o), (o, a)):
        for i in range(n):
            negatives = [t * dot(zs[i], zu[j]) for j in range(n) if j != i]
            if in_modal:
                negatives += [t * dot(zs[i], zs[j]) for j in range(n) if j != i]
            total += -w[i] * t * dot(zs[i], zu[i]) + math.log(sum(math.exp(x) for x in negatives))
    return total / (2 * n)


@pytest.mark.parametrize("weighting", ["none", "vmf"])
@pytest.mark.parametrize("in_modal", [False, True])
def test_dcl_equals_the_papers_formula(weighting, in_modal):
    a, o = unit(9, 6, seed=3), unit(9, 6, seed=4)
    got = dcl(a, o, 7.5, weighting=weighting, sigma=0.4, in_modal=in_modal)
    assert float(got) == pytest.approx(dcl_reference(a, o, 7.5, weighting, 0.4, in_modal), rel=1e-12)
    if weighting == "none":  # the gradient is the formula's (DCLW's weights are constants, so not there)
        assert torch.autograd.gradcheck(lambda x, y: dcl(x, y, 7.5, weighting, 0.4, in_modal), (a, o))


def dcl_groups_reference(a, o, t, groups, weighting="none", sigma=0.5, in_modal=False) -> float:
    """Multi-positive DCL from the formula: a row's positives are the pairs of its group (their mean logit),
    its negatives every other pair's (and, in-modal, every same-modality sample outside its group)."""
    a, o, g = a.detach().tolist(), o.detach().tolist(), groups.tolist()
    n = len(a)
    dot = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    positive = [math.exp(dot(a[i], o[i]) / sigma) for i in range(n)]
    w = [2 - p / (sum(positive) / n) for p in positive] if weighting == "vmf" else [1.0] * n
    total = 0.0
    for zs, zu in ((a, o), (o, a)):
        for i in range(n):
            mates = [j for j in range(n) if g[j] == g[i]]
            negatives = [t * dot(zs[i], zu[j]) for j in range(n) if g[j] != g[i]]
            if in_modal:
                negatives += [t * dot(zs[i], zs[j]) for j in range(n) if g[j] != g[i]]
            pull = sum(t * dot(zs[i], zu[j]) for j in mates) / len(mates)
            total += -w[i] * pull + math.log(sum(math.exp(x) for x in negatives))
    return total / (2 * n)


@pytest.mark.parametrize("weighting", ["none", "vmf"])
@pytest.mark.parametrize("in_modal", [False, True])
def test_multi_positive_dcl_equals_the_formula(weighting, in_modal):
    a, o = unit(10, 6, seed=11), unit(10, 6, seed=12)
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])
    got = dcl(a, o, 5.0, weighting, 0.4, in_modal, groups=groups)
    assert float(got) == pytest.approx(dcl_groups_reference(a, o, 5.0, groups, weighting, 0.4, in_modal), rel=1e-12)
    if weighting == "none":
        assert torch.autograd.gradcheck(lambda x, y: dcl(x, y, 5.0, "none", 0.4, in_modal, groups=groups), (a, o))


def test_dcl_with_one_member_per_group_is_dcl_bit_for_bit():
    a, o = unit(8, 5, seed=13), unit(8, 5, seed=14)
    for weighting, in_modal in (("none", False), ("vmf", True)):
        plain = dcl(a, o, 4.0, weighting, 0.5, in_modal)
        grouped = dcl(a, o, 4.0, weighting, 0.5, in_modal, groups=torch.arange(8) + 100)
        assert torch.equal(plain, grouped)


def test_dcl_groups_that_disagree_fail_clearly():
    a, o = unit(4, 3, seed=15), unit(4, 3, seed=16)
    with pytest.raises(ValueError, match="dcl groups must give one id per row and per column"):
        dcl(a, o, 4.0, groups=torch.arange(3))
    with pytest.raises(ValueError, match="a row's own pair is not in its group"):
        dcl(a, o, 4.0, groups=torch.arange(4), all_groups=torch.arange(4) + 1)


def test_dcl_drops_the_positive_from_infonce_denominator():
    """DCL = InfoNCE minus the positive's share of the denominator: the two differ by log(1 - softmax_ii)."""
    a, o = unit(5, 4, seed=5), unit(5, 4, seed=6)
    logits = 3.0 * a @ o.T
    p = torch.cat([logits.softmax(1).diagonal(), logits.T.softmax(1).diagonal()])
    torch.testing.assert_close(dcl(a, o, 3.0), infonce(a, o, 3.0) + torch.log1p(-p).mean(), rtol=1e-12, atol=0)


# ---- multi-positive InfoNCE -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multi_positive_with_one_member_per_group_is_infonce_bit_for_bit(dtype):
    for seed in range(10):
        a, o = unit(16, 8, seed=seed, dtype=dtype), unit(16, 8, seed=100 + seed, dtype=dtype)
        groups = torch.randperm(16, generator=torch.Generator().manual_seed(seed)) * 7  # any distinct ids
        mine, plain = multi_positive_infonce(a, o, 14.3, groups), infonce(a, o, 14.3)
        assert torch.equal(mine, plain)
        assert all(torch.equal(x, y) for x, y in zip(grads(mine, a, o), grads(plain, a, o), strict=True))


def multi_positive_reference(a, o, t, groups) -> float:
    """-sum_{j in P(i)} 1/|P(i)| log softmax_j(t <a_i, o_.>), both directions, mean over rows."""
    a, o, groups = a.detach().tolist(), o.detach().tolist(), groups.tolist()
    n = len(a)
    dot = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    total = 0.0
    for x, y in ((a, o), (o, a)):
        for i in range(n):
            logits = [t * dot(x[i], y[j]) for j in range(n)]
            log_z = math.log(sum(math.exp(v) for v in logits))
            members = [j for j in range(n) if groups[j] == groups[i]]
            total += -sum(logits[j] - log_z for j in members) / len(members)
    return total / (2 * n)


def test_multi_positive_spreads_targets_over_the_group():
    a, o = unit(8, 5, seed=7), unit(8, 5, seed=8)
    groups = torch.tensor([3, 3, 1, 9, 9, 9, 4, 1])
    got = multi_positive_infonce(a, o, 6.0, groups)
    assert float(got) == pytest.approx(multi_positive_reference(a, o, 6.0, groups), rel=1e-12)
    assert float(got) != pytest.approx(float(infonce(a, o, 6.0)), rel=1e-3)  # the groups matter
    assert torch.autograd.gradcheck(lambda x, y: multi_positive_infonce(x, y, 6.0, groups), (a, o))


def test_multi_edge_loss_passes_each_edges_groups():
    edges = [("image", "text"), ("image", "audio")]
    scales = {"image|text": LogitScaleConfig(10.0, False), "image|audio": LogitScaleConfig(5.0, False)}
    loss = MultiEdgeLoss(edges, scales)
    pairs = {
        "image|text": (unit(6, 4, seed=1), unit(6, 4, seed=2)),
        "image|audio": (unit(6, 4, seed=3), unit(6, 4, seed=4)),
    }
    groups = torch.tensor([0, 0, 1, 2, 2, 2])
    _, parts = loss(pairs, groups={"image|text": groups})
    torch.testing.assert_close(parts["image|text"], multi_positive_infonce(*pairs["image|text"], 10.0, groups))
    torch.testing.assert_close(parts["image|audio"], infonce(*pairs["image|audio"], 5.0))


# ---- masks of missing pairs -----------------------------------------------------------------------------


def test_an_absent_pair_contributes_nothing():
    """InfoNCE with absent pairs masked equals InfoNCE on the present pairs alone; absent rows get no gradient."""
    a, o = unit(10, 6, seed=21), unit(10, 6, seed=22)
    present = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    masked = masked_infonce(a, o, 8.0, present)
    alone = infonce(a[present], o[present], 8.0)
    torch.testing.assert_close(masked, alone, rtol=1e-12, atol=0)
    for got, want in zip(grads(masked, a, o), grads(alone, a, o), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)  # zero on absent rows, like `alone`'s
    assert all(not torch.isnan(g).any() for g in grads(masked_infonce(a, o, 8.0, present), a, o))
    nothing = masked_infonce(a, o, 8.0, torch.zeros(10, dtype=torch.bool))
    assert float(nothing) == 0.0 and all(float(g.abs().sum()) == 0.0 for g in grads(nothing, a, o))
    edges, key = [("image", "text")], "image|text"
    loss = MultiEdgeLoss(edges, {key: LogitScaleConfig(8.0, False)}).double()
    stored = loss.logit_scales[key]()  # 8 as a float32 log stores it
    want = infonce(a[present], o[present], stored)
    torch.testing.assert_close(loss({key: (a, o)}, present={key: present})[1][key], want, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "kind,kwargs",
    [
        ("siglip", {}),
        ("siglip", {"groups": True}),
        ("dcl", {"weighting": "none", "in_modal": False}),
        ("dcl", {"weighting": "vmf", "in_modal": True}),
        ("dcl", {"weighting": "vmf", "in_modal": False, "groups": True}),
    ],
)
def test_siglip_and_dcl_with_absent_pairs_equal_the_present_pairs_alone(kind, kwargs):
    a, o = unit(10, 6, seed=31), unit(10, 6, seed=32)
    present = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4, 5, 6]) if kwargs.pop("groups", False) else None
    sub = None if groups is None else groups[present]
    t, b = torch.tensor(6.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    if kind == "siglip":
        masked = siglip(a, o, t, b, groups, present=present)
        alone = siglip(a[present], o[present], t, b, sub)
    else:
        masked = dcl(a, o, 6.0, sigma=0.4, groups=groups, present=present, **kwargs)
        alone = dcl(a[present], o[present], 6.0, sigma=0.4, groups=sub, **kwargs)
    torch.testing.assert_close(masked, alone, rtol=1e-12, atol=0)
    for got, want in zip(grads(masked, a, o), grads(alone, a, o), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)  # zero on the absent rows
    # Through the module, whatever the kind: the mask reaches the loss.
    key = "image|text"
    objective = EdgeLoss(kind, **({"weighting": kwargs["weighting"], "in_modal": kwargs["in_modal"], "sigma": 0.4}
                                  if kind == "dcl" else {"bias": LogitBiasConfig(-2.0)}))  # fmt: skip
    loss = MultiEdgeLoss([("image", "text")], {key: LogitScaleConfig(6.0, False)}, objectives={key: objective})
    loss = loss.double()
    got = loss({key: (a, o)}, present={key: present}, groups=None if groups is None else {key: groups})[1][key]
    scale = loss.logit_scales[key]()
    if kind == "siglip":
        want = siglip(a[present], o[present], scale, loss.logit_biases[key](), sub)
    else:
        want = dcl(a[present], o[present], scale, sigma=0.4, groups=sub, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_infonce_with_absent_pairs_and_groups_equals_the_present_pairs_alone():
    a, o = unit(10, 6, seed=41), unit(10, 6, seed=42)
    present = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    groups = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 4, 5])  # group 0 keeps two members, group 2 one
    key = "image|text"
    loss = MultiEdgeLoss([("image", "text")], {key: LogitScaleConfig(8.0, False)}).double()
    masked = loss({key: (a, o)}, present={key: present}, groups={key: groups})[1][key]
    alone = multi_positive_infonce(a[present], o[present], loss.logit_scales[key](), groups[present])
    torch.testing.assert_close(masked, alone, rtol=1e-10, atol=0)
    for got, want in zip(grads(masked, a, o), grads(alone, a, o), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-13)  # zero on the absent rows


def test_masks_and_cyclip_are_refused_in_one_line():
    key = "image|text"
    objective = EdgeLoss("siglip", cyclip_in_modal=0.25)
    loss = MultiEdgeLoss([("image", "text")], {key: LogitScaleConfig(6.0, False)}, objectives={key: objective})
    a, o = unit(4, 3, seed=1), unit(4, 3, seed=2)
    with pytest.raises(ValueError, match=r"edge image\|text: masks of missing pairs do not combine with CyCLIP"):
        loss.double()({key: (a, o)}, present={key: torch.ones(4, dtype=torch.bool)})


# ---- CyCLIP ------------------------------------------------------------------------------------------


def cyclip_reference(a, o) -> tuple[float, float]:
    """Goel et al. (2022), eqs. (3)-(4), both ``1/N sum_jk (...)^2``: in-modal and cross-modal."""
    a, o = a.detach().tolist(), o.detach().tolist()
    n = len(a)
    dot = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    in_modal = sum((dot(a[j], a[k]) - dot(o[j], o[k])) ** 2 for j in range(n) for k in range(n)) / n
    cross = sum((dot(a[j], o[k]) - dot(a[k], o[j])) ** 2 for j in range(n) for k in range(n)) / n
    return in_modal, cross


def test_cyclip_terms_equal_the_papers_formulas_and_add_to_any_objective():
    a, o = unit(7, 5, seed=11), unit(7, 5, seed=12)
    in_modal, cross = cyclip_terms(a, o)
    want = cyclip_reference(a, o)
    assert (float(in_modal), float(cross)) == (pytest.approx(want[0], rel=1e-12), pytest.approx(want[1], rel=1e-12))
    assert torch.autograd.gradcheck(lambda x, y: sum(cyclip_terms(x, y)), (a, o))
    edges, key = [("image", "text")], "image|text"
    for kind in ("infonce", "siglip", "dcl"):
        plain = MultiEdgeLoss(edges, {key: LogitScaleConfig(9.0, False)}, objectives={key: EdgeLoss(kind)}).double()
        regular = EdgeLoss(kind, cyclip_in_modal=0.25, cyclip_cross_modal=0.5)
        both = MultiEdgeLoss(edges, {key: LogitScaleConfig(9.0, False)}, objectives={key: regular}).double()
        torch.testing.assert_close(
            both({key: (a, o)})[0], plain({key: (a, o)})[0] + 0.25 * in_modal + 0.5 * cross, rtol=1e-12, atol=0
        )


# ---- configuration -------------------------------------------------------------------------------

STAR = [("image", m) for m in ("text", "audio", "depth", "thermal", "imu")]


def test_loss_kind_for_all_edges_and_per_edge_overrides():
    objectives = edge_objectives(
        STAR,
        {
            "kind": "dcl",
            "dcl": {"weighting": "vmf", "sigma": 0.3},
            "siglip": {"dist": "shift"},
            "edges": {"image|audio": {"kind": "siglip", "bias": {"init": -5.0}}, "image|imu": {"kind": "infonce"}},
        },
    )
    assert objectives["image|text"] == EdgeLoss("dcl", weighting="vmf", sigma=0.3)
    assert objectives["image|imu"] == EdgeLoss("infonce")
    audio = objectives["image|audio"]
    assert (audio.kind, audio.dist, audio.bias.init, audio.bias.learnable) == ("siglip", "shift", -5.0, True)
    assert audio.logit_scale == SIGLIP_LOGIT_SCALE
    cyclip = edge_objectives(
        STAR, {"cyclip": {"in_modal": 0.25}, "edges": {"image|imu": {"cyclip": {"cross_modal": 1}}}}
    )
    assert (cyclip["image|text"].cyclip_in_modal, cyclip["image|text"].cyclip_cross_modal) == (0.25, 0.0)
    assert (cyclip["image|imu"].kind, cyclip["image|imu"].cyclip_in_modal, cyclip["image|imu"].cyclip_cross_modal) == (
        "infonce", 0.25, 1.0,
    )  # fmt: skip


def test_the_default_config_trains_infonce_everywhere_and_siglip_scales_start_at_ten():
    spec = build_run_spec(OmegaConf.to_container(compose_config(), resolve=True))
    assert {o.kind for o in spec.build_loss().objectives.values()} == {"infonce"}
    cfg = compose_config(["loss.kind=siglip", "+loss.logit_scales={image|imu:{init:2.0}}"])
    loss = build_run_spec(OmegaConf.to_container(cfg, resolve=True)).build_loss()
    values = loss.parameter_values()
    assert values["logit_scales"]["image|text"] == pytest.approx(10.0) and values["logit_scales"]["image|imu"] == 2.0
    assert set(values["logit_biases"].values()) == {-10.0}


@pytest.mark.parametrize(
    "loss,message",
    [
        (
            {"kind": "sigLIP"},
            "loss.kind must be one of ['infonce', 'siglip', 'dcl'], got 'sigLIP' (did you mean 'siglip'?)",
        ),
        (
            {"edges": {"image|audo": {"kind": "siglip"}}},
            "loss.edges: 'image|audo' is not an edge of the graph (did you mean 'image|audio'?); edges are "
            "['image|text', 'image|audio', 'image|depth', 'image|thermal', 'image|imu']",
        ),
        (
            {"edges": {"audio|image": {"kind": "siglip"}}},
            "loss.edges: 'audio|image' is not an edge of the graph (did you mean 'image|audio'?); edges are "
            "['image|text', 'image|audio', 'image|depth', 'image|thermal', 'image|imu']",
        ),
        (
            {"edges": {"image|audio": {"kind": "dcl", "dist": "shift"}}},
            "loss.edges.image|audio.dist: an option of siglip, not of dcl",
        ),
        (
            {"edges": {"image|audio": {"kind": "nce"}}},
            "loss.edges.image|audio.kind must be one of ['infonce', 'siglip', 'dcl'], got 'nce' "
            "(did you mean 'infonce'?)",
        ),
        (
            {"siglip": {"dist": "ring"}, "kind": "siglip"},
            "loss.siglip.dist must be one of ['bidir', 'shift', 'reduce', 'gather'], got 'ring'",
        ),
        (
            {"siglip": {"bias": {"int": 1}}},
            "loss.siglip.bias: unknown key(s) ['int'] (did you mean 'init'?); expected some of ['init', 'learnable']",
        ),
        (
            {"dcl": {"weighting": "vMF"}},
            "loss.dcl.weighting must be one of ['none', 'vmf'], got 'vMF' (did you mean 'vmf'?)",
        ),
        ({"dcl": {"sigma": 0}}, "loss.dcl.sigma must be in (0, inf), got 0.0"),
        ({"cyclip": {"in_modal": -0.25}}, "loss.cyclip.in_modal must be in [0, inf), got -0.25"),
        (
            {"edges": {"image|text": {"cyclip": {"crossmodal": 1}}}},
            "loss.edges.image|text.cyclip: unknown key(s) ['crossmodal'] (did you mean "
            "'loss.edges.image|text.cyclip.cross_modal'?); expected some of ['cross_modal', 'in_modal']",
        ),
        (
            {"dcl": {"temperature": 0.1}},
            "loss.dcl: unknown key(s) ['temperature']; expected some of ['in_modal', 'sigma', 'weighting']",
        ),
    ],
)
def test_bad_loss_config_names_the_key(loss, message):
    with pytest.raises(ConfigError) as err:
        edge_objectives(STAR, loss)
    assert str(err.value) == message


@pytest.mark.slow
def test_cli_refuses_a_per_edge_key_that_is_not_an_edge_before_any_compute(tmp_path):
    from test_config_validation import cli_config_error  # one line, exit 2, nothing written

    message = cli_config_error(tmp_path / "run", "loss.edges={image|audo:{kind:siglip}}")
    assert message.startswith("loss.edges: 'image|audo' is not an edge of the graph (did you mean 'image|audio'?)")
    assert cli_config_error(tmp_path / "run2", "loss.kind=sigmoid") == (
        "loss.kind must be one of ['infonce', 'siglip', 'dcl'], got 'sigmoid' (did you mean 'siglip'?)"
    )
