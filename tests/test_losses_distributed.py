"""Issue 17: the losses across gloo processes equal one process with the whole batch (loss and gradients).

Each rank holds ``B`` rows of a global batch of ``N * B``. With gradients crossing the collectives, a rank's
feature gradient is that of the sum of all ranks' losses, so over ``N`` it must equal the single-process
gradient of its rows (DDP's average); parameter gradients (temperature, bias) average over ranks; the
ranks' losses average to the single-process loss. SigLIP's four chunked variants are also compared
with open_clip's ``SigLipLoss`` under the same process group, rank by rank, and shown never to keep a
tensor of more than ``B x B`` (or ``B x D``) entries for backward, where the full InfoNCE keeps
``NB x NB``. World sizes 3 and 4 take every branch of the bidirectional ring (an odd and an even world).
"""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import bindspace.losses as losses
from bindspace.losses import (
    SIGLIP_DIST,
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
pytestmark = pytest.mark.slow  # four spawned interpreters importing torch (~15 s of CPU)

B, D = 4, 6
EDGE = ("image", "audio")
KEY = "image|audio"
DCL_CASES = [("none", False), ("vmf", False), ("vmf", True), ("none", True)]  # (weighting, in_modal)


def stored_log(value: float) -> torch.Tensor:
    """A temperature's log as :class:`bindspace.losses.LogitScale` stores it (float32, then ``.double()``)."""
    return torch.tensor(math.log(value)).double()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch(world: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(world)
    a = F.normalize(torch.randn(world * B, D, generator=g, dtype=torch.float64), dim=-1)
    o = F.normalize(torch.randn(world * B, D, generator=g, dtype=torch.float64), dim=-1)
    groups = torch.randint(0, world * B // 2, (world * B,), generator=g)  # some groups of 2 or 3, some of 1
    return a, o, groups


def global_batch_present(world: int) -> torch.Tensor:
    """Which pairs of the global batch are present: every third absent, so each rank has some of both."""
    return torch.arange(world * B) % 3 != 1


def leaves(*values: torch.Tensor) -> list[torch.Tensor]:
    return [v.detach().clone().requires_grad_() for v in values]


def backward(loss: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    loss.backward()
    return float(loss), [x.grad.clone() for x in inputs]


def max_saved(fn, *args) -> tuple[torch.Tensor, int]:
    """Run ``fn`` and return its result and the largest number of entries of a tensor autograd saved."""
    sizes = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, max(sizes)


def siglip_cases(rank: int, world: int, a: torch.Tensor, o: torch.Tensor, groups: torch.Tensor) -> dict:
    out = {}
    rows = slice(rank * B, (rank + 1) * B)
    for impl in SIGLIP_DIST:
        # Multi-positive: each arriving chunk labelled by its owner's group ids.
        x, y, t, b = leaves(
            a[rows], o[rows], torch.tensor(7.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
        )
        loss = losses.siglip_distributed(x, y, t, b, impl, "global", groups=groups[rows])
        out[f"siglip_groups/{impl}"] = backward(loss, [x, y, t, b])
        # Absent pairs masked out (and groups at once): each chunk labelled and masked by its owner's flags.
        present = global_batch_present(world)
        x, y, t, b = leaves(
            a[rows], o[rows], torch.tensor(7.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
        )
        loss = losses.siglip_distributed(x, y, t, b, impl, "global", groups=groups[rows], present=present[rows])
        out[f"siglip_present/{impl}"] = backward(loss, [x, y, t, b])
        for name, module in (
            ("ours", None),
            ("open_clip", open_clip_loss.SigLipLoss(rank=rank, world_size=world, dist_impl=impl)),
        ):
            x, y, t, b = leaves(
                a[rows], o[rows], torch.tensor(7.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
            )
            if module is None:
                loss, saved = max_saved(losses.siglip_distributed, x, y, t, b, impl, "global")
                out[f"siglip/{impl}/saved"] = saved
            else:
                loss = module(x, y, t, b)
            out[f"siglip/{impl}/{name}"] = backward(loss, [x, y, t, b])
    return out


def multi_edge_cases(rank: int, a: torch.Tensor, o: torch.Tensor, groups: torch.Tensor) -> dict:
    out = {}
    rows = slice(rank * B, (rank + 1) * B)
    scales = {KEY: LogitScaleConfig(6.0, True)}
    for local_loss in (False, True):
        for weighting, in_modal in DCL_CASES:
            loss = MultiEdgeLoss(
                [EDGE],
                scales,
                local_loss=local_loss,
                objectives={KEY: EdgeLoss("dcl", weighting=weighting, in_modal=in_modal)},
            ).double()
            x, y = leaves(a[rows], o[rows])
            _, parts = loss({KEY: (x, y)})
            value, feature_grads = backward(parts[KEY], [x, y])
            out[f"dcl/{weighting}/{in_modal}/{local_loss}"] = (
                value,
                [*feature_grads, loss.logit_scales[KEY].log_scale.grad.clone()],
            )
        loss = MultiEdgeLoss([EDGE], scales, local_loss=local_loss).double()
        x, y = leaves(a[rows], o[rows])
        _, parts = loss({KEY: (x, y)}, groups={KEY: groups[rows]})
        value, feature_grads = backward(parts[KEY], [x, y])
        out[f"groups/{local_loss}"] = (value, [*feature_grads, loss.logit_scales[KEY].log_scale.grad.clone()])
        # Multi-positive DCL (DCLW, in-modal negatives too: every mask at once).
        objective = EdgeLoss("dcl", weighting="vmf", in_modal=True)
        loss = MultiEdgeLoss([EDGE], scales, local_loss=local_loss, objectives={KEY: objective}).double()
        x, y = leaves(a[rows], o[rows])
        _, parts = loss({KEY: (x, y)}, groups={KEY: groups[rows]})
        value, feature_grads = backward(parts[KEY], [x, y])
        out[f"dcl_groups/{local_loss}"] = (value, [*feature_grads, loss.logit_scales[KEY].log_scale.grad.clone()])
    # Absent pairs (a missing partner) masked out, full and local loss.
    present = global_batch_present(len(a) // B)
    for local_loss in (False, True):
        loss = MultiEdgeLoss([EDGE], {KEY: LogitScaleConfig(6.0, True)}, local_loss=local_loss).double()
        x, y = leaves(a[rows], o[rows])
        value, feature_grads = backward(loss({KEY: (x, y)}, present={KEY: present[rows]})[0], [x, y])
        out[f"present/{local_loss}"] = (value, [*feature_grads, loss.logit_scales[KEY].log_scale.grad.clone()])
        objective = EdgeLoss("dcl", weighting="vmf", in_modal=True)
        loss = MultiEdgeLoss([EDGE], scales, local_loss=local_loss, objectives={KEY: objective}).double()
        x, y = leaves(a[rows], o[rows])
        value, feature_grads = backward(loss({KEY: (x, y)}, present={KEY: present[rows]})[0], [x, y])
        out[f"dcl_present/{local_loss}"] = (value, [*feature_grads, loss.logit_scales[KEY].log_scale.grad.clone()])
        loss = MultiEdgeLoss([EDGE], scales, local_loss=local_loss).double()
        x, y = leaves(a[rows], o[rows])
        parts = loss({KEY: (x, y)}, present={KEY: present[rows]}, groups={KEY: groups[rows]})[1]
        value, feature_grads = backward(parts[KEY], [x, y])
        out[f"groups_present/{local_loss}"] = (value, [*feature_grads, loss.logit_scales[KEY].log_scale.grad.clone()])
    # CyCLIP's terms on an InfoNCE edge (full and local loss) and on a SigLIP edge (its rows' share).
    for kind, local_loss in (("infonce", False), ("infonce", True), ("siglip", False)):
        objective = EdgeLoss(kind, bias=LogitBiasConfig(-3.0), cyclip_in_modal=0.25, cyclip_cross_modal=0.5)
        scale = LogitScaleConfig(7.0 if kind == "siglip" else 6.0, True)
        loss = MultiEdgeLoss([EDGE], {KEY: scale}, local_loss=local_loss, objectives={KEY: objective}).double()
        x, y = leaves(a[rows], o[rows])
        value, feature_grads = backward(loss({KEY: (x, y)})[0], [x, y])
        out[f"cyclip/{kind}/{local_loss}"] = (value, [*feature_grads, loss.logit_scales[KEY].log_scale.grad.clone()])
    # SigLIP through MultiEdgeLoss, and how much the full InfoNCE keeps for backward by comparison.
    objective = EdgeLoss("siglip", bias=LogitBiasConfig(-3.0))
    loss = MultiEdgeLoss([EDGE], {KEY: LogitScaleConfig(7.0, True)}, objectives={KEY: objective}).double()
    x, y = leaves(a[rows], o[rows])
    (total, _), saved = max_saved(loss, {KEY: (x, y)})
    value, feature_grads = backward(total, [x, y])
    grads = [loss.logit_scales[KEY].log_scale.grad.clone(), loss.logit_biases[KEY].bias.grad.clone()]
    out["siglip/module"] = (value, [*feature_grads, *grads])
    out["siglip/module/saved"] = saved
    full_infonce = MultiEdgeLoss([EDGE], {KEY: LogitScaleConfig(7.0, True)}).double()
    _, out["infonce/saved"] = max_saved(full_infonce, {KEY: tuple(leaves(a[rows], o[rows]))})
    return out


def gather_calls(rank: int) -> int:
    """All-gathers of one step of the image-anchored star graph with image|audio on SigLIP's ring."""
    star = [("image", m) for m in ("text", "audio", "depth", "thermal", "imu")]
    keys = [f"{a}|{m}" for a, m in star]
    loss = MultiEdgeLoss(
        star, {k: LogitScaleConfig(10.0, True) for k in keys}, objectives={"image|audio": EdgeLoss("siglip")}
    )
    calls, original = [], losses.gather_features
    losses.gather_features = lambda x, backprop="global": calls.append(1) or original(x, backprop)
    try:
        g = torch.Generator().manual_seed(rank)
        total, _ = loss({k: tuple(F.normalize(torch.randn(2, B, D, generator=g), dim=-1)) for k in keys})
        total.backward()
    finally:
        losses.gather_features = original
    return len(calls)


def worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        a, o, groups = global_batch(world)
        out[rank] = {
            **siglip_cases(rank, world, a, o, groups),
            **multi_edge_cases(rank, a, o, groups),
            "gathers": gather_calls(rank),
        }
    finally:
        dist.destroy_process_group()


def single_process(world: int) -> dict:
    """The references: one process, the whole batch of N * B rows."""
    a, o, groups = global_batch(world)
    ref = {}
    x, y, t, b = leaves(a, o, torch.tensor(7.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64))
    ref["siglip"] = backward(siglip(x, y, t, b), [x, y, t, b])
    x, y, t, b = leaves(a, o, torch.tensor(7.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64))
    ref["siglip_groups"] = backward(siglip(x, y, t, b, groups), [x, y, t, b])
    x, y, t, b = leaves(a, o, stored_log(7.0), torch.tensor(-3.0, dtype=torch.float64))
    ref["siglip/log"] = backward(siglip(x, y, t.exp(), b), [x, y, t, b])  # as MultiEdgeLoss learns it: log t
    for weighting, in_modal in DCL_CASES:
        x, y, t = leaves(a, o, stored_log(6.0))
        ref[f"dcl/{weighting}/{in_modal}"] = backward(dcl(x, y, t.exp(), weighting, 0.5, in_modal), [x, y, t])
    x, y, t = leaves(a, o, stored_log(6.0))
    ref["groups"] = backward(multi_positive_infonce(x, y, t.exp(), groups), [x, y, t])
    x, y, t = leaves(a, o, stored_log(6.0))
    ref["dcl_groups"] = backward(dcl(x, y, t.exp(), "vmf", 0.5, True, groups=groups), [x, y, t])
    x, y, t = leaves(a, o, stored_log(6.0))
    ref["present"] = backward(masked_infonce(x, y, t.exp(), global_batch_present(world)), [x, y, t])
    x, y, t = leaves(a, o, stored_log(6.0))
    present = global_batch_present(world)
    ref["dcl_present"] = backward(dcl(x, y, t.exp(), "vmf", 0.5, True, present=present), [x, y, t])
    x, y, t = leaves(a, o, stored_log(6.0))
    alone = multi_positive_infonce(x[present], y[present], t.exp(), groups[present])  # absent rows: zero gradient
    ref["groups_present"] = backward(alone, [x, y, t])
    x, y, t, b = leaves(a, o, torch.tensor(7.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64))
    ref["siglip_present"] = backward(siglip(x, y, t, b, groups, present=present), [x, y, t, b])
    for kind in ("infonce", "siglip"):
        x, y, t = leaves(a, o, stored_log(7.0 if kind == "siglip" else 6.0))
        in_modal, cross = cyclip_terms(x, y)
        main = (
            siglip(x, y, t.exp(), torch.tensor(-3.0, dtype=torch.float64))
            if kind == "siglip"
            else infonce(x, y, t.exp())
        )
        ref[f"cyclip/{kind}"] = backward(main + 0.25 * in_modal + 0.5 * cross, [x, y, t])
    return ref


def assert_equals_single(per_rank: list[tuple[float, list[torch.Tensor]]], reference, features: int = 2) -> None:
    """Mean loss over ranks, feature gradients over N by rank, parameter gradients averaged over ranks."""
    world = len(per_rank)
    torch.testing.assert_close(
        torch.tensor(sum(v for v, _ in per_rank) / world, dtype=torch.float64),
        torch.tensor(reference[0], dtype=torch.float64),
        rtol=1e-12,
        atol=1e-12,
    )
    for i in range(features):
        joined = torch.cat([grads[i] / world for _, grads in per_rank])
        torch.testing.assert_close(joined, reference[1][i], rtol=1e-10, atol=1e-13)
    for i in range(features, len(reference[1])):
        torch.testing.assert_close(
            sum(grads[i] for _, grads in per_rank) / world, reference[1][i], rtol=1e-10, atol=1e-13
        )


@pytest.fixture(scope="module", params=[4], ids=lambda n: f"world{n}")
def ranks(request) -> tuple[int, list[dict]]:
    world = request.param
    out = mp.get_context("spawn").Manager().dict()
    mp.start_processes(worker, args=(world, free_port(), out), nprocs=world, start_method="spawn")
    return world, [out[r] for r in range(world)]


@pytest.mark.parametrize("impl", SIGLIP_DIST)
def test_siglip_chunked_equals_open_clip_rank_by_rank_and_one_process(ranks, impl):
    world, results = ranks
    for result in results:
        (ours, our_grads), (theirs, their_grads) = result[f"siglip/{impl}/ours"], result[f"siglip/{impl}/open_clip"]
        assert ours == pytest.approx(theirs, rel=1e-12)
        for got, want in zip(our_grads, their_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    reference = single_process(world)
    assert_equals_single([r[f"siglip/{impl}/ours"] for r in results], reference["siglip"])
    # Through MultiEdgeLoss (bidir, the default), with its learnable log-temperature and bias.
    assert_equals_single([r["siglip/module"] for r in results], reference["siglip/log"])


@pytest.mark.parametrize("impl", SIGLIP_DIST)
def test_multi_positive_siglip_across_ranks_equals_one_process(ranks, impl):
    world, results = ranks
    assert_equals_single([r[f"siglip_groups/{impl}"] for r in results], single_process(world)["siglip_groups"])


def test_siglip_never_keeps_more_than_one_block(ranks):
    """Autograd keeps at most a (B, B) block or a (B, D) chunk; the full InfoNCE keeps the (NB, NB) logits."""
    world, results = ranks
    for result in results:
        for impl in SIGLIP_DIST:
            limit = max(B * B, B * D) if impl != "gather" else world * B * D  # gather: the gathered columns
            assert result[f"siglip/{impl}/saved"] <= limit
        assert result["siglip/module/saved"] <= max(B * B, B * D)
        assert result["infonce/saved"] == (world * B) ** 2


@pytest.mark.parametrize("local_loss", [False, True], ids=["full", "local"])
@pytest.mark.parametrize("weighting,in_modal", DCL_CASES)
def test_dcl_across_ranks_equals_one_process(ranks, weighting, in_modal, local_loss):
    world, results = ranks
    reference = single_process(world)[f"dcl/{weighting}/{in_modal}"]
    assert_equals_single([r[f"dcl/{weighting}/{in_modal}/{local_loss}"] for r in results], reference)


@pytest.mark.parametrize("local_loss", [False, True], ids=["full", "local"])
def test_multi_positive_across_ranks_equals_one_process(ranks, local_loss):
    world, results = ranks
    assert_equals_single([r[f"groups/{local_loss}"] for r in results], single_process(world)["groups"])


@pytest.mark.parametrize("local_loss", [False, True], ids=["full", "local"])
def test_multi_positive_dcl_across_ranks_equals_one_process(ranks, local_loss):
    world, results = ranks
    assert_equals_single([r[f"dcl_groups/{local_loss}"] for r in results], single_process(world)["dcl_groups"])


def test_siglip_edges_on_the_ring_are_not_gathered(ranks):
    """image|audio on SigLIP's ring: audio is not all-gathered; image still once (for its other edges)."""
    _, results = ranks
    assert [r["gathers"] for r in results] == [5] * len(results)


@pytest.mark.parametrize("kind,local_loss", [("infonce", False), ("infonce", True), ("siglip", False)])
def test_cyclip_terms_across_ranks_equal_one_process(ranks, kind, local_loss):
    world, results = ranks
    assert_equals_single([r[f"cyclip/{kind}/{local_loss}"] for r in results], single_process(world)[f"cyclip/{kind}"])


@pytest.mark.parametrize("local_loss", [False, True], ids=["full", "local"])
def test_masked_pairs_across_ranks_equal_one_process(ranks, local_loss):
    world, results = ranks
    assert_equals_single([r[f"present/{local_loss}"] for r in results], single_process(world)["present"])
    assert_equals_single([r[f"dcl_present/{local_loss}"] for r in results], single_process(world)["dcl_present"])
    reference = single_process(world)["groups_present"]
    assert_equals_single([r[f"groups_present/{local_loss}"] for r in results], reference)


@pytest.mark.parametrize("impl", SIGLIP_DIST)
def test_masked_multi_positive_siglip_across_ranks_equals_one_process(ranks, impl):
    world, results = ranks
    assert_equals_single([r[f"siglip_present/{impl}"] for r in results], single_process(world)["siglip_present"])
