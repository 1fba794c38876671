"""BindSpace.from_checkpoint on a freshly trained checkpoint: same embeddings as training, any input form,
mitigations stored in the checkpoint, and the embed -> export -> search round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from PIL import Image

from bindspace import BindSpace, combine
from bindspace.data.datamodule import TEST_BASE, scene_config
from bindspace.data.synthetic import SyntheticScenes
from bindspace.evaluation.gap import center, fit_bridge, fit_centering
from bindspace.evaluation.retrieval import retrieval_matrix
from bindspace.inference import CheckpointError, save_mitigations

pytestmark = pytest.mark.slow

_RUNS: dict[str, Path] = {}


def trained_run_dir(tmp_path_factory) -> Path:
    """One real 4-step training run per test session, shared by the inference and eval tests."""
    if "run" not in _RUNS:
        from bindspace.train import run

        run_dir = tmp_path_factory.mktemp("trained")
        run(compose_config(["trainer.max_steps=4"], run_dir=str(run_dir)))
        _RUNS["run"] = run_dir
    return _RUNS["run"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    return trained_run_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def bs(trained) -> BindSpace:
    return BindSpace.from_checkpoint(trained / "checkpoints" / "last.ckpt")


def scenes_for(bs: BindSpace) -> SyntheticScenes:
    data = OmegaConf.to_container(compose_config().data, resolve=True)
    return SyntheticScenes(scene_config(bs.model.configs, data.get("scene"), data.get("synthetic")), seed=0)


def test_from_checkpoint_reproduces_the_training_time_retrieval(trained, bs):
    on_disk = json.loads((trained / "metrics.json").read_text())
    ids = np.arange(on_disk["gallery_size"]) + TEST_BASE
    scenes = scenes_for(bs)
    embs = {m: bs.embed(m, scenes.render(m, ids), batch_size=16) for m in bs.modalities}
    assert all(e.shape == (len(ids), bs.embed_dim) for e in embs.values())
    instance, _ = retrieval_matrix(embs, torch.as_tensor(ids), bs.edges)
    assert set(instance) == set(on_disk["retrieval"])
    for pair, cell in on_disk["retrieval"].items():
        for metric in ("R@1", "R@5", "R@10", "mAP", "trained"):
            assert instance[pair][metric] == pytest.approx(cell[metric], abs=1e-6), (pair, metric)


def test_embed_takes_paths_decoded_arrays_and_strings_batch_size_invariant(bs, tmp_path):
    images = (scenes_for(bs).render("image", np.arange(5)) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    from_files = bs.embed("image", paths, batch_size=2)
    from_arrays = bs.embed("image", list(images), batch_size=64)
    assert from_files.shape == (5, bs.embed_dim)
    assert torch.allclose(from_files, from_arrays, atol=1e-5)
    assert torch.allclose(from_files.norm(dim=1), torch.ones(5), atol=1e-5)
    one = bs.embed("text", "a red sphere")
    assert one.shape == (1, bs.embed_dim)
    assert torch.allclose(bs.embed("text", ["x", "a red sphere"])[1], one[0], atol=1e-5)
    with pytest.raises(KeyError, match="no 'smell' encoder"):
        bs.embed("smell", ["x"])


def test_combine_is_the_normalised_weighted_sum():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(combine([a, b]), torch.tensor([1.0, 1.0]) / 2**0.5)
    assert torch.allclose(combine([a, b], [3.0, 4.0]), torch.tensor([0.6, 0.8]))
    with pytest.raises(ValueError, match="share one shape"):
        combine([a, torch.ones(3)])


def test_mitigations_round_trip_through_the_checkpoint(bs, trained, tmp_path):
    ckpt = tmp_path / "last.ckpt"
    shutil.copy(trained / "checkpoints" / "last.ckpt", ckpt)
    captions = scenes_for(bs).render("text", np.arange(20))
    reference = {
        "text": bs.embed("text", captions),
        "image": bs.embed("image", scenes_for(bs).render("image", np.arange(20))),
    }
    means = fit_centering(reference)
    bridge = fit_bridge(reference["image"], reference["text"], "procrustes", ("image", "text"))
    save_mitigations(ckpt, means, [bridge])
    loaded = BindSpace.from_checkpoint(ckpt)
    assert set(loaded.centering) == {"text", "image"}
    assert torch.allclose(loaded.centering["text"], means["text"])
    assert torch.allclose(
        loaded.embed("text", captions, center=True), center(reference["text"], means["text"]), atol=1e-5
    )
    assert torch.allclose(loaded.bridge(reference["image"], "image", "text"), bridge(reference["image"]), atol=1e-5)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4 and "optimizer_states" in state  # still a resumable Lightning checkpoint
    with pytest.raises(KeyError, match="no centring stats for 'audio'"):
        loaded.embed("audio", scenes_for(bs).render("audio", np.arange(2)), center=True)


def test_checkpoint_errors_name_the_file(trained, tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint file at .*missing\.ckpt"):
        BindSpace.from_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt: not a readable torch checkpoint"):
        BindSpace.from_checkpoint(garbage)
    state = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del state["bindspace"]
    legacy = tmp_path / "legacy.ckpt"
    torch.save(state, legacy)
    with pytest.raises(CheckpointError, match=r"no 'bindspace' metadata.*modalities="):
        BindSpace.from_checkpoint(legacy)
    from bindspace.config import build_run_spec

    spec = build_run_spec(OmegaConf.to_container(compose_config(), resolve=True))
    rebuilt = BindSpace.from_checkpoint(legacy, modalities=spec.modalities, embed_dim=spec.embed_dim)
    assert torch.allclose(
        rebuilt.embed("text", "a cube"),
        BindSpace.from_checkpoint(trained / "checkpoints" / "last.ckpt").embed("text", "a cube"),
    )


def write_scene_files(bs: BindSpace, root: Path, n: int) -> None:
    scenes, ids = scenes_for(bs), np.arange(n) + 7
    (root / "img").mkdir()
    (root / "aud").mkdir()
    images = (scenes.render("image", ids) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    for i, (img, wav) in enumerate(zip(images, scenes.render("audio", ids), strict=True)):
        Image.fromarray(img).save(root / "img" / f"scene{i}.png")
        sf.write(root / "aud" / f"scene{i}.wav", wav, bs.model.configs["audio"].input.sample_rate)


def test_embed_export_search_round_trip(bs, trained, tmp_path, capsys):
    from bindspace.embed import load_embeddings
    from bindspace.embed import main as embed_main
    from bindspace.search import main as search_main

    ckpt = str(trained / "checkpoints" / "last.ckpt")
    write_scene_files(bs, tmp_path, 6)
    img, aud = tmp_path / "img.safetensors", tmp_path / "aud.safetensors"
    assert (
        embed_main([f"ckpt_path={ckpt}", "modality=image", f"inputs={tmp_path / 'img'}", f"out={img}", "batch_size=4"])
        == 0
    )
    assert embed_main([f"ckpt_path={ckpt}", "modality=audio", f"inputs={tmp_path / 'aud'}/*.wav", f"out={aud}"]) == 0
    exported = load_embeddings(img)
    assert exported.modality == "image" and exported.ids == [f"scene{i}.png" for i in range(6)]
    assert torch.allclose(exported.embeddings, bs.embed("image", sorted((tmp_path / "img").glob("*.png"))), atol=1e-5)

    capsys.readouterr()
    query = tmp_path / "img" / "scene3.png"
    args = [f"index={img},{aud}", f"query={query}", "query_modality=image", f"ckpt_path={ckpt}", "k=3", "format=json"]
    assert search_main(args) == 0
    (result,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    best = result["results"][0]
    assert (best["id"], best["modality"]) == ("scene3.png", "image") and best["score"] == pytest.approx(1.0, abs=1e-4)
    # A whole exported file as queries: every audio clip finds itself first in the mixed index.
    assert search_main([f"index={img},{aud}", f"query={aud}", "k=1", "format=json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["results"][0]["id"], r["results"][0]["modality"]) for r in results] == [
        (f"scene{i}.wav", "audio") for i in range(6)
    ]
    # A missing checkpoint is one line and exit code 2.
    assert search_main([f"index={img}", "query=a red sphere", f"ckpt_path={tmp_path / 'nope.ckpt'}"]) == 2
    assert "no checkpoint file" in capsys.readouterr().err


def test_search_refuses_centred_and_uncentred_embeddings_mixed_without_mitigation_center(bs, trained, tmp_path, capsys):
    from bindspace.embed import main as embed_main
    from bindspace.search import main as search_main

    ckpt = tmp_path / "last.ckpt"
    shutil.copy(trained / "checkpoints" / "last.ckpt", ckpt)
    scenes = scenes_for(bs)
    reference = {m: bs.embed(m, scenes.render(m, np.arange(20))) for m in ("image", "audio")}
    save_mitigations(ckpt, fit_centering(reference), [])
    write_scene_files(bs, tmp_path, 4)
    plain, centred, audio = (tmp_path / f"{n}.safetensors" for n in ("plain", "centred", "audio"))
    common = [f"ckpt_path={ckpt}", "modality=image", f"inputs={tmp_path / 'img'}"]
    assert embed_main([*common, f"out={plain}"]) == 0
    assert embed_main([*common, f"out={centred}", "center=true"]) == 0
    audio_args = [f"ckpt_path={ckpt}", "modality=audio", f"inputs={tmp_path / 'aud'}/*.wav", f"out={audio}"]
    assert embed_main([*audio_args, "center=true"]) == 0
    capsys.readouterr()

    # A raw query against centred rows (it used to score itself 0.75, not 1): one line, exit 2.
    assert search_main([f"index={centred}", f"query={plain}", "k=1", "format=json"]) == 2
    err = capsys.readouterr().err
    assert f"{centred}" in err and "mitigation=center" in err and len(err.strip().splitlines()) == 1
    # All centred alike is comparable; mitigation=center compares the mix, each file found first by itself.
    assert search_main([f"index={centred},{audio}", f"query={centred}", "k=1", "format=json"]) == 0
    mixed = [f"index={centred},{audio}", f"query={plain}", f"ckpt_path={ckpt}", "k=1", "format=json"]
    capsys.readouterr()
    assert search_main([*mixed, "mitigation=center"]) == 0
    results = [json.loads(line)["results"][0] for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in results] == [f"scene{i}.png" for i in range(4)]
    assert all(r["score"] == pytest.approx(1.0, abs=1e-4) for r in results)
