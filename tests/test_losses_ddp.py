"""Issue 17: every objective under the real CLI's DDP (gloo): 2 ranks x B/2 train exactly like 1 x B.

One graph mixes them, each edge its own objective (``loss.edges``): SigLIP on the bidirectional ring and on
the one-way ring, DCLW, DCL with in-modal negatives, and InfoNCE. The per-step losses and every final
weight (encoders, temperatures, SigLIP's biases) must agree, as in tests/test_ddp.py, whose launcher and
tolerances this reuses.
"""

from __future__ import annotations

import csv
import json

import pytest
from test_ddp import EXACT, Launched, assert_same_training

pytestmark = pytest.mark.slow

MIXED = (
    "loss.edges={image|text:{kind:siglip},image|audio:{kind:dcl,weighting:vmf},"
    "image|depth:{kind:siglip,dist:shift},image|thermal:{kind:dcl,in_modal:true}}"
)


def test_mixed_objectives_under_ddp_equal_one_process(tmp_path):
    with Launched(tmp_path / "single", 1, MIXED) as single, Launched(tmp_path / "ddp", 2, MIXED) as ddp:
        reference, distributed = single.result(), ddp.result()
    moved = assert_same_training(reference, distributed, **EXACT)
    assert moved > 0  # the runs trained
    state = distributed[1]
    # SigLIP's edges learned a bias from -10 (and a temperature from 10); the softmax edges have none.
    biases = {k.split(".")[2]: float(v) for k, v in state.items() if k.startswith("loss.logit_biases.")}
    assert sorted(biases) == ["image|depth", "image|text"] and all(b != -10.0 for b in biases.values())
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and sorted(metrics["logit_biases"]) == ["image|depth", "image|text"]
    with open(tmp_path / "ddp" / "csv" / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("train/logit_bias/image|text")]
    assert len(logged) == 4 and all(r["train/logit_scale/image|audio"] for r in logged)
