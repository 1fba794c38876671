"""Collectives of the losses: the all-gather of negatives, and the ring exchange that passes them on instead.

How gradients cross a collective is said in one word (torchmultimodal's ``backprop_type``):
``"global"`` (gradients flow back to the rank that produced each slice), ``"local"`` (only this
rank's own slice carries a gradient) or ``"none"`` (no collective at all: in-batch negatives only).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["BACKPROP_MODES", "distributed_world", "exchange", "gather_features", "reduce_from"]

BACKPROP_MODES = ("global", "local", "none")


def distributed_world(backprop: str = "global") -> tuple[int, int] | None:
    """``(rank, world_size)`` when negatives cross ranks (initialised, more than one rank, backprop not none)."""
    if backprop == "none" or not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return (dist.get_rank(), world) if world > 1 else None


def gather_features(x: Tensor, backprop: str = "global") -> Tensor:
    """All-gather ``(B, D)`` features from every rank into ``(world * B, D)``, rank-major.

    ``global``: gradients flow back to the rank that produced each slice.
    ``local``: the gather carries no gradient; this rank's own slice is put back so its gradient flows.
    """
    if backprop not in BACKPROP_MODES:
        raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {backprop!r}")
    if distributed_world(backprop) is None:
        return x
    if backprop == "global":
        return _AllGather.apply(x)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


class _AllGather(torch.autograd.Function):
    """``(B, D)`` from every rank -> ``(world * B, D)``; each rank gets back the sum over ranks of its slice's
    gradient. What ``torch.distributed.nn.all_gather`` computes (deprecated since torch 2.14), the same
    collectives in the same order, so the numbers are those it gave: reduce-scatter on NCCL and XCCL, and
    elsewhere (gloo) one scatter per rank, then the received slices summed in rank order."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        slices = [g.contiguous() for g in grad.chunk(world, dim=0)]
        if dist.get_backend() in (dist.Backend.NCCL, getattr(dist.Backend, "XCCL", "xccl")):
            out = torch.empty_like(slices[rank])
            dist.reduce_scatter(out, slices)
            return out
        received = [torch.empty_like(slices[rank]) for _ in range(world)]
        for source in range(world):  # rank `source` scatters its slices: we receive the one of ours
            dist.scatter(received[source], slices if source == rank else None, src=source)
        return torch.sum(torch.stack(received), dim=0)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, whose gradient is the sum over ranks of the gradients (``torch.distributed.nn.all_reduce``
    with ``SUM``, deprecated since torch 2.14)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)


def gather_ids(ids: Tensor) -> Tensor:
    """Every rank's integer ids (group ids, presence flags), rank-major; no gradient."""
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


def _p2p(sends: list[tuple[Tensor, int]], sources: list[int]) -> list[Tensor]:
    """Send each tensor to its peer and receive one tensor of the first one's shape from each source, at once."""
    like = sends[0][0]
    received = [torch.empty_like(like) for _ in sources]
    ops = [dist.P2POp(dist.isend, t.contiguous(), peer) for t, peer in sends]
    ops += [dist.P2POp(dist.irecv, r, peer) for r, peer in zip(received, sources, strict=True)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _Exchange(torch.autograd.Function):
    """Point-to-point exchange whose backward sends each received tensor's gradient back to where it came from."""

    @staticmethod
    def forward(ctx, targets: tuple[int, ...], sources: tuple[int, ...], *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.targets, ctx.sources = targets, sources
        return tuple(_p2p(list(zip(tensors, targets, strict=True)), list(sources)))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        # The gradient of what came from sources[i] goes back to sources[i]; targets send theirs back to us.
        back = _p2p([(g.contiguous(), peer) for g, peer in zip(grads, ctx.sources, strict=True)], list(ctx.targets))
        return (None, None, *back)


def exchange(tensors: list[Tensor], targets: list[int], sources: list[int], backprop: str) -> list[Tensor]:
    """Send ``tensors[i]`` to rank ``targets[i]``, receive one tensor from each of ``sources`` (same shapes).

    With ``backprop="global"`` the received tensors carry gradients back to the ranks that sent them;
    otherwise they are constants. Every rank must call this with matching peers, in the same order.
    """
    if backprop == "global":
        return list(_Exchange.apply(tuple(targets), tuple(sources), *tensors))
    return _p2p([(t.detach(), peer) for t, peer in zip(tensors, targets, strict=True)], sources)


def reduce_from(x: Tensor, owner: int, rank: int, backprop: str) -> Tensor:
    """Rank ``owner``'s ``x`` on every rank: a sum all-reduce of ``x`` masked to the owner (open_clip's ``reduce``)."""
    masked = x * float(rank == owner)
    if backprop == "global":
        return _AllReduceSum.apply(masked)
    out = masked.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out if rank != owner else x
