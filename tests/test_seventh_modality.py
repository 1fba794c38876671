"""Issue 14, part 1: a seventh modality from one file outside the package, with nothing else edited.

``tests/plugins/tactile_modality.py`` defines a tactile sensor array (input dataclass, a reader for its own
``.tact`` files, transform, tokenizer, trunk/head/temperature defaults, a ``tiny`` size preset and a
synthetic renderer). Here it is installed the way a separate pip package would be: a distribution on
``PYTHONPATH`` whose entry point of group ``bindspace.modalities`` names the module. Then, through the
real command lines: it trains with the built-ins (the graph following a manifest's columns, and on the
synthetic benchmark with ``graph.modalities=[image,text,tactile]``), appears in the retrieval matrix,
and works in ``bindspace-eval``, ``bindspace-embed`` and ``bindspace-search``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_OVERRIDES
from PIL import Image

from bindspace.data import data_modalities
from bindspace.data.synthetic import SyntheticConfig, SyntheticScenes
from bindspace.modalities import get_modality, list_modalities, unregister_modality

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).parent / "plugins"
BUILT_INS = ["image", "text", "audio", "depth", "thermal", "imu"]
QUICK = [
    *(o for o in TINY_OVERRIDES if not o.startswith(("trainer.max_steps", "checkpoint.", "data."))),
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "checkpoint.every_n_train_steps=3",
    "modalities.tactile.input.length=40",
]


@pytest.fixture(scope="module")
def tactile():
    """The plugin imported in this process (registered by its decorator), unregistered afterwards."""
    sys.path.insert(0, str(PLUGINS))
    try:
        module = importlib.import_module("tactile_modality")
        if "tactile" not in list_modalities():  # imported (and unregistered) by an earlier test run
            module = importlib.reload(module)
        yield module
    finally:
        unregister_modality("tactile")
        sys.path.remove(str(PLUGINS))


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Environment for subprocesses in which the plugin is an installed distribution with an entry point."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "bindspace_tactile-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bindspace-tactile\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bindspace.modalities]\ntactile = tactile_modality\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(PLUGINS), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def manifests(tactile, tmp_path_factory):
    """Image, caption and tactile files of synthetic scenes: 96 training rows and 32 labelled held-out rows."""
    root = tmp_path_factory.mktemp("tactile_data")
    scenes = SyntheticScenes(SyntheticConfig(image_size=32, num_classes=4), seed=3)
    names = scenes.class_names()
    out = {}
    for split, ids in (("train", np.arange(96)), ("val", np.arange(10_000, 10_032))):
        images = scenes.render("image", ids)
        captions = scenes.render("text", ids)
        touch = scenes.render("tactile", ids)
        labels = scenes.labels(ids)
        rows = []
        for k, scene in enumerate(ids.tolist()):
            image = root / f"{scene}.png"
            Image.fromarray((images[k].transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(image)
            tact = tactile.write_tact(root / f"{scene}.tact", touch[k])
            row = {"id": str(scene), "image": image.name, "text": captions[k], "tactile": tact.name}
            rows.append({**row, "label": names[labels[k]]})
        out[split] = root / f"{split}.jsonl"
        out[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def run(module: str, *args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_one_file_declares_everything(tactile):
    spec = get_modality("tactile")
    assert spec.suffixes == (".tact",) and spec.renders_synthetic
    tiny = spec.default_config("tiny")
    assert (tiny.trunk.width, tiny.trunk.depth, tiny.input.length) == (128, 2, 60)  # the preset
    assert spec.default_config().trunk.width == 256  # its defaults
    assert list_modalities()[:6] == BUILT_INS and list_modalities()[-1] == "tactile"
    # The synthetic benchmark offers every modality it can render, so the default graph includes the plugin.
    assert data_modalities({"name": "synthetic"}) == [*BUILT_INS, "tactile"]


@pytest.mark.parametrize("anchor", ["image", "tactile"])
def test_a_step_renders_the_plugin_once_with_the_same_values(tactile, anchor):
    """``render_step`` renders the plugin once for all the edge batches of a step that hold it (as anchor, in
    every edge): the batches equal those rendered edge by edge, as for the built-ins (test_synthetic_render)."""
    import torch
    from test_synthetic_render import _flat

    from bindspace.data.datamodule import SyntheticDataModule, render_step
    from bindspace.data.steps import StepBatches

    names = ["image", "text", "audio", "tactile"]
    configs = {m: get_modality(m).config_from_dict({}, preset="tiny") for m in names}
    edges = [(anchor, m) for m in names if m != anchor] + ([("text", "tactile")] if anchor == "image" else [])
    sources = SyntheticDataModule(configs, edges, batch_size=6, seed=3, pool_size=40).edge_sources()
    for rank in (0, 1):
        merged = StepBatches(sources, [edges, edges[-2:]], 6, 3, rank, 2, fetch=render_step)
        alone = StepBatches(sources, [edges, edges[-2:]], 6, 3, rank, 2)
        for stage in (0, 1):
            merged.set_stage(stage), alone.set_stage(stage)
            for step in (0, 3, 7):
                got, want = _flat(merged[step]), _flat(alone[step])
                assert got.keys() == want.keys() and any("tactile" in k for k in want)
                for k, v in want.items():
                    assert v.dtype == got[k].dtype and torch.equal(v, got[k]), k


def test_hydra_sees_the_plugin_with_its_preset(plugin_env):
    proc = run("bindspace.train", "model=tiny", "--cfg", "job", "--package", "modalities.tactile", env=plugin_env)
    assert "width: 128" in proc.stdout and "length: 60" in proc.stdout and "init: 10.0" in proc.stdout


def test_trains_evaluates_embeds_and_searches(manifests, plugin_env, tmp_path):
    run_dir = tmp_path / "run"
    data = ["data=manifest", f"data.train={manifests['train']}", f"data.val={manifests['val']}", "data.batch_size=8"]
    # No graph.modalities: the graph follows the manifest's columns (image, text, tactile).
    run("bindspace.train", *QUICK, *data, f"hydra.run.dir={run_dir}", env=plugin_env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["edges"] == [["image", "text"], ["image", "tactile"]]
    pairs = {"image->tactile", "tactile->image", "text->tactile", "tactile->text"}
    assert pairs <= set(metrics["retrieval"]) and metrics["retrieval"]["text->tactile"]["trained"] is False
    assert metrics["trained_edges"] == ["image|text", "image|tactile"]
    assert "tactile" in (run_dir / "retrieval.txt").read_text()

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    eval_dir = tmp_path / "eval"
    run("bindspace.eval", f"ckpt_path={ckpt}", *data[:3], f"hydra.run.dir={eval_dir}", env=plugin_env)
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    # (bindspace-eval scores half of the shared val ids and fits its corrections on the other half.)
    assert pairs <= set(evaluated["retrieval"]) and 0 <= evaluated["retrieval"]["tactile->image"]["R@1"] <= 100

    touch = manifests["val"].parent
    index = tmp_path / "tactile.safetensors"
    run("bindspace.embed", f"ckpt_path={ckpt}", "modality=tactile", f"inputs={touch}/1000*.tact", f"out={index}",
        env=plugin_env)  # fmt: skip
    query = touch / "10005.tact"
    found = run("bindspace.search", f"index={index}", f"query={query}", f"ckpt_path={ckpt}", "k=3", "format=json",
                env=plugin_env)  # fmt: skip
    result = json.loads(found.stdout.splitlines()[0])
    assert result["results"][0]["id"] == "10005.tact" and result["results"][0]["modality"] == "tactile"
    by_text = run("bindspace.search", f"index={index}", "query=a red sphere", f"ckpt_path={ckpt}", "k=2",
                  env=plugin_env)  # fmt: skip
    assert "tactile" in by_text.stdout


def test_trains_on_the_synthetic_benchmark(plugin_env, tmp_path):
    run_dir = tmp_path / "run"
    synthetic = ["data.batch_size=8", "data.val_size=16", "data.test_size=24", "graph.modalities=[image,text,tactile]"]
    run("bindspace.train", *QUICK, *synthetic, f"hydra.run.dir={run_dir}", env=plugin_env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trained_edges"] == ["image|text", "image|tactile"]
    assert "tactile->text" in metrics["retrieval"] and "tactile" in metrics["zero_shot"]


def test_anchor_group_offers_the_plugin(plugin_env, tmp_path):
    """``anchor=tactile`` as for a built-in (README: "anchor: any modality"), here under a curriculum."""
    run_dir = tmp_path / "run"
    synthetic = ["data.batch_size=8", "data.val_size=16", "data.test_size=24", "graph.modalities=[image,text,tactile]"]
    staged = ["curriculum=progressive", "curriculum.stage.steps=3", "curriculum.stage.warmup_steps=1"]
    run("bindspace.train", *QUICK, *synthetic, *staged, "anchor=tactile", f"hydra.run.dir={run_dir}", env=plugin_env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["edges"] == [["tactile", "image"], ["tactile", "text"]]
    assert [s["edges"] for s in metrics["stages"]] == [["tactile|image"], ["tactile|image", "tactile|text"]]
    both = run("bindspace.train", "anchor=[image,tactile]", "--cfg", "job", "--package", "graph", env=plugin_env)
    assert "image: true" in both.stdout and "tactile: true" in both.stdout


def test_a_bad_tactile_file_is_one_line_naming_it(plugin_env, manifests, tmp_path):
    bad = tmp_path / "bad.tact"
    bad.write_text("a,b\n1,2\n")  # two columns, not sixteen
    proc = subprocess.run(
        [sys.executable, "-m", "bindspace.embed", "ckpt_path=unused.ckpt", "modality=tactile", f"inputs={bad}",
         f"out={tmp_path / 'x.safetensors'}"],
        capture_output=True, text=True, env=plugin_env,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
