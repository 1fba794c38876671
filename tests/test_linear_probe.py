"""Linear probes (bindspace-eval probe=true): scikit-learn parity, chance, disjointness, metrics.json."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from test_eval_cli import compose_eval
from test_inference import trained_run_dir

from bindspace.errors import ConfigError
from bindspace.eval import run
from bindspace.evaluation.probe import linear_probe, probe_chance, probe_modality
from bindspace.evaluation.stats import DEFAULT_BOOTSTRAP


def clusters(n: int, classes: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    x = centres[labels] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_probe_equals_scikit_learns_own_pipeline_with_a_seeded_interval():
    x, y = clusters(500, 5, 16, 0.8, seed=0)  # one draw (the same class centres), fitted on 300, scored on 200
    x_fit, y_fit, x_score, y_score = x[:300], y[:300], x[300:], y[300:]
    found = probe_modality(x_fit, y_fit, x_score, y_score, seed=0)
    scaler = StandardScaler().fit(x_fit)
    reference = LogisticRegression(max_iter=2000).fit(scaler.transform(x_fit), y_fit)
    correct = reference.predict(scaler.transform(x_score)) == y_score
    assert found["top1"] == pytest.approx(100.0 * correct.mean(), abs=1e-12)
    assert found["top1"] > 80.0  # well-separated classes are found
    low, high = found["top1_ci"]
    assert low <= found["top1"] <= high and high - low > 0
    expected = DEFAULT_BOOTSTRAP.intervals(correct.astype(np.float64) * 100.0)
    assert [low, high] == pytest.approx(list(expected))
    assert found == probe_modality(x_fit, y_fit, x_score, y_score, seed=0)  # seeded: the same numbers again
    assert (found["classes"], found["fit_samples"], found["scored_samples"]) == (5, 300, 200)
    assert found["chance"] == 100.0 * np.bincount(y_score).max() / len(y_score) == probe_chance(y_score)
    assert found["chance"] >= 100.0 / 5


def test_a_collapsed_embedding_scores_exactly_chance_and_noise_stays_near_it():
    x, y = clusters(400, 4, 8, 0.5, seed=2)
    same = np.ones_like(x) / np.sqrt(x.shape[1])
    collapsed = probe_modality(same[:250], y[:250], same[250:], y[250:])
    # A collapsed model's probe predicts the fitted majority class for every sample: never above chance.
    majority = np.bincount(y[:250]).argmax()
    assert collapsed["top1"] == 100.0 * float((y[250:] == majority).sum()) / 150
    assert collapsed["top1"] <= collapsed["chance"] and collapsed["chance"] >= 25.0
    shuffled = np.random.default_rng(3).permutation(y)
    noise = probe_modality(x[:250], shuffled[:250], x[250:], shuffled[250:])
    assert noise["top1_ci"][0] <= noise["chance"] + 10.0  # labels carrying no signal: no accuracy above chance
    assert noise["top1"] < 50.0


def test_fitted_and_scored_samples_must_differ_by_id():
    x, y = clusters(40, 2, 4, 0.5, seed=4)
    fit = ({"image": torch.from_numpy(x[:20])}, torch.arange(20), torch.from_numpy(y[:20]))
    score = ({"image": torch.from_numpy(x[20:])}, torch.arange(20), torch.from_numpy(y[20:]))
    ids = [f"s{i}" for i in range(40)]
    assert set(linear_probe(fit, score, ids[:20], ids[20:])) == {"image"}
    with pytest.raises(ValueError, match="1 sample id"):
        linear_probe(fit, score, ids[:20], [*ids[20:39], "s3"])
    with pytest.raises(ValueError, match="class labels"):
        linear_probe(fit, (score[0], score[1], None), ids[:20], ids[20:])


@pytest.mark.slow
def test_eval_probe_true_reports_each_modality_next_to_zero_shot(tmp_path_factory, capsys):
    trained = trained_run_dir(tmp_path_factory)
    ckpt = tmp_path_factory.mktemp("probe_ckpt") / "last.ckpt"
    shutil.copy(trained / "checkpoints" / "last.ckpt", ckpt)
    out = tmp_path_factory.mktemp("probe_eval")
    metrics = run(compose_eval([f"ckpt_path={ckpt}", "probe=true", "eval.plots=false"], str(out)))
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["format"] == "bindspace-metrics/2"
    probe = on_disk["linear_probe"]
    assert probe == json.loads(json.dumps(metrics["linear_probe"]))
    modalities = {pair.split("->")[0] for pair in on_disk["retrieval"]}
    assert set(probe) == modalities
    for m, entry in probe.items():
        assert entry["scored_samples"] == on_disk["gallery_size"]
        assert entry["fit_samples"] == on_disk["fit_split"]["fit_ids"]
        assert entry["top1_ci"][0] <= entry["top1"] <= entry["top1_ci"][1]
        assert on_disk["chance"]["linear_probe"][m] == entry["chance"]
    assert "zero_shot" in on_disk
    printed = capsys.readouterr().out
    assert f"linear probe {sorted(probe)[0]}: top1=" in printed and "(chance " in printed
    with pytest.raises(ConfigError, match="probe must be true or false"):
        run(compose_eval([f"ckpt_path={ckpt}", "probe=maybe"], str(tmp_path_factory.mktemp("bad"))))
