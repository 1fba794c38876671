"""Every experiment config gets a smoke run; a two-run multirun turns into a report table."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, compose_config, python_m
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from bindspace.config import build_run_spec, check_train_config
from bindspace.data import data_modalities
from bindspace.train import run

pytestmark = pytest.mark.slow
EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "experiment").glob("*.yaml"))


# Per experiment: what shrinks its sweep to one short job.
SMOKE = {
    # A value given on the command line replaces the experiment's swept values for that key.
    "ablate_anchor": ["seed=0", "anchor=text"],
    "ablate_loss": ["seed=0", "loss.kind=siglip"],
    "ablate_curriculum": [
        "seed=0",
        "curriculum=progressive_distill",
        "curriculum.stage.steps=1",
        "curriculum.stage.warmup_steps=1",
    ],
    # A tiny build of the real-data benchmark (seconds), in the test's own cache.
    "spoken_digits": ["data.n_train_per_edge=40", "data.n_val=20", "data.image_size=32", "data.batch_size=8"],
}
SMOKE["spoken_digits_text_anchor"] = SMOKE["spoken_digits"]
SMOKE["pretrained_anchor"] = [
    *SMOKE["spoken_digits"],
    "seed=0",
    "curriculum=progressive_frozen",
    "curriculum.stage.steps=2",
    "curriculum.stage.warmup_steps=1",
]
SMOKE["ablate_finetune"] = [*SMOKE["spoken_digits"], "seed=0", "finetune=lora_r4"]
SMOKE["small_data"] = [*SMOKE["spoken_digits"], "trainer.val_check_interval=2"]
SMOKE["spoken_letters"] = ["data.n_train_per_edge=52", "data.n_val=26", "data.image_size=32", "data.batch_size=8"]
# Experiments on a built benchmark (not the synthetic data): audio->text is emergent in each.
BUILT_DATA = {
    "spoken_digits", "spoken_digits_text_anchor", "pretrained_anchor", "ablate_finetune", "spoken_letters",
    "small_data",
}  # fmt: skip
# A trained space to bind into: {space} is a 1-step run's checkpoint made by the test.
SMOKE["bind_new_modality"] = ["init_from={space}", "new_modality=imu", "graph.modalities=[image,text,imu]"]


def multirun(tmp_path: Path, *overrides: str, synthetic: bool = True) -> subprocess.CompletedProcess:
    base = [o for o in TINY_OVERRIDES if synthetic or not o.startswith("data.")]
    cmd = [*python_m("bindspace.train"), "-m", *base, *overrides, f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "BINDSPACE_CACHE": str(tmp_path / "cache")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_smoke_run(tmp_path, bindspace_cache, experiment):
    """One short job of each experiment (its sweep cut to one point), composed and trained in this process.

    In-process, because a fresh interpreter costs several times the job itself here; the multirun CLI
    itself (an experiment's sweep, a command-line value replacing a swept one, the report) is driven
    by ``test_two_run_multirun_produces_a_report``, and every sweep point's composition by the test below.
    """
    assert experiment in SMOKE, f"add a smoke setting for the new experiment {experiment!r}"
    synthetic = experiment not in BUILT_DATA
    smoke = SMOKE[experiment]
    if any("{space}" in o for o in smoke):
        space = tmp_path / "space"
        run(compose_config(["graph.modalities=[image,text]", "trainer.max_steps=1", "eval.final=false"], str(space)))
        smoke = [o.format(space=space / "checkpoints" / "last.ckpt") for o in smoke]
    job = tmp_path / "job"
    run(compose_config([f"experiment={experiment}", "trainer.max_steps=4", *smoke], str(job), synthetic=synthetic))
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["run"]["group"] == experiment
    if not synthetic:
        assert "audio" in metrics["zero_shot"] and metrics["retrieval"]["audio->text"]["trained"] is False


def sweep_points(experiment: str) -> list[list[str]]:
    """Every job of an experiment's own sweep (``hydra.sweeper.params``), as the override lists of its jobs."""
    with initialize_config_module("bindspace.configs", version_base="1.3"):
        params = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True).hydra.sweeper.params
    parser = OverridesParser.create()
    axes = [
        [f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()]
        for o in parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()])
    ]
    return [list(point) for point in itertools.product(*axes)]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_sweep_point_of_an_experiment_is_a_valid_run(experiment):
    """Each job an experiment's multirun would launch composes and passes every config check before compute."""
    points = sweep_points(experiment)  # [[]]: an experiment without a sweep is one job
    synthetic = experiment not in BUILT_DATA
    space = [o.format(space="unused.ckpt") for o in SMOKE[experiment]] if experiment == "bind_new_modality" else []
    for point in points:
        plain = OmegaConf.to_container(
            compose_config([f"experiment={experiment}", *point, *space], "unused", synthetic=synthetic), resolve=True
        )
        check_train_config(plain)
        if space:  # its edges come from the checkpoint it binds into: the smoke run above builds them
            continue
        if plain["graph"].get("modalities") is None:
            plain["graph"]["modalities"] = data_modalities(plain["data"])
        build_run_spec(plain)


def test_two_run_multirun_produces_a_report(tmp_path):
    proc = multirun(
        tmp_path,
        "experiment=ablate_anchor",
        "trainer.max_steps=4",
        "anchor=image,text",
        "seed=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    anchors = [json.loads((tmp_path / str(i) / "metrics.json").read_text())["anchor"] for i in (0, 1)]
    assert anchors == [["image"], ["text"]]
    report = subprocess.run([*python_m("bindspace.report"), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert sorted(r["anchor"] for r in rows) == ["image", "text"]
    for r in rows:  # one seed each: the mean is that run's own value
        run = next(
            i for i in (0, 1) if json.loads((tmp_path / str(i) / "metrics.json").read_text())["anchor"] == [r["anchor"]]
        )
        summary = json.loads((tmp_path / str(run) / "metrics.json").read_text())["summary"]
        assert float(r["emergent/R@1_mean"]) == pytest.approx(summary["emergent/R@1"], abs=0.01)
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert "anchor" in (tmp_path / "report.md").read_text()
