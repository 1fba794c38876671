"""Every metrics.json records the environment its numbers came from, and bindspace-report says when the
runs it compares came from different ones (the same commit printed R@1 7.5 on one machine, 7.9 on another)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import bindspace
from bindspace.report import main as report_main
from bindspace.utils.environment import describe_environment, environment_differences, flatten, summary

REPO = Path(bindspace.__file__).resolve().parent.parent


def test_the_environment_is_plain_json_naming_the_code_cpu_and_libraries():
    env = describe_environment()
    assert json.loads(json.dumps(env)) == env
    flat = flatten(env)
    for key in ("bindspace.version", "cpu.model", "cpu.torch", "torch.version", "torch.threads", "numpy.version",
                "packages.lightning", "packages.timm", "python"):  # fmt: skip
        assert flat[key], key
    import numpy as np
    import torch

    assert flat["torch.version"] == torch.__version__ and flat["numpy.version"] == np.__version__
    assert flat["torch.threads"] == torch.get_num_threads()


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="bindspace is not imported from a git checkout")
def test_the_commit_is_the_checkouts_head():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    code = describe_environment()["bindspace"]
    assert code["commit"] == head.stdout.strip() and isinstance(code["dirty"], bool)
    assert code["commit"][:7] in summary(describe_environment())


def test_differences_name_each_field_and_the_runs_holding_each_value():
    a = describe_environment()
    b = json.loads(json.dumps(a))
    b["cpu"]["model"], b["platform"], b["cpu"]["count"] = "Intel Xeon", "another kernel", 64
    c = json.loads(json.dumps(a))
    c["packages"]["numpy"] = "1.26.4"
    diffs = environment_differences([a, None, b, c])
    # the OS kernel and the core count are recorded but are not reasons for other floats
    assert set(diffs) == {"cpu.model", "packages.numpy"}
    assert diffs["cpu.model"] == {a["cpu"]["model"]: [0, 3], "Intel Xeon": [2]}
    assert diffs["packages.numpy"] == {a["packages"]["numpy"]: [0, 2], "1.26.4": [3]}
    assert environment_differences([a, json.loads(json.dumps(a)), None]) == {}


def _job(root: Path, num: int, anchor: str, seed: int, env: dict | None) -> None:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(json.dumps({"seed": seed, "graph": {"anchors": {anchor: True}}}))
    (job / ".hydra" / "overrides.yaml").write_text(json.dumps([f"anchor={anchor}", f"seed={seed}"]))
    pairs = {"image->text": 10.0 + seed, "text->image": 12.0 + seed}
    retrieval = {k: {"R@1": v, "R@5": v + 5, "R@10": v + 9, "mAP": v / 2, "trained": True} for k, v in pairs.items()}
    metrics = {"retrieval": retrieval, "gallery_size": 100, "anchor": [anchor], "steps": 10}
    if env is not None:
        metrics["environment"] = env
    (job / "metrics.json").write_text(json.dumps(metrics))


def test_report_says_which_jobs_ran_elsewhere(tmp_path, capsys):
    here = describe_environment()
    there = json.loads(json.dumps(here))
    there["cpu"]["model"], there["torch"]["mkl"] = "Intel Xeon", "2023.1"
    root = tmp_path / "multirun"
    _job(root, 0, "image", 0, here)
    _job(root, 1, "image", 1, here)
    _job(root, 2, "text", 0, there)
    _job(root, 3, "text", 1, None)  # written before bindspace recorded its environment
    assert report_main([str(root)]) == 0
    err = capsys.readouterr().err
    assert "different environments (cpu.model, torch.mkl)" in err
    md = (root / "report.md").read_text()
    section = md.split("## Environment\n\n")[1].split("\n## ")[0]
    assert "**The jobs differ in their environment.**" in section
    assert f"- `cpu.model`: {here['cpu']['model']} (2 jobs: `0`, `1`); Intel Xeon (1 job: `2`)" in section
    assert "No environment recorded by 1 job: `3`" in section


def test_report_of_one_environment_names_it_and_warns_of_nothing(tmp_path, capsys):
    root = tmp_path / "multirun"
    _job(root, 0, "image", 0, describe_environment())
    _job(root, 1, "image", 1, describe_environment())
    assert report_main([str(root)]) == 0
    assert "environment" not in capsys.readouterr().err
    md = (root / "report.md").read_text()
    assert f"ran in the same one: {summary(describe_environment())}." in md


def test_a_checkpoint_carries_the_environment_it_was_trained_in(tmp_path_factory, tmp_path, caplog):
    import shutil

    import torch
    from test_inference import trained_run_dir

    from bindspace.inference import BindSpace, load_checkpoint, save_mitigations

    trained = trained_run_dir(tmp_path_factory)
    ckpt = load_checkpoint(trained / "checkpoints" / "last.ckpt")
    assert ckpt["bindspace"]["environment"] == describe_environment()
    assert BindSpace.from_checkpoint(trained / "checkpoints" / "last.ckpt").environment == describe_environment()
    # kept when bindspace-eval stores mitigations in the file
    path = shutil.copy(trained / "checkpoints" / "last.ckpt", tmp_path / "kept.ckpt")
    save_mitigations(path, {"image": torch.zeros(ckpt["bindspace"]["embed_dim"])})
    assert load_checkpoint(path)["bindspace"]["environment"] == describe_environment()
    # metadata is untrusted: an environment that is not plain data is dropped with a warning, the weights load
    for junk in (torch.zeros(3), {"cpu": {"model": torch.zeros(2)}}, {"a": float("nan")}, "x" * 10, {"k": "x" * 70000}):
        forged = {**ckpt, "bindspace": {**ckpt["bindspace"], "environment": junk}}
        torch.save(forged, tmp_path / "forged.ckpt")
        with caplog.at_level("WARNING", logger="bindspace.inference"):
            caplog.clear()
            space = BindSpace.from_checkpoint(tmp_path / "forged.ckpt")
        assert space.environment is None and space.embed_dim == ckpt["bindspace"]["embed_dim"]
        assert "forged.ckpt: bindspace metadata environment is not plain data" in caplog.text


def test_earlier_launches_are_read_as_untrusted_data_and_capped():
    from bindspace.utils.environment import MAX_EARLIER, earlier_environments

    here = describe_environment()
    meta = {
        "environment": here,
        "earlier_environments": [
            {"until_step": 3, "environment": {"cpu": {"model": "Intel Xeon"}}},
            {"until_step": 5, "environment": "not an environment"},  # dropped
            {"until_step": True, "environment": here},  # dropped: a step is an int
            "junk",  # dropped
        ],
    }
    assert earlier_environments(meta, 9) == [
        {"until_step": 3, "environment": {"cpu": {"model": "Intel Xeon"}}},
        {"until_step": 9, "environment": here},
    ]
    assert earlier_environments({}, 9) == []  # a checkpoint from before environments were recorded
    many = {"environment": here, "earlier_environments": [{"until_step": i, "environment": here} for i in range(40)]}
    kept = earlier_environments(many, 50)
    assert len(kept) == MAX_EARLIER and kept[-1]["until_step"] == 50 and kept[0]["until_step"] == 40 - MAX_EARLIER + 1


@pytest.mark.slow
def test_a_relaunch_elsewhere_records_where_each_launch_trained(tmp_path, monkeypatch, capsys):
    """A requeued job resumed on another node type: the checkpoint and metrics.json keep the first launch's
    environment (with the step it trained up to) beside the last one's, and bindspace-report says so."""
    from conftest import TINY_OVERRIDES, run_main_in_process

    import bindspace.training.module as module_code
    import bindspace.training.pipeline as pipeline_code
    from bindspace.inference import load_checkpoint
    from bindspace.train import main as train_main

    root = tmp_path / "multirun"
    run = root / "0"
    launch = [o for o in TINY_OVERRIDES if not o.startswith("trainer.max_steps")] + [f"hydra.run.dir={run}"]
    first = run_main_in_process(train_main, "bindspace-train", *launch, "trainer.max_steps=4")
    assert first.returncode == 0, first.stderr[-3000:]
    here = describe_environment()
    there = json.loads(json.dumps(here))
    there["cpu"]["model"], there["torch"]["mkl"] = "Intel Xeon", "2023.1"
    for code in (module_code, pipeline_code):
        monkeypatch.setattr(code, "describe_environment", lambda: there)
    second = run_main_in_process(train_main, "bindspace-train", *launch, "trainer.max_steps=8")
    assert second.returncode == 0, second.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["environment"] == there
    assert metrics["earlier_environments"] == [{"until_step": 4, "environment": here}]
    meta = load_checkpoint(run / "checkpoints" / "last.ckpt")["bindspace"]
    assert meta["environment"] == there and meta["earlier_environments"] == metrics["earlier_environments"]
    capsys.readouterr()
    assert report_main([str(root)]) == 0
    assert "1 job(s) trained in more than one environment" in capsys.readouterr().err
    section = (root / "report.md").read_text().split("## Environment\n\n")[1].split("\n## ")[0]
    assert "**Trained in more than one environment** (relaunched elsewhere, or with other code): 1 job: `0`" in section
