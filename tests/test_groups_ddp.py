"""Group ids through the real CLI under DDP (gloo): a caption-list manifest, SigLIP and DCLW edges.

Every row of the manifest holds three captions of one picture (and its sound): 72 samples in 24
groups, batches of 8, so both edges' batches hold positives beyond the diagonal, on this rank or the
other. 2 ranks x B/2 must train exactly like 1 x B (per-step losses, every final weight), as
tests/test_ddp.py asks of the plain losses.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import python_m
from test_ddp import COMMON, EXACT, GLOBAL_BATCH, assert_same_training, read_run
from test_manifest import paired_rows, write_rows

pytestmark = pytest.mark.slow

EDGES = "loss.edges={image|text:{kind:siglip},image|audio:{kind:dcl,weighting:vmf}}"


def launch(run_dir: Path, world_size: int, manifest: Path) -> subprocess.Popen:
    parallel = ["trainer=ddp", f"trainer.devices={world_size}"] if world_size > 1 else []
    stderr = open(run_dir.with_name(f"{run_dir.name}.stderr"), "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [*python_m("bindspace.train"), *(o for o in COMMON if not o.startswith("data.")), *parallel,
         "data=manifest", f"data.train={manifest}", "data.val_fraction=0.2", "graph.modalities=[image,text,audio]",
         EDGES, f"data.batch_size={GLOBAL_BATCH // world_size}", f"hydra.run.dir={run_dir}"],
        stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip


def test_group_ids_under_ddp_train_like_one_process(tmp_path):
    rows = paired_rows(tmp_path, 24, ["image", "text", "audio"], labels=None)
    rows = [
        {**r, "text": [f"a picture numbered {i}", f"picture {i} again", f"the {i}th one"]} for i, r in enumerate(rows)
    ]
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    runs = {n: launch(tmp_path / f"w{n}", n, manifest) for n in (1, 2)}
    for n, proc in runs.items():
        assert proc.wait(timeout=600) == 0, (tmp_path / f"w{n}.stderr").read_text()[-3000:]
    moved = assert_same_training(read_run(tmp_path / "w1"), read_run(tmp_path / "w2"), **EXACT)
    assert moved > 0
