"""The curriculum inside real training runs: stage switches, freezing, history, exact resume."""

from __future__ import annotations

import csv
import json
import logging
import math

import pytest
import torch
from conftest import compose_config
from test_eval_cli import compose_eval

from bindspace.train import run

pytestmark = pytest.mark.slow

# Stages of 3 steps: image-text (1-3), +audio (4-6), +depth+thermal (7-9), +imu (10-12).
PROGRESSIVE = [
    "curriculum=progressive",
    "curriculum.order=[audio,[depth,thermal],imu]",
    "curriculum.stage.steps=3",
    "curriculum.stage.warmup_steps=2",
    "trainer.max_steps=12",
    "trainer.val_check_interval=6",
    "checkpoint.every_n_train_steps=1",
    "data.batch_size=4",
]


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


VALIDATIONS: list[tuple[int, dict]] = []  # (global step, the retrieval table) of each validation of `uninterrupted`


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from bindspace.training.module import AlignmentModule

    original = AlignmentModule.on_validation_epoch_end

    def recorded(self):
        original(self)
        if self._trainer is not None and not self.trainer.sanity_checking:
            VALIDATIONS.append((int(self.global_step), self.last_retrieval["retrieval"]))

    run_dir = tmp_path_factory.mktemp("full")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AlignmentModule, "on_validation_epoch_end", recorded)
        metrics = run(compose_config([*PROGRESSIVE, "curriculum.stage.freeze=[anchor]"], run_dir=str(run_dir)))
    return run_dir, metrics


def test_stage_history_in_metrics(uninterrupted):
    run_dir, _ = uninterrupted
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    stages = on_disk["stages"]
    assert [s["name"] for s in stages] == ["image-text", "+audio", "+depth+thermal", "+imu"]
    assert [s["step"] for s in stages] == [3, 6, 9, 12]
    assert stages[0]["edges"] == ["image|text"] and len(stages[3]["edges"]) == 5
    # Trained flags follow the stage: audio<->image is emergent at the end of stage 0, trained after.
    assert stages[0]["retrieval"]["audio->image"]["trained"] is False
    assert stages[1]["retrieval"]["audio->image"]["trained"] is True
    assert all(s["frozen"] == ["image"] for s in stages)


def test_validation_flags_as_trained_only_the_pairs_trained_so_far(uninterrupted):
    """val/trained/* (and val/mean_R@1, what plateau stages and early stopping watch) average the pairs
    trained by then, as the stage records do; they averaged every edge of the graph, those of stages still
    to come included."""
    assert [step for step, _ in VALIDATIONS] == [6, 12]
    (_, at_6), (_, at_12) = VALIDATIONS
    trained = {pair for pair, cell in at_6.items() if cell["trained"]}
    assert trained == {"image->text", "text->image", "image->audio", "audio->image"}
    assert all(cell["trained"] for pair, cell in at_12.items() if "image" in pair.split("->"))


def test_frozen_anchor_never_moves_and_new_modalities_wait_their_stage(uninterrupted):
    run_dir, _ = uninterrupted
    ckpts = run_dir / "checkpoints"
    start, after_stage0, end = (weights(ckpts / f"step{s:06d}.ckpt") for s in (1, 3, 12))
    trunk = "model.trunks.image.blocks.0.mlp.fc1.weight"
    torch.testing.assert_close(start[trunk], end[trunk], rtol=0, atol=0)
    audio = "model.trunks.audio.blocks.0.mlp.fc1.weight"
    torch.testing.assert_close(start[audio], after_stage0[audio], rtol=0, atol=0)  # audio idle in stage 0
    assert (after_stage0[audio] - end[audio]).abs().max() > 0  # and trained once added
    text = "model.trunks.text.blocks.0.mlp.fc1.weight"
    assert (start[text] - after_stage0[text]).abs().max() > 0


@pytest.mark.parametrize("resume_step", [2, 3, 5])  # inside stage 0, exactly at a boundary, inside stage 1
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(uninterrupted, tmp_path, resume_step):
    run_dir, metrics = uninterrupted
    ckpt = run_dir / "checkpoints" / f"step{resume_step:06d}.ckpt"
    resumed = run(
        compose_config([*PROGRESSIVE, "curriculum.stage.freeze=[anchor]", f"ckpt_path={ckpt}"], run_dir=str(tmp_path))
    )
    a, b = weights(run_dir / "checkpoints" / "last.ckpt"), weights(tmp_path / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs after resuming at {resume_step}")
    # The history recorded before the interruption travels in the checkpoint.
    assert [s["step"] for s in resumed["stages"]] == [3, 6, 9, 12]
    assert resumed["retrieval"]["audio->text"]["R@1"] == pytest.approx(metrics["retrieval"]["audio->text"]["R@1"])


def test_dataloader_workers_change_nothing_across_stage_changes(uninterrupted, tmp_path):
    """Workers render steps ahead of training (2 x prefetch_factor batches); a batch rendered before its stage
    began lacked the stage's new edges, which that step then skipped: the first steps of every stage trained
    only the old edges, and a run resumed inside them trained differently. Its weights equal the run without
    workers."""
    run_dir, _ = uninterrupted
    run(compose_config([*PROGRESSIVE, "curriculum.stage.freeze=[anchor]", "data.num_workers=2"], run_dir=str(tmp_path)))
    a, b = weights(run_dir / "checkpoints" / "last.ckpt"), weights(tmp_path / "checkpoints" / "last.ckpt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs with data.num_workers=2")


def test_plateau_ends_a_stage_in_a_real_run(tmp_path):
    # min_delta is unreachable, so the second validation (after step 4) counts as "no improvement"
    # and, with patience 1, ends the first stage at the next step boundary (5), well before its cap.
    plateau = "{metric: val/mean_R@1, patience: 1, min_delta: 1000, max_steps: 50}"
    stages = f"[{{name: a, edges: [[image,text]], plateau: {plateau}}}, {{name: b, edges: all}}]"
    metrics = run(
        compose_config(
            [f"curriculum.stages={stages}", "trainer.max_steps=8", "trainer.val_check_interval=2"],
            run_dir=str(tmp_path),
        )
    )
    assert [(s["name"], s["step"]) for s in metrics["stages"]] == [("a", 5), ("b", 8)]


def batches_per_step(monkeypatch) -> list[tuple[int, list[str]]]:
    """(global step, edges) of every training batch the runs of this test train on, in order."""
    from bindspace.training.module import AlignmentModule

    seen, original = [], AlignmentModule.training_step

    def recorded(self, batch, batch_idx):
        seen.append((int(self.global_step), sorted(batch)))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AlignmentModule, "training_step", recorded)
    return seen


def test_gradient_accumulation_changes_stage_between_optimizer_steps_only(tmp_path, monkeypatch):
    """With ``trainer.accumulate_grad_batches=k`` a step takes k batches, and the curriculum acts once per step,
    after its last batch: every batch of a step trains the edges of the step's stage, and a plateau stage ends
    at the step it ends at without accumulation, with ``budget.edge_steps`` counting optimisation steps. It
    acted after every batch: with k=2 the stage ended after the first batch of the fifth step (global step 4 to
    5), whose second batch trained the next stage's edges (the stage recorded as starting at step 4), and every
    batch counted as a step of its edges."""
    plateau = "{metric: val/mean_R@1, patience: 1, min_delta: 1000, max_steps: 50}"
    stages = f"[{{name: a, edges: [[image,text]], plateau: {plateau}}}, {{name: b, edges: all}}]"
    seen = batches_per_step(monkeypatch)
    results = {}
    for k in (1, 2):
        seen.clear()
        overrides = [f"curriculum.stages={stages}", "graph.modalities=[image,text,audio]", "trainer.max_steps=7",
                     f"+trainer.accumulate_grad_batches={k}", f"trainer.val_check_interval={2 * k}",  # every 2 steps
                     "eval.final=false"]  # fmt: skip
        metrics = run(compose_config(overrides, run_dir=str(tmp_path / f"k{k}")))
        steps = list(seen)
        assert len(steps) == 7 * k and all(steps[i * k : (i + 1) * k] == [steps[i * k]] * k for i in range(7))
        stages_seen = [(s["name"], s["start_step"], s["step"]) for s in metrics["stages"]]
        results[k] = steps[::k], stages_seen, metrics["budget"]["edge_steps"]
        assert metrics["budget"]["pair_batches"] == 9 * k and metrics["budget"]["batches_per_step"] == k
    assert results[2] == results[1]
    assert results[1][1] == [("a", 0, 5), ("b", 5, 7)] and results[1][2] == {"image|text": 7, "image|audio": 2}


def test_a_stage_in_epochs_is_one_pass_over_its_data_with_gradient_accumulation(tmp_path):
    """``epochs: 1`` is one pass over the stage's data; with ``trainer.accumulate_grad_batches=2`` a step takes
    two batches, so a pass of 4 batches (16 pairs, 4 per batch) is 2 steps. It was 4 steps: two passes."""
    overrides = ["graph.modalities=[image,text,audio]", "curriculum=progressive", "curriculum.order=[audio]",
                 "curriculum.stage.steps=null", "+curriculum.stage.epochs=1", "curriculum.stage.warmup_steps=1",
                 "data.pool_size=16", "data.batch_size=4", "+trainer.accumulate_grad_batches=2", "trainer.max_steps=4",
                 "eval.final=false"]  # fmt: skip
    metrics = run(compose_config(overrides, run_dir=str(tmp_path)))
    stages = [(s["name"], s["start_step"], s["step"]) for s in metrics["stages"]]
    assert stages == [("image-text", 0, 2), ("+audio", 2, 4)]


# ---- per-stage learning-rate schedules ------------------------------------------------------------
def configured_lr(step: int, start: int, warmup: int, length: int, peak: float, floor: float) -> float:
    """The schedule as the config states it, written out independently: linear warmup, then cosine to floor*peak."""
    into = step - start
    if into < warmup:
        return peak * (into + 1) / warmup
    progress = min(1.0, (into - warmup) / (length - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_per_step(run_dir) -> list[float]:
    """The lr each optimisation step trained with (LearningRateMonitor logs it before the step)."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr-AdamW/pg1")]
    return [float(r["lr-AdamW/pg1"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


TWO_STAGES = [
    "graph.modalities=[image,text,audio]",
    "curriculum=progressive",
    "curriculum.order=[audio]",
    "curriculum.stage.steps=6",
    "curriculum.stage.warmup_steps=2",
    "optim.lr=1e-3",
    "optim.warmup_steps=3",
    "optim.min_lr_ratio=0.1",
    "trainer.max_steps=14",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "eval.final=false",
    "+trainer.limit_val_batches=0",
]


def test_per_stage_schedule_gives_every_stage_its_own_warmup_and_decay(tmp_path):
    run(compose_config(TWO_STAGES, run_dir=str(tmp_path)))
    lrs = lr_per_step(tmp_path)
    assert len(lrs) == 14
    # Stage 0: steps 0-5, decaying over its 6 steps; stage 1 (the last) runs 6-13, 8 steps to max_steps.
    expected = [configured_lr(s, 0, 2, 6, 1e-3, 0.1) for s in range(6)]
    expected += [configured_lr(s, 6, 2, 8, 1e-3, 0.1) for s in range(6, 14)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    # The lr integral of each stage is what its schedule states: a late stage gets the full schedule.
    per_stage = [sum(lrs[:6]), sum(lrs[6:])]
    assert per_stage == pytest.approx([sum(expected[:6]), sum(expected[6:])], rel=1e-6)
    assert lrs[6] == pytest.approx(0.5e-3)  # the first step of stage 1 is its own warmup, not stage 0's tail


def test_global_schedule_keeps_one_cosine_and_rewarms_each_stage(tmp_path):
    run(compose_config([*TWO_STAGES, "curriculum.schedule=global"], run_dir=str(tmp_path)))
    lrs = lr_per_step(tmp_path)
    # One cosine over the 14 steps (the run's warmup of 3); every stage, the first included, re-warms over 2 steps.
    rewarm = [min(1.0, (s - (0 if s < 6 else 6) + 1) / 2) for s in range(14)]
    expected = [configured_lr(s, 0, 3, 14, 1e-3, 0.1) * rewarm[s] for s in range(14)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    # The old schedule: the late stage trains under less lr than the early one, as the issue measured.
    assert sum(lrs[6:]) / 8 < sum(lrs[:6]) / 6


def test_a_global_schedule_relaunched_with_more_steps_continues_the_uninterrupted_cosine(tmp_path):
    """``trainer.max_steps=6`` stops the run where stage 0 ends; relaunched with 14, steps 6-13 train with the
    uninterrupted run's lr (the relaunch kept the first launch's 6-step cosine and trained them at its floor).
    metrics.csv continues across the relaunch: the first launch's rows stay (a relaunch rewrote the file with
    the columns of its own first rows, and lost the others)."""
    overrides = [*TWO_STAGES, "curriculum.schedule=global"]
    run(compose_config([*overrides, "trainer.max_steps=6"], run_dir=str(tmp_path)))
    first = lr_per_step(tmp_path)
    run(compose_config(overrides, run_dir=str(tmp_path)))
    lrs = lr_per_step(tmp_path)
    expected = [configured_lr(s, 0, 3, 14, 1e-3, 0.1) * min(1.0, (s - 6 + 1) / 2) for s in range(6, 14)]
    assert len(first) == 6 and lrs[:6] == first  # the first launch's steps, kept
    assert lrs[6:] == pytest.approx(expected, rel=1e-6)


# ---- freezing means the whole encoder ---------------------------------------------------------------
FROZEN = [
    "curriculum=progressive_frozen",
    "curriculum.stage.steps=3",
    "curriculum.stage.warmup_steps=1",
    "trainer.max_steps=9",
    "checkpoint.every_n_train_steps=1",
    "eval.final=false",
    "+trainer.limit_val_batches=0",
]


def encoder(state: dict[str, torch.Tensor], modality: str) -> dict[str, torch.Tensor]:
    """Every parameter of one encoder: preprocessor, trunk and head."""
    parts = tuple(f"model.{p}.{modality}." for p in ("preprocessors", "trunks", "heads"))
    out = {k: v for k, v in state.items() if k.startswith(parts)}
    assert any(k.startswith(parts[2]) for k in out) and any(k.startswith(parts[1]) for k in out)
    return out


def test_a_frozen_encoder_is_frozen_bit_for_bit_head_and_temperature_included(tmp_path):
    run(compose_config(FROZEN, run_dir=str(tmp_path)))
    at = {s: weights(tmp_path / "checkpoints" / f"step{s:06d}.ckpt") for s in (1, 3, 6, 9)}
    # The anchor: frozen whole from the first step (step 1 vs the end; a trainable image would move).
    for k, v in encoder(at[1], "image").items():
        assert torch.equal(v, at[9][k]), k
    # Text trains in stage 0, then is frozen whole once aligned (steps 4-9), head included.
    assert any(not torch.equal(v, at[3][k]) for k, v in encoder(at[1], "text").items())
    for k, v in encoder(at[3], "text").items():
        assert torch.equal(v, at[9][k]), k
    # image|text's temperature: both of its encoders are frozen whole, so it is frozen too.
    assert torch.equal(at[3]["loss.logit_scales.image|text.log_scale"], at[9]["loss.logit_scales.image|text.log_scale"])
    # Audio trains in its own stage (4-6) and is frozen from 7 on.
    assert any(not torch.equal(v, at[6][k]) for k, v in encoder(at[3], "audio").items())
    for k, v in encoder(at[6], "audio").items():
        assert torch.equal(v, at[9][k]), k
    # A frozen encoder has no optimizer state left.
    ckpt = torch.load(tmp_path / "checkpoints" / "step000009.ckpt", map_location="cpu", weights_only=True)
    assert len(ckpt["optimizer_states"][0]["state"]) < len(ckpt["state_dict"])


def test_freeze_parts_can_keep_the_heads_training(tmp_path):
    run(compose_config([*FROZEN, "curriculum.stage.freeze_parts=[preprocessor,trunk]"], run_dir=str(tmp_path)))
    at3, at9 = (weights(tmp_path / "checkpoints" / f"step{s:06d}.ckpt") for s in (3, 9))
    text = encoder(at3, "text")
    assert all(torch.equal(v, at9[k]) for k, v in text.items() if not k.startswith("model.heads."))
    assert any(not torch.equal(v, at9[k]) for k, v in text.items() if k.startswith("model.heads."))


# ---- what trained is what is reported -------------------------------------------------------------
def test_a_run_that_ends_early_reports_only_the_edges_it_trained(tmp_path, caplog, capsys):
    cut = ["curriculum=progressive", "curriculum.stage.steps=4", "curriculum.stage.warmup_steps=1"]
    with caplog.at_level(logging.WARNING, logger="bindspace.train"):
        metrics = run(compose_config([*cut, "trainer.max_steps=6"], run_dir=str(tmp_path)))
    warned = [r.getMessage() for r in caplog.records if "ends the run before" in r.getMessage()]
    assert len(warned) == 1 and "+depth, +thermal, +imu" in warned[0] and "image|imu" in warned[0]
    assert metrics["stages_not_reached"] == ["+depth", "+thermal", "+imu"]
    assert metrics["trained_edges"] == ["image|text", "image|audio"]
    assert metrics["budget"]["edge_steps"] == {
        "image|text": 6, "image|audio": 2, "image|depth": 0, "image|thermal": 0, "image|imu": 0,
    }  # fmt: skip
    retrieval = metrics["retrieval"]
    assert retrieval["image->audio"]["trained"] and not retrieval["image->imu"]["trained"]
    assert not retrieval["depth->image"]["trained"]
    assert "never trained: image|depth, image|thermal, image|imu" in capsys.readouterr().out
    meta = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["bindspace"]
    assert meta["edges"] == [["image", "text"], ["image", "audio"]] and len(meta["graph_edges"]) == 5


# ---- checkpoints that are what they say ------------------------------------------------------------
def test_the_final_state_is_saved_whatever_the_interval_and_eval_reproduces_the_run(tmp_path):
    from bindspace.eval import run as evaluate

    overrides = ["trainer.max_steps=7", "checkpoint.every_n_train_steps=4"]
    metrics = run(compose_config(overrides, run_dir=str(tmp_path / "train")))
    ckpts = tmp_path / "train" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step000004.ckpt", "step000007.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 7
    evaluated = evaluate(compose_eval([f"ckpt_path={ckpts / 'last.ckpt'}", "eval.plots=false"], str(tmp_path / "e")))
    assert evaluated["gallery_size"] == metrics["gallery_size"]
    for pair, cell in metrics["retrieval"].items():
        for k in ("R@1", "R@5", "R@10", "mAP"):
            assert evaluated["retrieval"][pair][k] == pytest.approx(cell[k], abs=1e-6), (pair, k)
        assert evaluated["retrieval"][pair]["trained"] == cell["trained"]


def test_the_unreached_stage_warning_says_when_a_plateau_stage_decides(caplog):
    """Stages after a plateau stage are planned at its cap; the warning says so instead of promising that
    their edges will not be trained (a plateau reached earlier lets them start)."""
    from omegaconf import OmegaConf

    from bindspace.config import build_run_spec
    from bindspace.train import warn_unreached_stages

    plateau = "{name: a, edges: [[image,text]], plateau: {metric: val/mean_R@1, patience: 1, max_steps: 50}}"
    cfg = compose_config(
        ["graph.modalities=[image,text,audio]", f"curriculum.stages=[{plateau}, {{name: b, edges: all}}]"]
    )
    spec = build_run_spec(OmegaConf.to_container(cfg, resolve=True))
    with caplog.at_level(logging.WARNING, logger="bindspace.train"):
        assert warn_unreached_stages(spec, 10, 100) == ["b"]
    (line,) = [r.getMessage() for r in caplog.records if "ends the run before" in r.getMessage()]
    assert "if plateau stage(s) a run to their max_steps" in line and "would then not be trained" in line
