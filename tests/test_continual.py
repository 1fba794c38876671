"""Distillation from the previous stage's frozen copy: the loss as written, exact resume, less drift."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config

from bindspace.curriculum import Curriculum
from bindspace.graph import build_edges
from bindspace.inference import BindSpace
from bindspace.modalities import get_modality
from bindspace.models.model import BindSpaceModel
from bindspace.train import run
from bindspace.training.continual import StageDistillation

STAR = build_edges(["image", "text", "audio"], ["image"])


def tiny_model() -> BindSpaceModel:
    cfg = get_modality("imu").default_config()
    cfg.trunk.width, cfg.trunk.depth, cfg.trunk.heads = 32, 1, 2
    cfg.input.length, cfg.input.patch = 20, 5
    return BindSpaceModel({"imu": cfg}, embed_dim=16)


def test_distillation_loss_is_the_mean_cosine_distance_to_a_frozen_copy():
    model = tiny_model()
    distill = StageDistillation(weight=2.5)
    distill.snapshot(model, ["imu"])
    x = torch.randn(5, 6, 20)
    with torch.no_grad():  # the student moves; the teacher must not
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    emb = model.encode("imu", x)
    loss = distill.loss({"imu": (x, emb)})
    teacher = distill.teacher.encode("imu", x).double()
    reference = 2.5 * (1 - torch.nn.functional.cosine_similarity(emb.double(), teacher, dim=-1)).mean()
    torch.testing.assert_close(loss.double(), reference, rtol=1e-6, atol=1e-9)
    loss.backward()
    assert all(p.grad is None for p in distill.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_teacher_round_trips_through_a_checkpoint_state():
    model, other = tiny_model(), tiny_model()
    distill = StageDistillation(weight=1.0)
    distill.snapshot(model, ["imu"])
    restored = StageDistillation(weight=1.0)
    restored.load_state_dict(distill.state_dict())
    restored.restore(other)  # a differently initialised model: the teacher weights come from the state
    x = torch.randn(3, 6, 20)
    torch.testing.assert_close(restored.teacher.encode("imu", x), distill.teacher.encode("imu", x))


def test_distilled_modalities_are_those_earlier_stages_trained_that_still_train():
    cfg = {"start": ["image", "text"], "order": ["audio"], "stage": {"steps": 5}, "continual": {"method": "distill"}}
    assert Curriculum.from_config(cfg, STAR, ["image"]).distilled(1) == ["image", "text"]
    frozen = {**cfg, "stage": {"steps": 5, "freeze": ["anchor"]}}
    assert Curriculum.from_config(frozen, STAR, ["image"]).distilled(1) == ["text"]
    assert Curriculum.from_config({**cfg, "continual": {"method": "none"}}, STAR, ["image"]).distilled(1) == []


# ---- in real runs ------------------------------------------------------------------------------------
STAGED = [
    "graph.modalities=[image,text,audio]",
    "curriculum=progressive",
    "curriculum.order=[audio]",
    "curriculum.stage.steps=3",
    "curriculum.stage.warmup_steps=1",
    "trainer.max_steps=8",
    "checkpoint.every_n_train_steps=1",
    "eval.final=false",
    "+trainer.limit_val_batches=0",
]


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def image_drift(run_dir) -> float:
    """How far the image embeddings moved during stage 1 (steps 4-8) from where stage 0 left them.

    Measured on the embeddings, not the weights: Adam moves every trainable weight by about lr per step
    whatever the loss, so what distillation holds still is the function, not the parameters.
    """
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before, after = (
        BindSpace.from_checkpoint(run_dir / "checkpoints" / f"step{s:06d}.ckpt").model.eval().encode("image", x)
        for s in (3, 8)
    )
    return float((1 - (before * after).sum(-1)).mean())


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("distill")
    run(
        compose_config([*STAGED, "curriculum.continual.method=distill", "curriculum.continual.weight=50"], str(run_dir))
    )
    return run_dir


@pytest.mark.slow
def test_distillation_holds_the_earlier_encoders_closer_to_where_they_were(tmp_path, distilled):
    run(compose_config(STAGED, str(tmp_path)))
    with torch.no_grad():
        assert image_drift(distilled) < 0.5 * image_drift(tmp_path)


@pytest.mark.slow
def test_a_resumed_stage_distils_towards_the_same_teacher(tmp_path, distilled):
    ckpt = distilled / "checkpoints" / "step000005.ckpt"  # inside stage 1, whose teacher is in the checkpoint
    overrides = [*STAGED, "curriculum.continual.method=distill", "curriculum.continual.weight=50", f"ckpt_path={ckpt}"]
    run(compose_config(overrides, str(tmp_path)))
    a, b = weights(distilled / "checkpoints" / "last.ckpt"), weights(tmp_path / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def curriculum_state(path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return next(v for k, v in ckpt["callbacks"].items() if "Curriculum" in k)


@pytest.mark.slow
def test_a_run_stopped_at_a_stage_boundary_relaunches_into_the_next_stage(tmp_path, distilled):
    """``trainer.max_steps=3``, where stage 0 ends, then the same command with ``trainer.max_steps=8``: bit for bit
    the uninterrupted run. The first launch recorded the stage's end but ended before starting the next stage,
    and the relaunch did not start it either: step 4 trained stage 0's edges (at its schedule's end, lr 0),
    stage 1 started at step 4 with a teacher copied there, and ``budget.edge_steps`` missed a step of its edge."""
    overrides = [*STAGED, "curriculum.continual.method=distill", "curriculum.continual.weight=50"]
    run(compose_config([*overrides, "trainer.max_steps=3"], str(tmp_path)))
    resumed = run(compose_config(overrides, str(tmp_path)))
    assert [(s["name"], s["start_step"], s["step"]) for s in resumed["stages"]] == [
        ("image-text", 0, 3),
        ("+audio", 3, 8),
    ]
    assert resumed["budget"]["edge_steps"] == {"image|text": 8, "image|audio": 5}
    a, b = weights(distilled / "checkpoints" / "last.ckpt"), weights(tmp_path / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    teachers = [curriculum_state(d / "checkpoints" / "last.ckpt")["distillation"] for d in (distilled, tmp_path)]
    assert teachers[0]["modalities"] == teachers[1]["modalities"] == ["image", "text"]
    assert all(torch.equal(v, teachers[1]["weights"][k]) for k, v in teachers[0]["weights"].items())
