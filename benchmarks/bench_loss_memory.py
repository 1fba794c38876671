"""What each contrastive loss keeps per rank for backward, on N gloo processes (docs/scaling.md (v)).

Memory of the loss is what autograd saves between forward and backward: the logits (or their blocks),
softmax/sigmoid buffers, the gathered or received features. This counts it exactly, with
``torch.autograd.graph.saved_tensors_hooks`` (each storage once, in bytes), for one edge with ``B`` pairs
per rank of ``D``-dimensional fp32 embeddings.

    python -m benchmarks.bench_loss_memory [--world 4] [--batch 256] [--dim 512]
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from bindspace.losses import EdgeLoss, LogitBiasConfig, MultiEdgeLoss
from bindspace.modalities import LogitScaleConfig

KEY = "image|audio"
VARIANTS = {
    "infonce, full": ({}, False),
    "infonce, local_loss": ({}, True),
    "dcl, full": ({"kind": "dcl"}, False),
    "dcl, local_loss": ({"kind": "dcl"}, True),
    **{f"siglip, dist={d}": ({"kind": "siglip", "dist": d, "bias": LogitBiasConfig()}, False) for d in
       ("bidir", "shift", "reduce", "gather")},
}  # fmt: skip


def saved_bytes(fn) -> tuple[int, int]:
    """(total bytes of the distinct storages autograd saved while running ``fn``, largest saved tensor's bytes)."""
    storages: dict[int, int] = {}
    largest = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        largest[0] = max(largest[0], t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()), largest[0]


def worker(rank: int, world: int, batch: int, dim: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(rank)
        a = F.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_()
        o = F.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_()
        results = {}
        for name, (objective, local) in VARIANTS.items():
            scale = LogitScaleConfig(10.0, True)
            loss = MultiEdgeLoss(
                [("image", "audio")], {KEY: scale}, local_loss=local, objectives={KEY: EdgeLoss(**objective)}
            )
            results[name] = saved_bytes(lambda loss=loss: loss({KEY: (a, o)})[0].backward())
        out[rank] = results
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").Manager().dict()
    mp.start_processes(
        worker, args=(args.world, args.batch, args.dim, port, out), nprocs=args.world, start_method="spawn"
    )
    n, b, d = args.world, args.batch, args.dim
    print(f"N = {n} gloo ranks, B = {b} pairs per rank, D = {d}, fp32, one edge; rank 0 (the others equal)\n")
    print("| loss | saved for backward | largest saved tensor |")
    print("|---|---|---|")
    for name, (total, largest) in out[0].items():
        print(f"| {name} | {total / 2**20:.2f} MiB | {largest / 2**20:.2f} MiB |")
    print(f"\nfor scale: (NB x NB) = {(n * b) ** 2 * 4 / 2**20:.2f} MiB, (B x NB) = {b * n * b * 4 / 2**20:.2f} MiB, "
          f"(B x B) = {b * b * 4 / 2**20:.2f} MiB, (NB x D) = {n * b * d * 4 / 2**20:.2f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
