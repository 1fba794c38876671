"""``init_from=PATH`` (issue 15): a fresh run seeded with a bindspace checkpoint's weights, through the real CLI.

The seed is a real 2-step run with image, text, audio and IMU; the seeded runs configure image, audio and
depth: two modalities loaded, one fresh, two of the checkpoint's ignored. Weights only: the step, the
optimizer and the schedule start over; a checkpoint that does not fit stops before any compute; a
relaunch of a seeded run stopped by SIGTERM resumes from its own ``last.ckpt`` and never reads
``init_from`` again (in-process: the signal handling is the CLI's, tests/test_reliability.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, compose_config, python_m

from bindspace.errors import ConfigError
from bindspace.train import run
from bindspace.training.module import AlignmentModule
from bindspace.training.reliability import Preempted

pytestmark = pytest.mark.slow

PREFIX = "bindspace-train: config error: "
QUIET = ["eval.final=false", "+trainer.limit_val_batches=0"]
SEEDED = ["graph.modalities=[image,audio,depth]", *QUIET]
PLANTED_SCALE = 7.0  # the seed's image|audio temperature, planted: nothing else starts there


def cli(run_dir: Path, *overrides: str) -> subprocess.Popen:
    base = [o for o in TINY_OVERRIDES if not o.startswith(("trainer.max_steps", "checkpoint."))]
    return subprocess.Popen(
        [*python_m("bindspace.train"), *base, *SEEDED, *overrides, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Path:
    """A bindspace checkpoint of a real 2-step run (image, text, audio, IMU), with a planted temperature."""
    folder = tmp_path_factory.mktemp("seed")
    run(compose_config(["graph.modalities=[image,text,audio,imu]", "trainer.max_steps=2", "eval.final=false"],
                       run_dir=str(folder / "run")))  # fmt: skip
    ckpt = torch.load(folder / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    ckpt["state_dict"]["loss.logit_scales.image|audio.log_scale"] = torch.tensor(math.log(PLANTED_SCALE))
    torch.save(ckpt, folder / "seed.ckpt")
    return folder / "seed.ckpt"


def test_init_from_seeds_weights_only_under_ddp(seed, tmp_path):
    """2 gloo ranks; image's trunk frozen so that loaded weights can be compared after training."""
    code, out = finish(cli(tmp_path, f"init_from={seed}", "modalities.image.trunk.freeze=true", "trainer=ddp",
                           "trainer.devices=2", "data.batch_size=4", "trainer.max_steps=3",
                           "checkpoint.every_n_train_steps=3"))  # fmt: skip
    assert code == 0, out[-3000:]
    assert f"init_from: {seed}: loaded image, audio (temperatures: image|audio)" in out
    assert f"init_from: depth not in {seed}: start fresh" in out
    assert f"init_from: text, imu in {seed} but not in this config: ignored" in out
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3  # counted from 0, not from the seed's 2
    adam_steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {3.0}  # a fresh optimizer: three updates, none carried over
    state, seeded = ckpt["state_dict"], weights(seed)
    frozen = [k for k in seeded if k.startswith(("model.preprocessors.image.", "model.trunks.image."))]
    assert frozen and all(torch.equal(state[k], seeded[k]) for k in frozen)
    assert not torch.equal(state["model.heads.audio.proj.weight"], seeded["model.heads.audio.proj.weight"])  # trained
    assert not any(".text." in k or ".imu." in k for k in state)
    # The audio temperature is fixed (ImageBind's 20 in the preset): the seed's planted value was loaded.
    assert math.isclose(float(state["loss.logit_scales.image|audio.log_scale"].exp()), PLANTED_SCALE, rel_tol=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["world_size"] == 2


def test_a_checkpoint_that_does_not_fit_stops_before_any_compute(seed, tmp_path):
    code, out = finish(cli(tmp_path / "run", f"init_from={seed}", "modalities.audio.trunk.heads=2",
                           "modalities.image.trunk.width=64", "trainer.max_steps=2"))  # fmt: skip
    assert code == 2, out[-3000:]
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"{PREFIX}init_from: {seed} does not fit this config: "), line
    assert "modalities.image.trunk.width: 128 in the checkpoint, 64 in this config" in line
    assert "modalities.audio.trunk.heads: 4 in the checkpoint, 2 in this config" in line
    assert "Traceback" not in out and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["init_from=/nonexistent/x.ckpt"], "init_from: no checkpoint file at /nonexistent/x.ckpt"),
        (["init_from={seed}", "ckpt_path={seed}"], "ckpt_path and init_from are both set"),
        (["init_from={seed}", "graph.modalities=[depth,thermal]", "anchor=depth"], "none of this config's modalities"),
        (["init_from={code}"], "it carries Python code or objects, refused"),
        (["init_from={bare}"], "no encoder weights (model.<preprocessors|trunks|heads>.<modality>.*)"),
        (["init_from={nan}"], "does not fit this config: model.heads.audio.proj.weight holds NaN or inf"),
        (["new_modality=imu"], "new_modality=imu binds a modality into the space of init_from=<checkpoint>, not set"),
    ],
)
def test_bad_init_from_is_one_line(seed, tmp_path, overrides, message):
    class Shell:  # a file carrying code: unpickling it would run print
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"state_dict": {}, "x": Shell()}, tmp_path / "code.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "bare.ckpt")
    nan = torch.load(seed, map_location="cpu", weights_only=True)
    nan["state_dict"]["model.heads.audio.proj.weight"][0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.ckpt")
    paths = {"seed": seed, "code": tmp_path / "code.ckpt", "bare": tmp_path / "bare.ckpt", "nan": tmp_path / "nan.ckpt"}
    given = [o.format(**paths) for o in overrides]
    graph = [] if any(o.startswith("graph.") for o in given) else SEEDED[:1]
    cfg = compose_config([*graph, *QUIET, *given], run_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=None) as err:
        run(cfg)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_seeded_run_resumes_from_its_own_checkpoint(seed, tmp_path, monkeypatch):
    """Stopped by SIGTERM after step 5 and relaunched with init_from now unreadable: the relaunch resumes,
    and ends where an uninterrupted seeded run ends."""
    mine = tmp_path / "mine.ckpt"
    shutil.copy(seed, mine)
    steps = ["trainer.max_steps=10", "checkpoint.every_n_train_steps=2"]
    run(compose_config([*SEEDED, f"init_from={seed}", *steps], run_dir=str(tmp_path / "uninterrupted")))

    original = AlignmentModule.on_train_batch_start

    def signalled(self, batch, batch_idx):
        original(self, batch, batch_idx)
        if self.global_step == 5:  # as a scheduler would: the step finishes, is saved, and the run stops
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patched:
        patched.setattr(AlignmentModule, "on_train_batch_start", signalled)
        with pytest.raises(Preempted):
            run(compose_config([*SEEDED, f"init_from={mine}", *steps], run_dir=str(tmp_path / "run")))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6
    mine.write_bytes(b"not a checkpoint any more")  # re-seeding would now fail
    metrics = run(compose_config([*SEEDED, f"init_from={mine}", *steps], run_dir=str(tmp_path / "run")))
    assert metrics["steps"] == 10
    resumed, uninterrupted = (weights(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("run", "uninterrupted"))
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    ("planted", "key"),
    [
        ({"edges": 5}, "edges"),
        ({"edges": [["image"]]}, "edges"),
        ({"edges": [[1, 2]]}, "edges"),
        ({"modalities": ["image"]}, "modalities"),
        ({"modalities": {"image": "os.system"}}, "modalities.image"),
    ],
)
@pytest.mark.parametrize("bind", [False, True])
def test_malformed_metadata_of_init_from_is_one_line_naming_the_key(seed, tmp_path, planted, key, bind):
    # The checkpoint's model description is data someone else wrote: anything but a mapping of modality
    # configs and a list of modality pairs is a ConfigError naming the file and the key, never a traceback
    # (bind_new_modality reads the trained pairs from it).
    ckpt = torch.load(seed, map_location="cpu", weights_only=True)
    ckpt["bindspace"].update(planted)
    torch.save(ckpt, tmp_path / "planted.ckpt")
    overrides = ["experiment=bind_new_modality", "new_modality=depth"] if bind else SEEDED[:1]
    cfg = compose_config([*overrides, *QUIET, f"init_from={tmp_path / 'planted.ckpt'}"], run_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert f"{tmp_path / 'planted.ckpt'}: bindspace metadata {key}" in str(err.value), str(err.value)
    assert "\n" not in str(err.value)
