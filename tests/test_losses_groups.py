"""Issue 17, part 3: a manifest's ``group`` column reaches the loss as multi-positive InfoNCE targets.

The loss itself is proven in tests/test_losses_reference.py (against the formula, and equal to InfoNCE
bit for bit with one member per group) and tests/test_losses_distributed.py (across ranks); here: the
column is read, batches carry integer group ids that agree across members, a column of one-member groups
warns in one line, and a training step hands each edge's ids to the loss.
"""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
from conftest import compose_config
from test_manifest import build, paired_rows, write_rows

import bindspace.losses as losses
from bindspace.train import run

pytestmark = pytest.mark.slow  # decodes image files; one short training run

EDGE = [("image", "text")]


def grouped_rows(root, n: int, size: int, ungrouped: int = 0) -> list[dict]:
    """``n`` image-text samples in groups of ``size`` (several captions of one picture), the last few without one."""
    rows = paired_rows(root, n, ["image", "text"], labels=None)
    for i, row in enumerate(rows[: n - ungrouped]):
        row["group"] = f"picture{i // size}"
    return rows


def test_batches_carry_group_ids_shared_by_members(tmp_path):
    rows = grouped_rows(tmp_path, 24, size=3, ungrouped=3)  # the split keeps groups whole: enough of them to train
    dm = build(EDGE, train=str(write_rows(tmp_path / "train.jsonl", rows)), val_fraction=0.25)
    dm.train_dataloader()
    by_id = {r["id"]: r.get("group") for r in rows}
    seen = 0
    for step in range(6):
        batch = dm.train_steps[step]["image|text"]
        ids = batch["group"].tolist()
        for i, a in enumerate(batch["sample_id"]):
            for j, b in enumerate(batch["sample_id"]):
                same = a == b or (by_id[a] is not None and by_id[a] == by_id[b])
                assert (ids[i] == ids[j]) == same, (a, b)
                seen += same and a != b
    assert seen > 0  # some batch held two members of one group


def test_csv_manifests_read_the_group_column_too(tmp_path):
    rows = grouped_rows(tmp_path, 16, size=2)
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "group", "image", "text"])
        writer.writeheader()
        writer.writerows(rows)
    dm = build(EDGE, train=str(path), val_fraction=0.25)
    dm.train_dataloader()
    assert "group" in dm.train_steps[0]["image|text"]


def test_a_group_column_of_single_members_warns_in_one_line(tmp_path):
    rows = grouped_rows(tmp_path, 16, size=1)
    with pytest.warns(UserWarning) as caught:
        build(EDGE, train=str(write_rows(tmp_path / "train.jsonl", rows)), val_fraction=0.25).train_dataloader()
    messages = [str(w.message) for w in caught if "group" in str(w.message)]
    assert messages == [
        "data: edge image|text: every group of the manifest's group column has one member; "
        "multi-positive InfoNCE is then plain InfoNCE"
    ]


def test_no_group_column_no_group_ids_and_no_warning(tmp_path):
    rows = paired_rows(tmp_path, 8, ["image", "text"], labels=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = build(EDGE, train=str(write_rows(tmp_path / "train.jsonl", rows)), val_fraction=0.25)
        dm.train_dataloader()
    assert "group" not in dm.train_steps[0]["image|text"]
    assert not [w for w in caught if "group" in str(w.message)]


def test_training_hands_each_edges_group_ids_to_the_loss(tmp_path, monkeypatch):
    rows = grouped_rows(tmp_path, 16, size=2)
    train = write_rows(tmp_path / "train.jsonl", rows)
    seen: list[dict[str, torch.Tensor]] = []
    forward = losses.MultiEdgeLoss.forward

    def spy(self, pairs, stage_weights=None, groups=None):
        seen.append({k: v.clone() for k, v in (groups or {}).items()})
        return forward(self, pairs, stage_weights, groups)

    monkeypatch.setattr(losses.MultiEdgeLoss, "forward", spy)
    cfg = compose_config(
        ["data=manifest", f"data.train={train}", "data.val_fraction=0.25", "graph.modalities=[image,text]",
         "data.batch_size=4", "trainer.max_steps=2", "eval.final=false", "+trainer.limit_val_batches=0"],
        run_dir=str(tmp_path / "run"),
        synthetic=False,
    )  # fmt: skip
    run(cfg)
    assert len(seen) == 2 and all(list(s) == ["image|text"] for s in seen)
    assert all(s["image|text"].shape == (4,) for s in seen)
