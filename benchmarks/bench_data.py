"""Is synthetic data generation ever the training bottleneck?  (issue 6 target (d): ratio >= 10)

Measures, in one process on this machine, with the default config (`model=tiny`, `data=synthetic`):
- generation: scenes rendered *and* transformed to model input per second, for one training step's
  worth of edge batches (the exact code path of a DataLoader worker), single thread;
- consumption: pairs per second that the training step (forward, backward, AdamW) eats.

    python benchmarks/bench_data.py [--steps 20] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from bindspace.config import build_run_spec
from bindspace.data.datamodule import SyntheticDataModule
from bindspace.training.module import AlignmentModule
from bindspace.utils.io import atomic_write_text

MISSED = (
    "Target missed. Per step, rendering and transforming 160 scenes in one thread costs about a quarter of a "
    "training step; image compositing and audio synthesis dominate (profiled: ~29 ms and ~36 ms per 256 scenes). "
    "With `data.num_workers=1` generation overlaps training, but on 2 cores the worker competes with the "
    "model's two threads. What would close it: render the clutter backgrounds and audio partials from cached "
    "per-class tables instead of per scene, and vectorise the remaining per-scene loops in torch."
)


def timed(fn, repeats: int) -> float:
    fn()  # warm up (lazy tables, allocator)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args()
    with initialize_config_module("bindspace.configs", version_base="1.3"):
        cfg = compose("train", overrides=["logger=none"])
    plain = OmegaConf.to_container(cfg, resolve=False)
    spec = build_run_spec(plain)
    batch = plain["data"]["batch_size"]
    dm = SyntheticDataModule(spec.modalities, spec.edges, batch_size=batch)
    steps = dm.train_dataloader().dataset
    counter = iter(range(10**9))
    torch.set_num_threads(1)
    gen = timed(lambda: steps[next(counter)], args.steps)
    torch.set_num_threads(2)
    module = AlignmentModule(spec.build_model(), spec.build_loss(), spec.edges, spec.optim)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    data = steps[0]

    def train_step() -> None:
        loss, _ = module.loss(module.encode_edges(data))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step = timed(train_step, args.steps)
    pairs = batch * len(spec.edges)
    ratio = step / gen
    table = "\n".join(
        [
            "## (d) Synthetic data generation vs training consumption",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}. Date: {date.today()}.",
            "Command: `make bench` (`python -m benchmarks.bench_data`).",
            "",
            "| what | per step (ms) | pairs / s |",
            "|---|---|---|",
            f"| generation (render + transform, 1 thread, {len(spec.edges)} edges x {batch}) | {gen * 1e3:.0f} "
            f"| {pairs / gen:.0f} |",
            f"| training step (tiny, forward + backward + AdamW, 2 threads) | {step * 1e3:.0f} | {pairs / step:.0f} |",
            f"| **ratio generation / consumption** (target >= 10) | | **{ratio:.1f}** |",
            "",
            *([MISSED, ""] if ratio < 10 else []),
        ]
    )
    print(table)
    atomic_write_text(args.out, _merge(args.out, table))


def _merge(path: Path, section: str) -> str:
    """Replace this benchmark's section in the benchmarks page, keeping the others."""
    return merge_section(path.read_text() if path.exists() else "", section)


def merge_section(text: str, section: str) -> str:
    """``text`` (a benchmarks page, maybe empty) with the section of the same title replaced or appended."""
    head = "# Benchmarks\n\nEach section: the machine, the date and the command that produced it.\n\n"
    text = text or head
    title = section.splitlines()[0]
    parts = text.split("\n## ")
    kept = ["## " + p.rstrip() + "\n" for p in parts[1:] if not ("## " + p).startswith(title)]
    ordered = sorted([*kept, section.rstrip() + "\n"])  # "## (a) ...", "## (b) ...": the order
    return parts[0].rstrip() + "\n\n" + "\n".join(ordered)


if __name__ == "__main__":
    main()
