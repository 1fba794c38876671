"""bindspace-eval on a freshly trained checkpoint: the metrics.json keys, the plots, stored mitigations, errors."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from conftest import TINY_OVERRIDES
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from test_inference import trained_run_dir

from bindspace import BindSpace
from bindspace.eval import main, run
from bindspace.modalities import ConfigError

pytestmark = pytest.mark.slow

# The held-out sets of the training run (same sizes and seed), so eval scores the same scenes.
DATA_OVERRIDES = [o for o in TINY_OVERRIDES if o.startswith("data.")]


def compose_eval(overrides: list[str], run_dir: str) -> DictConfig:
    with initialize_config_module("bindspace.configs", version_base="1.3"):
        cfg = compose("eval", overrides=[*DATA_OVERRIDES, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = run_dir
        cfg.hydra.runtime.output_dir = run_dir
    OmegaConf.resolve(cfg.paths)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    trained = trained_run_dir(tmp_path_factory)
    ckpt = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    shutil.copy(trained / "checkpoints" / "last.ckpt", ckpt)
    out = tmp_path_factory.mktemp("eval")
    metrics = run(compose_eval([f"ckpt_path={ckpt}", "eval.save_to_checkpoint=true"], str(out)))
    return trained, ckpt, out, metrics


def test_eval_writes_every_key_and_matches_the_training_time_retrieval(evaluated):
    trained, _, out, metrics = evaluated
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert {"retrieval", "retrieval_class", "zero_shot", "modality_gap", "mixed_index", "summary_centered"} <= set(
        on_disk
    )
    training = json.loads((trained / "metrics.json").read_text())
    assert on_disk["format"] == training["format"] == "bindspace-metrics/2"  # one versioned layout
    assert on_disk["gallery_size"] == training["gallery_size"]
    for pair, cell in training["retrieval"].items():  # same model, same held-out scenes, same numbers
        assert on_disk["retrieval"][pair]["R@1"] == pytest.approx(cell["R@1"]), pair
        assert on_disk["retrieval"][pair]["trained"] == cell["trained"]
    assert set(on_disk["zero_shot"]) == {"image", "audio", "depth", "thermal", "imu"}
    for acc in on_disk["zero_shot"].values():
        assert set(acc) == {"top1", "top5", "top1_ci", "top5_ci"} and 0.0 <= acc["top1"] <= acc["top5"] <= 100.0
    assert len(on_disk["modality_gap"]) == 15 and "text|audio" in on_disk["modality_gap"]
    gap = on_disk["modality_gap"]["text|audio"]
    assert 0.0 <= gap["centroid_distance"] <= 2.0 and 0.0 <= gap["separability"] <= 100.0
    mixed = on_disk["mixed_index"]["text->image+audio"]
    assert set(mixed) == {"none", "center", "bridge"}
    assert sum(mixed["none"]["share"].values()) == pytest.approx(100.0)


def test_eval_writes_the_plots_and_stores_mitigations(evaluated):
    _, ckpt, out, _ = evaluated
    for name in ("retrieval_R@1.png", "modality_gap.png"):
        with Image.open(out / name) as png:
            assert png.format == "PNG" and png.width > 300
    assert "R@1 [95% interval] (rows: query modality" in (out / "retrieval.txt").read_text()
    loaded = BindSpace.from_checkpoint(ckpt)
    assert set(loaded.centering) == set(loaded.modalities)
    assert set(loaded.bridges) == {"image->text", "audio->text"}


def test_eval_config_errors_name_the_key(tmp_path, evaluated):
    _, ckpt, _, _ = evaluated
    with pytest.raises(ConfigError, match=r"eval\.reference_split must differ"):
        run(compose_eval([f"ckpt_path={ckpt}", "eval.reference_split=test"], str(tmp_path)))
    with pytest.raises(ConfigError, match="modality 'smell' is not in the checkpoint's model"):
        run(compose_eval([f"ckpt_path={ckpt}", "eval.zero_shot_modalities=[smell]"], str(tmp_path)))


def test_cli_missing_checkpoint_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "missing.ckpt"
    monkeypatch.setattr(sys, "argv", ["bindspace-eval", f"ckpt_path={missing}", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"bindspace-eval: error: ckpt_path: no checkpoint file at {missing}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_default_mixed_index_needs_three_modalities_and_is_left_out_below():
    # The default (text queries, the model's next two modalities) exists only with three modalities; a
    # two-modality checkpoint (a one-edge run, a merged LoRA fine-tune of one pair) is evaluated without it.
    from bindspace.eval import EvalOptions

    opts = EvalOptions()
    opts.check(["image", "audio"])
    assert opts.mixed_index == []
    opts = EvalOptions()
    opts.check(["image", "text", "audio"])
    assert opts.mixed_index == [{"queries": "text", "gallery": ["image", "audio"]}]
    with pytest.raises(ConfigError, match=r"eval.mixed_index\[0\] needs"):
        EvalOptions(mixed_index=[{"queries": "image", "gallery": ["audio"]}]).check(["image", "audio"])


def test_scenes_unlike_the_training_runs_are_named(evaluated, tmp_path, caplog):
    """Evaluated with another renderer or seed than its run trained with (read from the run's own .hydra/config.yaml),
    the checkpoint is scored on scenes its run never held out: allowed, and said in a warning and in metrics.json."""
    from bindspace.data.synthetic import DEFAULT_VERSION, VERSIONS
    from bindspace.eval import training_data_differences

    trained, _, _, metrics = evaluated
    assert metrics["training_data_differences"] == []  # a copied checkpoint: no run config beside it
    ckpt = trained / "checkpoints" / "last.ckpt"
    plain = lambda *extra: OmegaConf.to_container(compose_eval([f"ckpt_path={ckpt}", *extra], str(tmp_path)))  # noqa: E731
    assert training_data_differences(plain()) == []  # the run's own data settings
    other = next(v for v in VERSIONS if v != DEFAULT_VERSION)
    assert training_data_differences(plain(f"data.synthetic.version={other}", "seed=3")) == [
        "seed: trained 0, evaluated 3",
        f"data.synthetic.version: trained {DEFAULT_VERSION}, evaluated {other}",
    ]
    assert training_data_differences({**plain("seed=3"), "data": {"name": "spoken_digits"}}) == []  # not synthetic
    with caplog.at_level("WARNING", logger="bindspace.eval"):
        shifted = run(compose_eval([f"ckpt_path={ckpt}", f"data.synthetic.version={other}"], str(tmp_path / "ev")))
    expected = [f"data.synthetic.version: trained {DEFAULT_VERSION}, evaluated {other}"]
    assert shifted["training_data_differences"] == expected
    assert [r.getMessage() for r in caplog.records if "scenes unlike the training run's" in r.getMessage()]
