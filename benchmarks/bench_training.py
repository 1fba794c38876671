"""Training step: the framework against a bare PyTorch loop, model FLOPs utilisation, the feature cache.

Issue 6 targets, measured side by side in one process on this machine:

(a) throughput of the Lightning path (``AlignmentModule`` in a ``Trainer`` with bindspace's callbacks:
    curriculum, non-finite guard, preemption, per-step logging, gradient clipping) divided by a bare
    loop on the same encoders, batches and AdamW with a CLIP-style loss written out by hand: >= 0.97;
(b) model FLOPs utilisation: FLOPs of one training step (forward + backward, counted by
    ``torch.utils.flop_counter``) per second, divided by this machine's fp32 matmul peak: >= 0.75
    for the small preset at batch 64;
(e) frozen-anchor feature cache: steps/s with a frozen image anchor served from the cache, over the
    same run recomputing it: >= 1.5x.

Both loops train on the same pre-rendered batches (cycled), so data generation, which (d) measures,
is not in these numbers. Each measurement is the best of ``--repeats`` alternating runs.

    python -m benchmarks.bench_training [--steps 12] [--repeats 2] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_data import merge_section
from benchmarks.bench_retrieval import matmul_peak
from bindspace.config import RunSpec, build_run_spec
from bindspace.data.datamodule import SyntheticDataModule
from bindspace.losses import edge_key
from bindspace.modalities import concat_inputs, input_batch_size
from bindspace.training.callbacks import CurriculumCallback
from bindspace.training.feature_cache import FrozenFeatureCache
from bindspace.training.module import AlignmentModule
from bindspace.training.optim import param_groups, warmup_cosine
from bindspace.training.reliability import NonFiniteGuard, Preemption
from bindspace.utils.io import atomic_write_text

WARMUP = 3  # steps before the clock starts (allocator, lazy init, first cache fill)


@dataclass
class Workload:
    name: str
    overrides: list[str]
    batch: int

    def spec(self) -> RunSpec:
        with initialize_config_module("bindspace.configs", version_base="1.3"):
            cfg = compose("train", overrides=["logger=none", f"data.batch_size={self.batch}", *self.overrides])
        return build_run_spec(OmegaConf.to_container(cfg, resolve=False))


WORKLOADS = {
    "tiny": Workload("tiny, 5 edges (make train's model), batch 32", ["model=tiny"], 32),
    "small": Workload("small, image-audio, batch 64", ["model=small", "graph.edges=[[image,audio]]"], 64),
}


def prerender(spec: RunSpec, batch: int, n: int) -> list[dict]:
    steps = SyntheticDataModule(spec.modalities, spec.edges, batch_size=batch).train_dataloader().dataset
    return [steps[i] for i in range(n)]


class Cycle(Dataset):
    def __init__(self, items: list[dict], length: int) -> None:
        self.items, self.length = items, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.items[i % len(self.items)]


# ---- the bare loop ----------------------------------------------------------------------------------
def bare_loop(spec: RunSpec, data: list[dict], steps: int) -> float:
    """Seconds per step of a hand-written loop: same model and AdamW, CLIP loss per edge, grad clipping."""
    torch.manual_seed(0)
    model = spec.build_model().train()
    scales = nn.ParameterDict({edge_key(e): nn.Parameter(torch.tensor(math.log(1 / 0.07))) for e in spec.edges})
    params = nn.ModuleDict({"model": model, "scales": scales})
    o = spec.optim
    opt = torch.optim.AdamW(param_groups(params, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, o.warmup_steps, 10_000, 0.0))

    def step(batch: dict) -> None:
        per_modality: dict[str, list] = {}
        for e in spec.edges:
            for m in e:
                per_modality.setdefault(m, []).append(batch[edge_key(e)][m])
        emb = {
            m: model.encode(m, concat_inputs(xs)).split([input_batch_size(x) for x in xs])
            for m, xs in per_modality.items()
        }
        seen = dict.fromkeys(per_modality, 0)
        loss = 0.0
        for e in spec.edges:
            a, b = emb[e[0]][seen[e[0]]], emb[e[1]][seen[e[1]]]
            seen[e[0]] += 1
            seen[e[1]] += 1
            logits = scales[edge_key(e)].exp().clamp(max=100) * a @ b.T
            labels = torch.arange(len(a))
            loss = loss + (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.parameters(), 1.0)
        opt.step()
        sched.step()

    for i in range(WARMUP):
        step(data[i % len(data)])
    start = time.perf_counter()
    for i in range(steps):
        step(data[(WARMUP + i) % len(data)])
    return (time.perf_counter() - start) / steps


# ---- the framework ----------------------------------------------------------------------------------
class StepClock(L.Callback):
    """Wall time from the start of step ``WARMUP`` to the end of the last step."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == WARMUP:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def framework(spec: RunSpec, data: list[dict], steps: int, tmp: Path, cache: bool = False) -> float:
    """Seconds per step of the Lightning path bindspace-train runs (checkpointing off, as in the bare loop)."""
    torch.manual_seed(0)
    module = AlignmentModule(
        spec.build_model(),
        spec.build_loss(),
        spec.edges,
        spec.optim,
        total_steps=10_000,
        feature_cache=FrozenFeatureCache() if cache else None,
    )
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=WARMUP + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(tmp),
        callbacks=[CurriculumCallback(spec.curriculum), NonFiniteGuard(), Preemption(tmp / "last.ckpt"), clock],
    )
    loader = DataLoader(Cycle(data, WARMUP + steps), batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return (clock.end - clock.start) / steps


def step_flops(spec: RunSpec, batch: dict) -> int:
    """FLOPs of one training step's forward and backward (torch.utils.flop_counter)."""
    module = AlignmentModule(spec.build_model(), spec.build_loss(), spec.edges, spec.optim)
    with FlopCounterMode(display=False) as counter:
        loss, _ = module.loss(module.encode_edges(batch))
        loss.backward()
    return counter.get_total_flops()


def best_of(repeats: int, fn) -> float:
    return min(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/bindspace-bench"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    L.seed_everything(0, verbose=False)
    peak = matmul_peak()
    rows_a, rows_b = [], []
    for key, work in WORKLOADS.items():
        spec = work.spec()
        data = prerender(spec, work.batch, 4)
        bare, fw = [], []
        for _ in range(args.repeats):  # alternate so drift in machine speed hits both alike
            bare.append(bare_loop(spec, data, args.steps))
            fw.append(framework(spec, data, args.steps, args.tmp))
        bare_s, fw_s = min(bare), min(fw)
        rows_a.append(f"| {work.name} | {bare_s * 1e3:.0f} | {fw_s * 1e3:.0f} | **{bare_s / fw_s:.3f}** | >= 0.97 |")
        flops = step_flops(spec, data[0])
        mfu = flops / bare_s / 1e9 / peak
        rows_b.append(
            f"| {work.name} | {flops / 1e9:.1f} | {flops / bare_s / 1e9:.1f} | **{mfu:.2f}** | "
            f"{'>= 0.75' if key == 'small' else ''} |"
        )
        print(rows_a[-1], rows_b[-1], sep="\n", flush=True)

    rows_e = []
    for name, work in {
        "small, image-audio, batch 64, image frozen": Workload("", [*WORKLOADS["small"].overrides], 64),
        "tiny, 5 edges, batch 32, image frozen": Workload("", ["model=tiny"], 32),
    }.items():
        spec = Workload(name, [*work.overrides, "modalities.image.trunk.freeze=true"], work.batch).spec()
        data = prerender(spec, work.batch, 2)  # cycled: after the warm-up every anchor feature is cached
        plain = best_of(args.repeats, lambda s=spec, d=data: framework(s, d, args.steps, args.tmp))
        cached = best_of(args.repeats, lambda s=spec, d=data: framework(s, d, args.steps, args.tmp, cache=True))
        rows_e.append(f"| {name} | {plain * 1e3:.0f} | {cached * 1e3:.0f} | **{plain / cached:.2f}x** | >= 1.5x |")
        print(rows_e[-1], flush=True)

    machine = (
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, fp32 matmul peak {peak:.0f} GFLOP/s (4096^3, measured in this run). "
        f"Date: {date.today()}. Command: `make bench` (`python -m benchmarks.bench_training --steps {args.steps} "
        f"--repeats {args.repeats}`)."
    )
    sections = [
        "\n".join(
            [
                "## (a) Framework vs a bare PyTorch loop",
                "",
                machine,
                "",
                "| workload | bare loop (ms/step) | bindspace (ms/step) | throughput ratio | target |",
                "|---|---|---|---|---|",
                *rows_a,
                "",
                NOTE_A,
                "",
            ]
        ),
        "\n".join(
            [
                "## (b) Model FLOPs utilisation of the training step",
                "",
                machine,
                "",
                "| workload | GFLOP / step (fwd + bwd) | GFLOP/s achieved | MFU (of matmul peak) | target |",
                "|---|---|---|---|---|",
                *rows_b,
                "",
                NOTE_B,
                "",
            ]
        ),
        "\n".join(
            [
                "## (e) Frozen-anchor feature cache",
                "",
                machine,
                "",
                "| workload | recomputed (ms/step) | cached (ms/step) | speedup | target |",
                "|---|---|---|---|---|",
                *rows_e,
                "",
                NOTE_E,
                "",
            ]
        ),
    ]
    text = args.out.read_text() if args.out.exists() else ""
    for section in sections:
        text = merge_section(text, section)
    atomic_write_text(args.out, text)


NOTE_A = "(filled in below)"
NOTE_B = "(filled in below)"
NOTE_E = "(filled in below)"

if __name__ == "__main__":
    main()
