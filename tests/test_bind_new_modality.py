"""``experiment=bind_new_modality`` (issue 15, part 4): a new modality trains into a frozen space.

The space is a real 2-step run with image, text and audio (image-anchored). Binding IMU to image alone
(ImageBind's recipe) through the real CLI must leave every old encoder bit-identical (weights, and
embeddings of the same held-out batch), train only IMU, serve the frozen side from the feature cache,
and keep flagging the pairs the space had trained as trained, IMU's others as emergent; relaunched,
it resumes from its own checkpoint.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, compose_config, python_m
from omegaconf import OmegaConf

from bindspace.data import build_datamodule
from bindspace.errors import ConfigError
from bindspace.inference import BindSpace
from bindspace.train import run

pytestmark = pytest.mark.slow
OLD = ("image", "text", "audio")


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space")
    run(compose_config([f"graph.modalities=[{','.join(OLD)}]", "trainer.max_steps=2", "eval.final=false"],
                       run_dir=str(folder)))  # fmt: skip
    return folder / "checkpoints" / "last.ckpt"


def test_binding_imu_leaves_the_space_bit_identical(space, tmp_path):
    proc = subprocess.run(
        [*python_m("bindspace.train"), *TINY_OVERRIDES, "experiment=bind_new_modality",
         f"init_from={space}", "new_modality=imu", "graph.anchors=[image]", "trainer.max_steps=4",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert f"new_modality: training imu against image (frozen, from {space}); text, audio frozen in no edge" in log
    assert "feature cache: " in log and " misses " in log  # the frozen image side came from the cache
    bound, before = weights(tmp_path / "checkpoints" / "last.ckpt"), weights(space)
    old = [k for k in before if k.startswith("model.") and k.split(".")[2] in OLD]
    assert old and all(torch.equal(bound[k], before[k]) for k in old)
    # The same held-out batch through both checkpoints: every old modality's embeddings bit-identical.
    cfg = compose_config([f"graph.modalities=[{','.join(OLD)},imu]"], run_dir=str(tmp_path / "unused"))
    a, b = BindSpace.from_checkpoint(space), BindSpace.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert b.modalities == ["image", "imu", "text", "audio"]
    data = OmegaConf.to_container(cfg.data, resolve=True)
    batch = next(iter(build_datamodule(data, b.model.configs, b.edges, seed=0).test_dataloader()))
    for m in OLD:
        assert torch.equal(a.encode(m, batch[m]), b.encode(m, batch[m])), m
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["trained_edges"] == ["image|imu"] and metrics["steps"] == 4
    assert metrics["inherited_edges"] == ["image|text", "image|audio"]
    flags = {pair: cell["trained"] for pair, cell in metrics["retrieval"].items()}
    assert flags["imu->image"] and flags["text->image"] and flags["audio->image"]
    assert not any(flags[f"imu->{m}"] or flags[f"{m}->imu"] for m in ("text", "audio"))  # emergent
    assert not flags["text->audio"]  # never trained, before or now
    assert sorted(map(tuple, b.edges)) == sorted([("image", "text"), ("image", "audio"), ("image", "imu")])

    # Relaunched with more steps: the plan comes from the run's own checkpoint (init_from is not read).
    relaunch = ["experiment=bind_new_modality", f"init_from={tmp_path / 'gone.ckpt'}", "new_modality=imu",
                "graph.anchors=[image]", "trainer.max_steps=6", "eval.final=false"]  # fmt: skip
    resumed = run(compose_config(relaunch, run_dir=str(tmp_path)))
    assert resumed["steps"] == 6 and resumed["inherited_edges"] == ["image|text", "image|audio"]
    after = weights(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.equal(after[k], before[k]) for k in old)


def test_a_new_encoder_for_a_modality_the_space_has(space, tmp_path):
    """new_modality=audio: its stored encoder is not loaded; it trains against image and text, both frozen."""
    metrics = run(compose_config(["experiment=bind_new_modality", f"init_from={space}", "new_modality=audio",
                                  "trainer.max_steps=2", "eval.final=false"], run_dir=str(tmp_path)))  # fmt: skip
    assert metrics["trained_edges"] == ["image|audio", "text|audio"] and metrics["inherited_edges"] == ["image|text"]
    bound, before = weights(tmp_path / "checkpoints" / "last.ckpt"), weights(space)
    assert all(torch.equal(bound[k], v) for k, v in before.items() if k.split(".")[2:3] in (["image"], ["text"]))
    assert not torch.equal(bound["model.trunks.audio.blocks.0.attn.qkv.weight"],
                           before["model.trunks.audio.blocks.0.attn.qkv.weight"])  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "experiment=bind_new_modality needs init_from and new_modality"),
        (["init_from={space}", "new_modality=imu", "graph.modalities=[image,text]"],
         "new_modality=imu: not among the modalities the data provides ['image', 'text']"),
        (["init_from={space}", "new_modality=imuu"],
         "new_modality=imuu (did you mean 'imu'?): not among the modalities"),
        (["init_from={space}", "new_modality=imu", "graph.edges=[[image,imu]]"], "leave graph.edges unset"),
        (["init_from={space}", "new_modality=imu", "graph.anchors=[depth]"],
         "graph.anchors: ['depth'] not among the frozen modalities of"),
    ],
)  # fmt: skip
def test_bad_bind_configs_are_one_line(space, tmp_path, overrides, message):
    cfg = compose_config(["experiment=bind_new_modality", *(o.format(space=space) for o in overrides)],
                         run_dir=str(tmp_path / "run"))  # fmt: skip
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
