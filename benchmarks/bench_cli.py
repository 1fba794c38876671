"""How long a config error (and --help) takes to answer, against the imports a run needs.  (section (h))

``bindspace-train`` and ``bindspace-eval`` check their command line (Hydra's composition, then the
commands' own key and value checks) before the pipeline, Lightning and timm are imported. Measured here,
each command in a fresh process as a user runs it, median wall time of ``--repeats`` launches:

- the one-line answer to a typo of each kind (a composition error, a key added with ``+``, a value);
- ``--help``, and Hydra's own ``--help`` of the same command for comparison (the same text);
- for comparison, importing the training pipeline (``bindspace.training.pipeline``: what every run
  imports, and what ``bindspace-train`` imported before any check until the command line and the
  pipeline were split);
- a bare ``import torch`` (the floor: the config checks need the modality registry, which needs torch).

    python -m benchmarks.bench_cli [--repeats 5] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.bench_data import _merge
from benchmarks.command import command_line, machine
from bindspace.utils.io import atomic_write_text

BIN = Path(sys.executable).parent
TRAIN, EVAL = str(BIN / "bindspace-train"), str(BIN / "bindspace-eval")
PIPELINE = [sys.executable, "-c", "import bindspace.training.pipeline"]
# The decorated main alone: Hydra answers --help (bindspace.cli.hydra_help gives the same text).
HYDRA_HELP = [
    sys.executable,
    "-c",
    "import sys; sys.argv = ['bindspace-train', '--help']; from bindspace.train import hydra_main; hydra_main()",
]
CASES = [
    ("`bindspace-train optim.lrr=1` (a key Hydra cannot compose)", [TRAIN, "optim.lrr=1"], 2),
    ("`bindspace-train +anchr=text` (an unknown key added with +)", [TRAIN, "+anchr=text"], 2),
    ("`bindspace-train trainer.max_steps=0` (a value)", [TRAIN, "trainer.max_steps=0"], 2),
    ("`bindspace-eval eval.splitt=val`", [EVAL, "eval.splitt=val"], 2),
    ("`bindspace-eval probe=maybe ckpt_path=x.ckpt` (a value)", [EVAL, "probe=maybe", "ckpt_path=x.ckpt"], 2),
    ("`bindspace-train --help`", [TRAIN, "--help"], 0),
    ("for comparison: Hydra's own `--help` of bindspace-train", HYDRA_HELP, 0),
    ("for comparison: `python -c 'import bindspace.training.pipeline'`", PIPELINE, 0),
    ("the floor: `python -c 'import torch'`", [sys.executable, "-c", "import torch"], 0),
]


def launch(argv: list[str], expected: int, cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=600)
    spent = time.perf_counter() - start
    if proc.returncode != expected:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}, expected {expected}\n{proc.stderr[-2000:]}")
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    cwd = tempfile.mkdtemp(prefix="bench_cli_")  # a config error writes nothing; checked below
    try:
        for _, argv, expected in CASES:  # warm the page cache: every round then reads the same files
            launch(argv, expected, cwd)
        times: list[list[float]] = [[] for _ in CASES]
        for _ in range(args.repeats):  # rounds, so that a slow phase of the machine slows every case alike
            for i, (_, argv, expected) in enumerate(CASES):
                times[i].append(launch(argv, expected, cwd))
        written = sorted(str(p.relative_to(cwd)) for p in Path(cwd).rglob("*"))
        if written:
            raise SystemExit(f"a config error wrote {written}")
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    rows = [
        f"| {what} | {statistics.median(ts):.1f} | {min(ts):.1f}-{max(ts):.1f} |"
        for (what, _, _), ts in zip(CASES, times, strict=True)
    ]
    section = "\n".join(
        [
            "## (h) Time to a config error's one line, and to --help",
            "",
            f"Machine: {machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} "
            f"at the end. Date: {date.today()}.",
            f"Command: {command_line(parser, args, 'benchmarks.bench_cli', ('repeats',))}.",
            "",
            "| command (a fresh process each) | median wall (s) | range (s) |",
            "|---|---|---|",
            *rows,
            "",
            f"Medians of {args.repeats} rounds, after one warm-up launch of each. Every error exits 2 with one "
            "line and writes nothing (checked). The commands check their command line before importing the "
            "pipeline, so an error costs about the floor (torch, which the modality registry needs, plus Hydra's "
            "composition) instead of the pipeline's imports as well (Lightning with torchmetrics, which imports "
            "torchvision and transformers, and timm). `--help` prints Hydra's text (`bindspace.cli.hydra_help`; a test "
            "compares the two) with the config groups listed from one copy of Hydra's config store, where Hydra "
            "deep-copies the store for every group and option list.",
            "",
        ]
    )
    print(section)
    atomic_write_text(args.out, _merge(args.out, section))


if __name__ == "__main__":
    main()
