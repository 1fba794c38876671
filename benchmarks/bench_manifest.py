"""Is a training step on your own files as fast as one on the synthetic benchmark?  (issue 14, part 7: <= 1.5x)

Same model (``model=tiny``, the default six-modality graph: 5 edges x 32 pairs), same training step
(forward, backward, AdamW), data loaded in the training process as with ``data.num_workers=0``:

- synthetic: scenes rendered and transformed (``data=synthetic``);
- manifest: the same kind of scenes written once to a temporary folder as files (PNG images, 16-bit
  PNG thermal, .npy depth and IMU, inline captions, 16-bit WAV audio at 44.1 kHz so that it has to
  be resampled to the model's 16 kHz) and read through ``data=manifest``;
- manifest, before: the same files and datamodule with the per-step path this change replaced (every
  audio file decoded again and resampled by ``torchaudio.functional.resample``, which builds its
  kernel on every call).

Rounds alternate the three so that a busy machine slows each alike; the table gives medians.

    python -m benchmarks.bench_manifest [--rounds 5] [--steps 8] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from datetime import date
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional.functional as ta_functional
import torchaudio.transforms._transforms as ta_transforms
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

import bindspace.data.manifest_datamodule as manifest_datamodule
from benchmarks.bench_data import BUSY_LOAD, _merge
from benchmarks.command import command_line, machine
from bindspace.config import build_run_spec
from bindspace.data import build_datamodule
from bindspace.data.datamodule import SyntheticDataModule, scene_config
from bindspace.data.synthetic import SyntheticScenes
from bindspace.training.module import AlignmentModule
from bindspace.utils.io import atomic_write_text

FILE_RATE = 44_100  # audio files as recorded; the tiny model listens at 16 kHz
SAMPLES = 320  # every sample holds all six modalities, so each edge pool has 288 after the 10% held out
TITLE = "## (g) Training step on manifest files vs the synthetic benchmark"


def write_files(root: Path, plain: dict, n: int) -> Path:
    """``n`` synthetic scenes as files plus a JSONL manifest; returns the manifest path."""
    spec = build_run_spec(plain)
    config = scene_config(spec.modalities)
    scenes = SyntheticScenes(config, seed=1)
    audio = SyntheticScenes(dataclasses.replace(config, audio_sample_rate=FILE_RATE), seed=1)
    ids = np.arange(n)
    image = (scenes.render("image", ids) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    depth, thermal = scenes.render("depth", ids), scenes.render("thermal", ids)
    imu, text = scenes.render("imu", ids), scenes.render("text", ids)
    waves = audio.render("audio", ids)
    (root / "files").mkdir(parents=True)
    rows = []
    for i in range(n):
        stem = root / "files" / f"{i:05d}"
        Image.fromarray(image[i]).save(f"{stem}.png")
        Image.fromarray((thermal[i] * 65535).round().astype(np.uint16)).save(f"{stem}_thermal.png")
        np.save(f"{stem}_depth.npy", depth[i])
        np.save(f"{stem}_imu.npy", imu[i])
        sf.write(f"{stem}.wav", waves[i], FILE_RATE, subtype="PCM_16")
        rows.append(
            {
                "id": f"s{i}",
                "image": f"files/{i:05d}.png",
                "text": text[i],
                "audio": f"files/{i:05d}.wav",
                "depth": f"files/{i:05d}_depth.npy",
                "thermal": f"files/{i:05d}_thermal.png",
                "imu": f"files/{i:05d}_imu.npy",
            }
        )
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@contextmanager
def per_step_resampling():
    """The load path before this change: no audio kept from startup, ``transform`` resamples every file."""
    real = manifest_datamodule.prepare
    manifest_datamodule.prepare = lambda modality, raw, cfg: raw
    try:
        yield
    finally:
        manifest_datamodule.prepare = real


@contextmanager
def counting_kernel_builds(builds: Counter):
    real = ta_functional._get_sinc_resample_kernel

    def counting(orig, new, *args, **kwargs):
        builds[(int(orig), int(new))] += 1
        return real(orig, new, *args, **kwargs)

    ta_functional._get_sinc_resample_kernel = ta_transforms._get_sinc_resample_kernel = counting
    try:
        yield
    finally:
        ta_functional._get_sinc_resample_kernel = ta_transforms._get_sinc_resample_kernel = real


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    with initialize_config_module("bindspace.configs", version_base="1.3"):
        cfg = compose("train", overrides=["logger=none"])
    plain = OmegaConf.to_container(cfg, resolve=False)
    spec = build_run_spec(plain)
    batch = plain["data"]["batch_size"]
    torch.manual_seed(0)
    module = AlignmentModule(spec.build_model(), spec.build_loss(), spec.edges, spec.optim)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def train(data: dict) -> None:
        loss, _ = module.loss(module.encode_edges(data))
        opt.zero_grad()
        loss.backward()
        opt.step()

    with tempfile.TemporaryDirectory(prefix="bindspace-bench-manifest-") as tmp:
        train_manifest = write_files(Path(tmp), plain, SAMPLES)
        start = time.perf_counter()
        manifest = build_datamodule(
            {"name": "manifest", "batch_size": batch, "train": str(train_manifest)}, spec.modalities, spec.edges, 0
        )
        startup = time.perf_counter() - start
        sources = {
            "synthetic": SyntheticDataModule(spec.modalities, spec.edges, batch_size=batch).train_dataloader().dataset,
            "manifest": manifest.train_dataloader().dataset,
        }
        kept, decoded = manifest.decoded, {}
        variants = ["synthetic", "manifest", "before"]
        data_ms: dict[str, list[float]] = {v: [] for v in variants}
        step_ms: dict[str, list[float]] = {v: [] for v in variants}
        builds: dict[str, Counter] = {v: Counter() for v in variants}
        counter = iter(range(10**9))
        load_start = os.getloadavg()[0]
        for _ in range(args.rounds):
            for variant in variants:
                steps = sources["synthetic" if variant == "synthetic" else "manifest"]
                for pool in manifest.pools.values():  # "before": nothing kept from startup
                    pool.decoded = decoded if variant == "before" else kept
                old_path = per_step_resampling() if variant == "before" else nullcontext()
                counted: Counter = Counter()
                with old_path, counting_kernel_builds(counted):
                    train(steps[next(counter)])  # warm-up step of this round
                    counted.clear()  # count the timed steps only
                    loading = total = 0.0
                    for _ in range(args.steps):
                        t0 = time.perf_counter()
                        data = steps[next(counter)]
                        t1 = time.perf_counter()
                        train(data)
                        t2 = time.perf_counter()
                        loading, total = loading + t1 - t0, total + t2 - t0
                builds[variant] += counted
                data_ms[variant].append(loading / args.steps * 1e3)
                step_ms[variant].append(total / args.steps * 1e3)
    med = {v: statistics.median(step_ms[v]) for v in variants}
    med_data = {v: statistics.median(data_ms[v]) for v in variants}
    per20 = {v: round(sum(builds[v].values()) / (args.rounds * args.steps) * 20) for v in variants}
    ratio, before = med["manifest"] / med["synthetic"], med["before"] / med["synthetic"]
    load = os.getloadavg()[0]
    pairs = batch * len(spec.edges)
    table = "\n".join(
        [
            TITLE,
            "",
            f"Machine: {machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, load average {load_start:.1f} at the start, {load:.1f} at the end. "
            f"Date: {date.today()}.",
            f"Command: {command_line(parser, args, 'benchmarks.bench_manifest', ('rounds', 'steps'))}.",
            "",
            f"| step (tiny, {len(spec.edges)} edges x {batch} pairs, data loaded in the training process) "
            "| data (ms) | step (ms) | vs synthetic | kernel builds / 20 steps |",
            "|---|---|---|---|---|",
            f"| synthetic (render + transform) | {med_data['synthetic']:.0f} | {med['synthetic']:.0f} | 1.00 "
            f"| {per20['synthetic']} |",
            f"| manifest, audio at 44.1 kHz (target <= 1.5x) | {med_data['manifest']:.0f} | {med['manifest']:.0f} "
            f"| **{ratio:.2f}** | {per20['manifest']} |",
            f"| manifest, before: decode and resample every file at every step | {med_data['before']:.0f} "
            f"| {med['before']:.0f} | {before:.2f} | {per20['before']} |",
            "",
            f"{SAMPLES} samples of all six modalities ({pairs} pairs a step); startup (decoding every file once, "
            f"audio kept at 16 kHz: {kept.summary() if kept is not None else 'none'}) took {startup:.1f} s. "
            f"Medians of {args.rounds} alternating rounds of {args.steps} steps. "
            + (
                f"No verdict: the machine was busy (load average {load_start:.1f} at the start, above {BUSY_LOAD}); "
                "other processes slow the 2-thread training step, shared by every row, far more than loading, "
                "which pulls every ratio towards 1."
                if load_start > BUSY_LOAD
                else ("Target met." if ratio <= 1.5 else "Target missed.")
            ),
            "",
        ]
    )
    print(table)
    atomic_write_text(args.out, _merge(args.out, table))


if __name__ == "__main__":
    main()
