"""bindspace-connect: two spaces joined through a shared modality, no paired data across them.

The end-to-end test builds two spaces whose true relation is known: one trained model (image-audio and
image-text edges) is split into space A (image, audio) and space B (image, text), and B's embeddings are
turned by a random rotation (every head's output), as two independent trainings would turn them. The
identity map then compares audio with text at chance; the connector, fitted on images only, must bring
back the alignment the model had before the split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config

from bindspace.connect import (
    FIT_BASE,
    ConnectedSpace,
    ConnectError,
    Connector,
    fit_connector,
    fit_map,
    main,
)
from bindspace.data.synthetic import DEFAULT_VERSION

pytestmark = pytest.mark.slow


def random_rotation(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


@pytest.mark.parametrize("method", ["procrustes", "lstsq", "contrastive"])
def test_fit_map_recovers_a_rotation_from_paired_rows(method):
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    rot = random_rotation(16, 1)
    xa, xb = x - x.mean(0), (x @ rot) - (x @ rot).mean(0)
    w = fit_map(xa, xb, method)
    if method == "contrastive":  # InfoNCE sees directions only: W is a rotation up to what cosines ignore
        assert torch.nn.functional.cosine_similarity(w.flatten(), rot.flatten(), dim=0) > 0.98
        cos = torch.nn.functional.normalize(xa @ w, dim=1) @ torch.nn.functional.normalize(xb, dim=1).T
        assert torch.equal(cos.argmax(1), torch.arange(len(x)))
    else:
        assert torch.allclose(w, rot, atol=1e-4 if method == "procrustes" else 2e-3)  # ridge shrinks by 1e-3


def test_fit_map_handles_unequal_widths_and_refuses_bad_input():
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    w = fit_map(x, x @ torch.randn(8, 12, generator=torch.Generator().manual_seed(1)), "procrustes")
    assert w.shape == (8, 12) and torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)  # orthonormal rows
    with pytest.raises(ValueError, match="paired"):
        fit_map(x, x[:50])
    with pytest.raises(ValueError, match="method"):
        fit_map(x, x, "umap")


def test_connector_file_round_trip_and_refusals(tmp_path):
    conn = fit_connector("image", torch.randn(20, 4), torch.randn(20, 4), {"audio": torch.randn(5, 4)}, None)
    conn.info = {"a_checkpoint": "a.ckpt"}
    conn.save(tmp_path / "c.safetensors")
    back = Connector.load(tmp_path / "c.safetensors")
    assert torch.equal(back.weight, conn.weight) and set(back.means_a) == {"image", "audio"}
    assert back.info == conn.info and back.method == "procrustes"
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ConnectError, match=r"bad\.safetensors"):
        Connector.load(tmp_path / "bad.safetensors")


_RUNS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def spaces(tmp_path_factory) -> tuple[Path, Path, Path, torch.Tensor]:
    """(full model, A = its image+audio, B = its image+text turned by a rotation, the rotation)."""
    from bindspace.train import run

    root = tmp_path_factory.mktemp("connect")
    run_dir = root / "run"
    overrides = ["graph.modalities=[image,audio,text]", "trainer.max_steps=120", "data.batch_size=16",
                 "checkpoint.every_n_train_steps=120", "trainer.val_check_interval=120",
                 "optim.warmup_steps=10"]  # fmt: skip
    run(compose_config(overrides, run_dir=str(run_dir)))
    full = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(full, map_location="cpu", weights_only=True)
    rot = random_rotation(ckpt["bindspace"]["embed_dim"], seed=7)
    a = split_checkpoint(ckpt, ["image", "audio"], root / "a.ckpt")
    b = split_checkpoint(ckpt, ["image", "text"], root / "b.ckpt", rotation=rot)
    return full, a, b, rot


def split_checkpoint(ckpt: dict, keep: list[str], out: Path, rotation: torch.Tensor | None = None) -> Path:
    """The encoders of ``keep`` as a checkpoint of their own, their outputs optionally rotated."""
    meta = dict(ckpt["bindspace"])
    meta["modalities"] = {m: v for m, v in meta["modalities"].items() if m in keep}
    meta["architectures"] = {m: v for m, v in (meta.get("architectures") or {}).items() if m in keep}
    meta["edges"] = [e for e in meta["edges"] if set(e) <= set(keep)]
    meta.pop("graph_edges", None)
    state = {}
    for key, value in ckpt["state_dict"].items():
        parts = key.split(".")
        if parts[0] != "model" or parts[2] not in keep:
            continue
        if rotation is not None and parts[1] == "heads" and parts[-2:] == ["proj", "weight"]:
            value = rotation.T @ value  # e -> e @ rotation: normalisation commutes with a rotation
        state[key] = value
    torch.save({"state_dict": state, "bindspace": meta}, out)
    return out


def test_connecting_two_spaces_recovers_the_alignment_the_identity_map_misses(spaces, tmp_path, capsys):
    full, a, b, rot = spaces
    out = tmp_path / "conn.safetensors"
    argv = [f"a={a}", f"b={b}", "shared=image", "fit=synthetic", "eval=synthetic", f"out={out}",
            "fit_size=400", "eval_size=300"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.with_suffix(".metrics.json").read_text())
    printed = capsys.readouterr().out
    assert "audio->text" in printed and "identity map" in printed
    connected = report["pairs"]["class"]["audio->text"]
    identity = report["identity"]["class"]["audio->text"]
    assert connected["kind"] == "connected"
    # The model before the split, scored on the same scenes with its own centring: what there is to recover.
    from bindspace.inference import BindSpace

    whole = BindSpace.from_checkpoint(full)
    space = ConnectedSpace.from_files(a, b, out)
    assert space.connector.weight.shape == rot.shape
    from bindspace.connect import evaluate_connection, synthetic_inputs
    from bindspace.data.datamodule import TEST_BASE

    modalities = ["image", "audio", "text"]
    fit = synthetic_inputs(whole.model.configs, modalities, FIT_BASE, 400, paired=False)  # the CLI's fit scenes
    means = {m: whole.embed(m, fit.values[m]).mean(0) for m in modalities}
    own = Connector("image", torch.eye(whole.embed_dim), means, means)  # each modality centred, no map
    data = synthetic_inputs(whole.model.configs, modalities, TEST_BASE, 300, paired=True)
    original = evaluate_connection(ConnectedSpace(whole, whole, own), data, baseline=False)
    before = original["pairs"]["class"]["audio->text"]["R@1"]
    chance = connected["chance"]["R@1"]
    assert before > chance + 5, f"the trained model's emergent audio->text ({before:.1f}%) is not above chance"
    # The connector brings the split spaces back to (about) the model's own emergent alignment ...
    assert connected["R@1"] == pytest.approx(before, abs=4.0)
    # ... which comparing the spaces as they are (the identity map) does not.
    assert identity["R@1"] < chance + 3 < connected["R@1"] - 3
    # Nothing scored was fitted on: fit scenes start at FIT_BASE, the scored ones at TEST_BASE.
    assert report["eval"]["rows"] == 300 and TEST_BASE + 300 < FIT_BASE
    assert report["fit_counts"] == {"image": 400, "audio": 400, "text": 400}
    assert report["synthetic_version"] == DEFAULT_VERSION  # the scenes' renderer (data.synthetic.version's default)
    assert report["training_data_differences"] == {}  # the split spaces have no run folder to compare with


def test_a_space_trained_on_another_renderer_is_named(spaces, tmp_path, capsys):
    """Fit and eval scenes drawn by another renderer than a space trained on are not its scenes: the command says
    which space, in a warning and in ``<out>.metrics.json``. A run folder written before the renderer had versions
    trained on version 1."""
    import shutil

    import yaml

    _, a, b, _ = spaces
    run = tmp_path / "run_a"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    stored = {"seed": 0, "data": {"name": "synthetic", "scene": {"noise": 1.0}}}  # no renderer version: before them
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(stored))
    moved = shutil.copy(a, run / "checkpoints" / "last.ckpt")

    def argv(version, out):
        return [f"a={moved}", f"b={b}", "shared=image", "fit=synthetic", "eval=synthetic", f"out={out}",
                "fit_size=60", "eval_size=40", f"synthetic_version={version}"]  # fmt: skip

    assert main(argv(2, tmp_path / "c2.safetensors")) == 0
    err = capsys.readouterr().err
    assert f"warning: space a={moved} was trained on data.synthetic.version=1, synthetic_version=2" in err
    report = json.loads((tmp_path / "c2.metrics.json").read_text())
    assert report["training_data_differences"] == {"a": "trained on data.synthetic.version=1, synthetic_version=2"}
    assert main(argv(1, tmp_path / "c1.safetensors")) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "c1.metrics.json").read_text())["training_data_differences"] == {}


def test_synthetic_scenes_come_from_the_renderer_asked_for():
    """``synthetic_version`` (data.synthetic.version of the spaces' runs) picks the renderer of fit and eval scenes:
    the same scene ids and labels, version 2's own noise."""
    from bindspace.connect import synthetic_inputs
    from bindspace.data.synthetic import SyntheticConfig, SyntheticScenes
    from bindspace.modalities import get_modality

    configs = {"image": get_modality("image").config_from_dict({"input": {"size": 32}})}
    one, two = (synthetic_inputs(configs, ["image"], 10, 4, paired=True, version=v) for v in (1, 2))
    assert one.ids == two.ids and torch.equal(one.labels, two.labels) and one.keys == two.keys
    assert not np.array_equal(one.values["image"], two.values["image"])
    ids = np.arange(10, 14, dtype=np.int64)
    expected = SyntheticScenes(SyntheticConfig(image_size=32, version=2), seed=0).render("image", ids)
    assert np.array_equal(two.values["image"], expected)


def test_connected_space_refuses_other_checkpoints_and_names_bad_keys(spaces, tmp_path, capsys):
    full, a, b, _ = spaces
    out = tmp_path / "conn.safetensors"
    assert main([f"a={a}", f"b={b}", "shared=image", "fit=synthetic", f"out={out}", "fit_size=50"]) == 0
    assert not out.with_suffix(".metrics.json").exists()  # no eval asked
    with pytest.raises(ConnectError, match="SHA-256"):
        ConnectedSpace.from_files(full, b, out)
    image_only = split_checkpoint(torch.load(full, weights_only=False), ["image"], tmp_path / "image.ckpt")
    for argv, needle in [
        ([f"a={a}", f"b={b}", "shared=depth", "fit=synthetic", f"out={out}"], "has no 'depth' encoder"),
        ([f"a={a}", f"b={b}", "shared=image", "fit=synthetic", f"out={out}", "metod=lstsq"], "did you mean 'method'"),
        ([f"a={a}", f"b={b}", "shared=image", "fit=nope.jsonl", f"out={out}"], "fit=nope.jsonl"),
        (
            [f"a={a}", f"b={b}", "shared=image", "fit=synthetic", f"out={out}", "synthetic_version=3"],
            "synthetic_version=3: must be one of [1, 2]",
        ),
        ([f"a={a}", f"b={b}", "shared=image", "fit=synthetic", f"out={tmp_path / 'c.pt'}"], ".safetensors"),
        ([f"a={a}", f"b={a}", "shared=image", "fit=synthetic", f"out={out}"], f"a={a}: nothing to connect"),
        ([f"a={b}", f"b={image_only}", "shared=image", "fit=synthetic", f"out={out}"], "no modality besides shared"),
    ]:
        before = out.read_bytes()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
        assert out.read_bytes() == before  # a failed run leaves the written connector alone
    assert main(["--help"]) == 0 and "examples:" in capsys.readouterr().out


def test_a_missing_checkpoint_is_named_by_its_own_key(tmp_path, capsys):
    # The command's keys are a= and b=: the error names which one (it has no ckpt_path= to fix).
    missing, present = tmp_path / "nope.ckpt", tmp_path / "present.ckpt"
    present.write_bytes(b"checked for existence before either space is loaded")
    out = tmp_path / "conn.safetensors"
    for a, b, needle in [(missing, present, f"a={missing}:"), (present, missing, f"b={missing}:")]:
        assert main([f"a={a}", f"b={b}", "shared=image", "fit=synthetic", f"out={out}"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and needle in err and "no checkpoint file" in err, err
        assert "ckpt_path" not in err
    assert not out.exists()


# The model=tiny preset at conftest's test sizes.
TINY_INPUTS = {
    "image": {"size": 32},
    "audio": {"clip_seconds": 0.5, "num_mel_bins": 32, "target_frames": 48, "patch_stride": 16},
    "text": {"context_length": 16},
}


def untrained_space(modalities: list[str], seed: int, out: Path) -> Path:
    """A checkpoint of an untrained tiny model, with optimiser state as a training checkpoint holds (what is
    checked here is which model a connector was fitted on, not what it learnt)."""
    from bindspace.inference import checkpoint_metadata
    from bindspace.modalities import get_modality
    from bindspace.models.model import BindSpaceModel

    torch.manual_seed(seed)
    configs = {m: get_modality(m).config_from_dict({"input": TINY_INPUTS[m]}, "tiny") for m in modalities}
    model = BindSpaceModel(configs, embed_dim=8)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    moments = {"state": {i: torch.randn(p.shape) for i, p in enumerate(model.parameters())}}
    torch.save({"state_dict": state, "bindspace": checkpoint_metadata(model, [modalities[:2]]),
                "optimizer_states": [moments]}, out)  # fmt: skip
    return out


def test_a_connector_knows_its_checkpoints_by_their_models_not_by_their_files(tmp_path, monkeypatch):
    """``from_files`` hashed both checkpoint files again (optimiser state included) and so refused a checkpoint
    that ``bindspace-eval eval.save_to_checkpoint=true`` had given its centring: the same model."""
    import bindspace.connect as connect_module
    from bindspace.connect import synthetic_inputs
    from bindspace.inference import BindSpace, save_mitigations

    a, b = (
        untrained_space(["image", "audio"], 0, tmp_path / "a.ckpt"),
        untrained_space(["image", "text"], 1, tmp_path / "b.ckpt"),
    )
    out = tmp_path / "conn.safetensors"
    assert main([f"a={a}", f"b={b}", "shared=image", "fit=synthetic", f"out={out}", "fit_size=40"]) == 0
    audio = synthetic_inputs(BindSpace.from_checkpoint(a).model.configs, ["audio"], 0, 4, paired=True).values["audio"]
    before = ConnectedSpace.from_files(a, b, out).embed("audio", audio)
    file_before = a.read_bytes()
    original = tmp_path / "a-as-fitted.ckpt"
    original.write_bytes(file_before)
    save_mitigations(a, centering={"image": torch.zeros(8), "audio": torch.zeros(8)})  # the file, not the model
    assert a.read_bytes() != file_before
    assert torch.equal(ConnectedSpace.from_files(a, b, out).embed("audio", audio), before)

    def no_file_hash(path):
        raise AssertionError(f"{path} read again to hash it")

    monkeypatch.setattr(connect_module, "sha256", no_file_hash)  # each checkpoint is read once, to load it
    ConnectedSpace.from_files(a, b, out)
    # Other weights, or the same weights under another input transform, are other spaces.
    other = untrained_space(["image", "audio"], 2, tmp_path / "other.ckpt")
    ckpt = torch.load(a, weights_only=True)
    ckpt["bindspace"]["modalities"]["image"]["input"]["mean"] = [0.5, 0.5, 0.5]
    torch.save(ckpt, tmp_path / "remeaned.ckpt")
    for wrong in (other, tmp_path / "remeaned.ckpt"):
        with pytest.raises(ConnectError, match=rf"{wrong}: not the checkpoint A that .* its model's SHA-256"):
            ConnectedSpace.from_files(wrong, b, out)
    # A connector written before it recorded the models names the files: they are hashed, as before.
    monkeypatch.undo()
    old = Connector.load(out)
    old.info = {k: v for k, v in old.info.items() if "space_sha256" not in k}
    old.save(tmp_path / "old.safetensors")
    assert ConnectedSpace.from_files(original, b, tmp_path / "old.safetensors").connector.info == old.info
    for wrong, side in ((a, "A"), (other, "A")):  # a rewritten (its centring) is another file
        with pytest.raises(ConnectError, match=rf"{wrong}: not the checkpoint {side} that .*; SHA-256 differs$"):
            ConnectedSpace.from_files(wrong, b, tmp_path / "old.safetensors")
