"""Issue 17, part 6: one all-gather per modality per step, with the loss and gradients of one gather per edge.

Two gloo processes on CPU: the image-anchored star graph (five edges) gathers six times per step
(once per modality) instead of ten, and its losses and feature gradients equal the per-edge gathers'.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import bindspace.losses as losses
from bindspace.modalities import LogitScaleConfig

STAR = [("image", m) for m in ("text", "audio", "depth", "thermal", "imu")]
B, D = 3, 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def features(rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """This rank's rows of a global batch: each edge draws its own samples, as the data does."""
    out = {}
    for k, (a, o) in enumerate(STAR):
        g = torch.Generator().manual_seed(100 + k)
        both = F.normalize(torch.randn(2, 2 * B, D, generator=g), dim=-1)[:, rank * B : (rank + 1) * B]
        out[f"{a}|{o}"] = (both[0].clone().requires_grad_(), both[1].clone().requires_grad_())
    return out


def step(loss: losses.MultiEdgeLoss, rank: int, per_edge: bool) -> tuple[list[float], list[torch.Tensor], int]:
    calls = []
    original = losses.gather_features

    def counted(x, backprop="global"):
        calls.append(tuple(x.shape))
        return original(x, backprop)

    losses.gather_features = counted
    try:
        pairs = features(rank)
        if per_edge:  # the reference: each edge gathers its own two sides
            parts = {k: loss.edge_loss(k, a, o) for k, (a, o) in pairs.items()}
            total = sum(parts.values())
        else:
            total, parts = loss(pairs)
        total.backward()
    finally:
        losses.gather_features = original
    grads = [t.grad for k in sorted(pairs) for t in pairs[k]]
    return [float(parts[k]) for k in sorted(parts)], grads, len(calls)


def worker(rank: int, port: int, backprop: str, local_loss: bool, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        scales = {f"{a}|{o}": LogitScaleConfig(10.0 + i, True) for i, (a, o) in enumerate(STAR)}
        loss = losses.MultiEdgeLoss(STAR, scales, local_loss=local_loss, backprop=backprop)
        once = step(loss, rank, per_edge=False)
        reference = step(loss, rank, per_edge=True)
        out[rank] = (once, reference)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backprop,local_loss", [("global", False), ("global", True), ("local", True)])
def test_one_gather_per_modality_per_step_equals_a_gather_per_edge(backprop, local_loss):
    manager = mp.get_context("spawn").Manager()
    out = manager.dict()
    mp.start_processes(worker, args=(free_port(), backprop, local_loss, out), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        (losses_once, grads_once, calls_once), (losses_ref, grads_ref, calls_ref) = out[rank]
        assert calls_once == 6 and calls_ref == 10  # image once, each other modality once; vs two per edge
        torch.testing.assert_close(torch.tensor(losses_once), torch.tensor(losses_ref), rtol=0, atol=1e-6)
        for got, want in zip(grads_once, grads_ref):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
