"""bindspace-eval fits nothing on a scored sample, checked by sample id in real runs: a manifest without
data.test, a planted val/test overlap (split, or refused with eval.fit_split=reference), spoken digits."""

from __future__ import annotations

import shutil

import pytest
from conftest import compose_config, run_main_in_process
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf, open_dict
from test_inference import trained_run_dir
from test_manifest import paired_rows, write_rows

import bindspace.eval as eval_cli
from bindspace.modalities import ConfigError

pytestmark = pytest.mark.slow


def compose_eval(overrides: list[str], run_dir) -> DictConfig:
    with initialize_config_module("bindspace.configs", version_base="1.3"):
        cfg = compose("eval", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.hydra.runtime.output_dir = str(run_dir)
    OmegaConf.resolve(cfg.paths)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_capturing(cfg: DictConfig, monkeypatch) -> tuple[dict, set[str], set[str], set[str]]:
    """Run bindspace-eval; return its metrics, the ids fitted on, the ids scored, and every held-out id.

    The ids are read back from the datamodule through the rows each step received, independently of the
    code that chose them.
    """
    seen: dict = {}
    build, fit, evaluate = eval_cli.build_datamodule, eval_cli.fit_mitigations, eval_cli.evaluate
    monkeypatch.setattr(eval_cli, "build_datamodule", lambda *a, **k: seen.setdefault("dm", build(*a, **k)))

    def fit_spy(ref, opts):
        seen["fit_rows"] = ref[1].tolist()
        return fit(ref, opts)

    def evaluate_spy(bs, test, *args):
        seen["score_rows"] = test[1].tolist()
        return evaluate(bs, test, *args)

    monkeypatch.setattr(eval_cli, "fit_mitigations", fit_spy)
    monkeypatch.setattr(eval_cli, "evaluate", evaluate_spy)
    metrics = eval_cli.run(cfg)
    dm = seen["dm"]
    fitted = {dm.val_set.samples[r].id for r in seen["fit_rows"]}  # reference split: val
    scored = {dm.test_set.samples[r].id for r in seen["score_rows"]}  # scored split: test
    return metrics, fitted, scored, {s.id for s in [*dm.val_set.samples, *dm.test_set.samples]}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The shared 4-step synthetic checkpoint (all six modalities, image anchor)."""
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    shutil.copy(trained_run_dir(tmp_path_factory) / "checkpoints" / "last.ckpt", path)
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    return write_rows(root / "train.jsonl", paired_rows(root, 60, prefix="row"))


def manifest_eval(ckpt, manifest, extra: list[str]) -> list[str]:
    return [f"ckpt_path={ckpt}", "data=manifest", f"data.train={manifest}", "data.batch_size=8", *extra]


def test_a_manifest_without_test_is_fitted_and_scored_on_disjoint_halves(ckpt, manifest, tmp_path, monkeypatch):
    cfg = compose_eval(manifest_eval(ckpt, manifest, ["data.val_fraction=0.5"]), tmp_path)
    metrics, fitted, scored, heldout = run_capturing(cfg, monkeypatch)
    assert fitted and scored and not fitted & scored and fitted | scored == heldout
    info = metrics["fit_split"]
    assert info["method"] == "id_hash" and info["overlap"] == 0 and info["shared_ids"] == len(heldout)
    assert (info["fit_ids"], info["score_ids"]) == (len(fitted), len(scored))
    assert abs(len(fitted) - len(scored)) <= 1 and metrics["gallery_size"] == len(scored)
    assert {"summary_centered", "mixed_index", "zero_shot_centered"} <= set(metrics)


def test_a_planted_val_test_overlap_is_split_or_refused(ckpt, manifest, tmp_path, monkeypatch):
    root = tmp_path / "heldout"
    val_rows = paired_rows(root, 24, prefix="v")
    test_rows = val_rows[:12] + paired_rows(root, 12, prefix="t")  # 12 ids in both splits
    val, test = write_rows(root / "val.jsonl", val_rows), write_rows(root / "test.jsonl", test_rows)
    planted = manifest_eval(ckpt, manifest, [f"data.val={val}", f"data.test={test}"])
    with pytest.raises(ConfigError, match=r"eval\.fit_split=reference: the val and test splits share 12 sample ids"):
        eval_cli.run(compose_eval([*planted, "eval.fit_split=reference"], tmp_path / "refused"))
    assert not (tmp_path / "refused" / "metrics.json").exists()
    metrics, fitted, scored, _ = run_capturing(compose_eval(planted, tmp_path / "split"), monkeypatch)
    assert not fitted & scored
    assert {r["id"] for r in val_rows[12:]} <= fitted and {r["id"] for r in test_rows[12:]} <= scored
    assert metrics["fit_split"]["shared_ids"] == 12 and len(scored) == 12 + 6 and len(fitted) == 12 + 6


def test_the_cli_refuses_shared_samples_in_one_line(ckpt, manifest, tmp_path):
    # In process with Hydra's logging set-up off (run_main_in_process): its dictConfig, run here directly,
    # left root handlers on the captured stderr, and later tests' warnings failed to write to it.
    argv = manifest_eval(ckpt, manifest, ["eval.fit_split=reference", f"hydra.run.dir={tmp_path}"])
    done = run_main_in_process(eval_cli.main, "bindspace-eval", *argv)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "bindspace-eval: error: eval.fit_split=reference: the val and test splits share" in done.stderr
    with pytest.raises(ConfigError, match=r"eval\.fit_split must be one of \('auto', 'reference'\), got 'never'"):
        eval_cli.run(compose_eval([f"ckpt_path={ckpt}", "eval.fit_split=never"], tmp_path))


def test_spoken_digits_fits_and_scores_disjoint_halves(tmp_path, monkeypatch):
    monkeypatch.setenv("BINDSPACE_CACHE", str(tmp_path / "cache"))
    build = ["data.n_train_per_edge=64", "data.n_val=40", "data.batch_size=16"]
    train = compose_config(
        ["experiment=spoken_digits", *build, "trainer.max_steps=2", "trainer.val_check_interval=2", "eval.final=false"],
        run_dir=str(tmp_path / "run"),
        synthetic=False,
    )
    from bindspace.train import run as train_run

    train_run(train)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg = compose_eval([f"ckpt_path={ckpt}", "data=spoken_digits", "prompts=spoken_digits", *build], tmp_path / "ev")
    metrics, fitted, scored, heldout = run_capturing(cfg, monkeypatch)
    assert fitted and scored and not fitted & scored and fitted | scored == heldout and len(heldout) == 40
    assert metrics["fit_split"]["method"] == "id_hash" and metrics["gallery_size"] == len(scored)


def test_caption_lists_are_scored_with_intervals_over_groups(ckpt, tmp_path):
    # Each picture held out once per caption (exact copies of its other modalities): bindspace-eval's
    # intervals resample pictures, as the final evaluation of training does (one suite, one record).
    import json

    import numpy as np

    from bindspace.evaluation.stats import DEFAULT_BOOTSTRAP

    rows = [{**r, "text": [f"first of {i}", f"second of {i}"]} for i, r in enumerate(paired_rows(tmp_path, 40))]
    manifest = write_rows(tmp_path / "captions.jsonl", rows)
    out = tmp_path / "eval"
    eval_cli.run(compose_eval(manifest_eval(ckpt, manifest, ["data.val_fraction=0.5", "probe=true"]), out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bootstrap"]["unit"] == "group" and metrics["instance_relevance"] == "group"
    assert metrics["environment"]["bindspace"]["version"] and metrics["environment"]["cpu"]["torch"]
    assert metrics["checkpoint_environment"] == metrics["environment"]  # trained here, in this session
    per_query = np.load(out / "per_query.npz")
    groups = per_query["groups"]
    assert len(np.unique(groups)) < len(groups)
    for m, entry in metrics["zero_shot"].items():
        values = per_query[f"zero_shot/{m}/top1"].astype(np.float64)
        np.testing.assert_allclose(entry["top1_ci"], 100 * DEFAULT_BOOTSTRAP.intervals(values, groups), atol=1e-3)
    assert metrics["zero_shot"] and metrics["linear_probe"] and metrics["zero_shot_centered"]


def test_a_tiny_scored_half_reports_the_gap_without_a_separability_it_cannot_score(ckpt, tmp_path):
    # 6 held-out rows: 3 fitted on, 3 scored. The probe would need 2 scored samples and 2 fitted ones of its
    # own; bindspace-eval stopped with a traceback after embedding everything.
    import json

    manifest = write_rows(tmp_path / "small.jsonl", paired_rows(tmp_path, 20, prefix="small"))
    out = tmp_path / "eval"
    extra = ["data.val_fraction=0.2", "data.batch_size=4"]
    eval_cli.run(compose_eval([*manifest_eval(ckpt, manifest, []), *extra], out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gallery_size"] < 4
    for table in ("modality_gap", "modality_gap_centered"):
        for pair, entry in metrics[table].items():
            assert entry["separability"] is None and entry["separability_ci"] is None, pair
            assert "at least 4" in entry["separability_skipped"]
            assert 0 <= entry["centroid_distance"] <= 2 and -1 <= entry["matched_cosine"] <= 1
