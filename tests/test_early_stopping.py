"""early_stopping={metric, patience} (issue 16, part 5): stops on a validation metric, evaluates the best
weights, and a resumed run stops where an uninterrupted one does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_config

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


def test_a_resumed_run_stops_where_an_uninterrupted_one_does(tmp_path):
    first = run(compose_config([*STOPPING[1:], "trainer.max_steps=6"], run_dir=str(tmp_path)))
    assert first["early_stopping"]["best_step"] == 4 and first["early_stopping"]["stopped_step"] is None
    resumed = run(compose_config(STOPPING, run_dir=str(tmp_path)))  # resume=auto: from last.ckpt at step 6
    assert (resumed["early_stopping"]["best_step"], resumed["early_stopping"]["stopped_step"]) == (4, 8)
    assert resumed["steps"] == 8


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
    with pytest.raises(ConfigError, match="early_stopping.patience"):
        run(compose_config(["early_stopping={patience: -1}"], run_dir=str(tmp_path)))
    assert not (tmp_path / "checkpoints").exists()


def test_only_counting_validations_count(tmp_path):
    class Trainer:
        sanity_checking, global_step, should_stop = False, 4, False
        callback_metrics = {"val/mean_R@1": torch.tensor(1.0)}

    early = EarlyStopping(tmp_path, patience=1, counting=lambda: False)
    early.on_validation_end(Trainer(), None)
    assert early.best is None and not Trainer.should_stop
