"""early_stopping={metric, patience} (issue 16, part 5): stops on a validation metric, evaluates the best
weights, and a resumed run stops where an uninterrupted one does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import compose_config, python_m

from bindspace.errors import ConfigError
from bindspace.train import run
from bindspace.training.early_stopping import EarlyStopping, parse_early_stopping

pytestmark = pytest.mark.slow

# Validation every 4 steps; min_delta 100 (percent) means nothing after the first validation improves,
# so patience 1 stops at the second one: step 8 of at most 40.
STOPPING = [
    "trainer.max_steps=40",
    "trainer.val_check_interval=4",
    "checkpoint.every_n_train_steps=2",
    "early_stopping={metric: val/mean_R@1, patience: 1, min_delta: 100}",
]


def test_stops_at_patience_and_scores_the_best_weights(tmp_path):
    metrics = run(compose_config(STOPPING, run_dir=str(tmp_path)))
    early = metrics["early_stopping"]
    assert (early["best_step"], early["stopped_step"], metrics["steps"]) == (4, 8, 8)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["early_stopping"] == early
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == 4 and last["global_step"] == 8 and "bindspace" in best
    moved = [k for k in best["state_dict"] if not torch.equal(best["state_dict"][k], last["state_dict"][k])]
    assert moved  # the last steps trained: evaluating the last weights would give other numbers
    # metrics.json is the best checkpoint's evaluation: re-score best.ckpt on the same gallery.
    from bindspace import BindSpace
    from bindspace.data.datamodule import TEST_BASE, scene_config
    from bindspace.data.synthetic import SyntheticScenes
    from bindspace.evaluation.retrieval import retrieval_matrix

    bs = BindSpace.from_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    ids = np.arange(on_disk["gallery_size"]) + TEST_BASE
    scenes = SyntheticScenes(scene_config(bs.model.configs), seed=0)
    embs = {m: bs.embed(m, scenes.render(m, ids)) for m in bs.modalities}
    instance, _ = retrieval_matrix(embs, torch.as_tensor(ids), bs.edges)
    for pair, cell in on_disk["retrieval"].items():
        assert instance[pair]["R@1"] == pytest.approx(cell["R@1"], abs=1e-6), pair


@pytest.mark.parametrize("interrupted", [6, 4])  # 4: the step checkpoint of a step that also validates
def test_a_resumed_run_stops_where_an_uninterrupted_one_does(tmp_path, interrupted):
    first = run(compose_config([*STOPPING[1:], f"trainer.max_steps={interrupted}"], run_dir=str(tmp_path)))
    assert first["early_stopping"]["best_step"] == 4 and first["early_stopping"]["stopped_step"] is None
    # A run that dies after step 4 (SIGKILL, a node failure) resumes from step000004.ckpt, not last.ckpt.
    (tmp_path / "checkpoints" / f"step{interrupted:06d}.ckpt").replace(tmp_path / "checkpoints" / "last.ckpt")
    resumed = run(compose_config(STOPPING, run_dir=str(tmp_path)))  # resume=auto: from last.ckpt at step 6
    assert (resumed["early_stopping"]["best_step"], resumed["early_stopping"]["stopped_step"]) == (4, 8)
    assert resumed["steps"] == 8


def test_a_best_checkpoint_of_another_step_is_never_evaluated_as_the_best(tmp_path):
    # Resumed in its own folder from an earlier step checkpoint (a roll-back), the run's best is step 4 while
    # best.ckpt on disk is what a later launch wrote (planted: the weights of step 8): evaluating it as step
    # 4 would report another model's numbers. One line naming the file and both steps instead.
    run(compose_config(STOPPING, run_dir=str(tmp_path)))
    ckpts = tmp_path / "checkpoints"
    shutil.copy(ckpts / "step000008.ckpt", ckpts / "best.ckpt")
    resumed = [*STOPPING, f"ckpt_path={ckpts / 'step000006.ckpt'}"]
    with pytest.raises(ConfigError, match=r"best.ckpt holds step 8, not the best step 4") as err:
        run(compose_config(resumed, run_dir=str(tmp_path)))
    assert "\n" not in str(err.value)


def test_relaunching_a_run_that_stopped_early_trains_no_further(tmp_path):
    # A requeue (or the same command again) after the run stopped early: resume=auto finds last.ckpt at the
    # stopping step, which is below max_steps; the run stays stopped instead of training on to the next stop.
    first = run(compose_config(STOPPING, run_dir=str(tmp_path)))
    assert (first["early_stopping"]["stopped_step"], first["steps"]) == (8, 8)
    ckpts = tmp_path / "checkpoints"
    written = sorted(p.name for p in ckpts.iterdir())
    again = run(compose_config(STOPPING, run_dir=str(tmp_path)))
    assert again["steps"] == 8 and again["early_stopping"] == first["early_stopping"]
    assert sorted(p.name for p in ckpts.iterdir()) == written
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 8


@pytest.mark.parametrize(
    ("value", "trainer", "message"),
    [
        ({"metrc": "val/mean_R@1"}, {}, "unknown key 'metrc' (did you mean 'metric'?)"),
        ({"patience": 0}, {}, "early_stopping.patience must be an integer >= 1"),
        ({"metric": "train/loss"}, {}, "must be a validation metric"),
        ({"mode": "up"}, {}, "early_stopping.mode must be max or min"),
        ({}, {"limit_val_batches": 0}, "trainer.limit_val_batches=0 turns it off"),
    ],
)
def test_bad_settings_are_one_line_before_any_compute(value, trainer, message):
    with pytest.raises(ConfigError) as err:
        parse_early_stopping(value, trainer)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_through_the_cli_config_check(tmp_path):
    with pytest.raises(ConfigError, match=r"early_stopping\.patience"):
        run(compose_config(["early_stopping={patience: -1}"], run_dir=str(tmp_path)))
    assert not (tmp_path / "checkpoints").exists()


def test_only_counting_validations_count(tmp_path):
    from types import SimpleNamespace

    trainer = SimpleNamespace(
        sanity_checking=False, global_step=4, should_stop=False, callback_metrics={"val/mean_R@1": torch.tensor(1.0)}
    )
    early = EarlyStopping(tmp_path, patience=1, counting=lambda trainer: False)
    early.on_validation_end(trainer, None)
    assert early.best is None and not trainer.should_stop


def test_under_ddp_with_a_curriculum_only_the_last_stage_counts(tmp_path):
    """Through the CLI, 2 gloo processes: stages of 4 steps, the last (+imu) from step 16. Its first counting
    validation is step 20's: step 16's scores weights no +imu step has trained (it counted, and step 16, whose
    weights never trained image|imu, was the best checkpoint while metrics.json flagged image|imu as trained).
    The stop at step 24 records the last stage (end: run), as a stop at trainer.max_steps does."""
    import subprocess

    from conftest import TINY_OVERRIDES

    tiny = [o for o in TINY_OVERRIDES if not o.startswith(("data.batch_size", "trainer.max_steps", "checkpoint."))]
    args = [*tiny, "trainer=ddp", "trainer.devices=2", "data.batch_size=4", *STOPPING, "curriculum=progressive",
            "curriculum.stage.steps=4", "curriculum.stage.warmup_steps=1", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    done = subprocess.run([*python_m("bindspace.train"), *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    stages = metrics["stages"]
    assert [(s["step"], s["end"]) for s in stages] == [(4, "stage"), (8, "stage"), (12, "stage"), (16, "stage"),
                                                       (24, "run")]  # fmt: skip
    assert stages[-1]["start_step"] == 16 and metrics["budget"]["stage_steps"] == [4, 4, 4, 4, 8]
    early = metrics["early_stopping"]
    assert (early["best_step"], early["stopped_step"], metrics["steps"]) == (20, 24, 24)


@pytest.mark.parametrize("extra", [[], ["data.val={manifest}"]])
def test_selecting_on_the_scored_samples_is_refused_before_training(tmp_path, extra):
    """A manifest without data.test scores its validation set: early stopping would pick the checkpoint on the
    very samples metrics.json reports. Refused (data.test or data.select_fraction), before any step."""
    from test_manifest import paired_rows, write_rows

    manifest = write_rows(tmp_path / "m.jsonl", paired_rows(tmp_path, 24, ["image", "text"], labels=None))
    cfg = compose_config(
        ["data=manifest", f"data.train={manifest}", "data.val_fraction=0.3", "graph.modalities=[image,text]",
         "data.batch_size=4", *STOPPING, *(e.format(manifest=manifest) for e in extra)],
        run_dir=str(tmp_path / "run"),
        synthetic=False,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"early_stopping.*scores the same samples.*data\.select_fraction"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
    # data.select_fraction: validation and the scored test set are disjoint, so the same settings pass.
    from test_manifest import build

    from bindspace.train import check_selection_apart

    apart = build([("image", "text")], train=str(manifest), val=str(manifest), select_fraction=0.5)
    check_selection_apart({"early_stopping": {"patience": 1}, "trainer": {}}, apart)


def test_a_plateau_stage_on_the_scored_samples_is_refused_too(tmp_path):
    """A plateau stage ends when a validation metric stops improving: a choice made on the validation set, like
    early stopping's, so it too must not be made on the samples the final evaluation scores."""
    from test_manifest import build, paired_rows, write_rows

    from bindspace.curriculum import Curriculum
    from bindspace.train import check_selection_apart

    manifest = str(write_rows(tmp_path / "m.jsonl", paired_rows(tmp_path, 24, ["image", "text"], labels=None)))
    plateau = {"metric": "val/mean_R@1", "patience": 1, "max_steps": 10}

    def curriculum(length: dict) -> Curriculum:
        stages = [{"name": "a", "edges": [["image", "text"]], **length}, {"name": "b", "edges": "all"}]
        return Curriculum.from_config({"stages": stages}, [("image", "text"), ("image", "depth")], ["image"])

    plain = {"early_stopping": None, "trainer": {}}
    scored_is_val = build([("image", "text")], train=manifest, val_fraction=0.3)
    with pytest.raises(ConfigError, match=r"curriculum\.stages\[0\] \(a\) ends on a plateau.*same samples"):
        check_selection_apart(plain, scored_is_val, curriculum({"plateau": plateau}))
    apart = build([("image", "text")], train=manifest, val=manifest, select_fraction=0.5)
    check_selection_apart(plain, apart, curriculum({"plateau": plateau}))
    check_selection_apart(plain, scored_is_val, curriculum({"steps": 2}))  # nothing chosen on validation
