"""``bindspace-embed``, ``-search``, ``-eval`` and ``-train init_from=`` on a converted ImageBind checkpoint (issue 15).

A tiny ``ImageBindModel`` with random weights (tests/test_imagebind_parity.py) is converted with
``bindspace-convert imagebind``; every command's output is then checked against ImageBind's own model:
embed's vectors against ImageBind's loaders and model on the same files, search's ranking against the
inner products of those vectors, and eval's retrieval matrix against R@1 recomputed from ImageBind's
embeddings of the same held-out batches, and training's seeded weights and temperatures against the
converted ones. The ImageBind code comes from the ``imagebind`` test extra;
without it these tests skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import python_m
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image
from test_imagebind_parity import HEADS, TOLERANCE, tiny_imagebind
from test_imagebind_preprocessing import ib_data, imagebind_audio

from bindspace.convert import main as convert_main
from bindspace.data import build_datamodule
from bindspace.embed import load_embeddings
from bindspace.embed import main as embed_main
from bindspace.inference import BindSpace
from bindspace.interop.imagebind import MODALITIES
from bindspace.search import main as search_main

pytestmark = pytest.mark.slow
CAPTIONS = ["a dog barks at the mailman", "rain on a tin roof", "a red sphere on a blue cube"]
EVAL = ["data.val_size=8", "data.test_size=12", "eval.plots=false"]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """(converted checkpoint, the ImageBind model it came from, folder of input files)."""
    folder = tmp_path_factory.mktemp("imagebind_clis")
    model = tiny_imagebind()
    torch.save(model.state_dict(), folder / "imagebind.pth")
    ckpt = folder / "converted.ckpt"
    assert convert_main(["imagebind", str(folder / "imagebind.pth"), str(ckpt), "--heads", *HEADS]) == 0
    # Where the conversion ran is recorded; where ImageBind was trained is not known, and not made up.
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["converted_from"]["environment"]["torch"]["version"] == str(torch.__version__)
    assert "environment" not in stored["bindspace"] and BindSpace.from_checkpoint(ckpt).environment is None
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    for i, (h, w) in enumerate([(240, 320), (300, 224), (64, 80)]):  # landscape, portrait, upscaled
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
    (folder / "audio").mkdir()
    for i, seconds in enumerate([3.0, 9.5]):  # shorter and longer than ImageBind's three clips' span
        wave = 0.2 * rng.standard_normal(int(seconds * 16000))
        sf.write(folder / "audio" / f"{i}.wav", wave, 16000, subtype="PCM_16")
    (folder / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    return ckpt, model, folder


def imagebind_tokenizer():
    """ImageBind's SimpleTokenizer over the vocabulary its package ships (its own lookup needs pkg_resources)."""
    bpe = Path(sys.modules[ib_data.SimpleTokenizer.__module__].__file__)
    return ib_data.SimpleTokenizer(str(bpe.parent.parent / "bpe" / "bpe_simple_vocab_16e6.txt.gz"))


@torch.no_grad()
def imagebind_embeddings(model, name: str, x) -> torch.Tensor:
    return F.normalize(model({name: x})[name], dim=-1)


def test_embed_writes_imagebinds_embeddings(space, tmp_path):
    ckpt, model, folder = space
    proc = subprocess.run(
        [*python_m("bindspace.embed"), f"ckpt_path={ckpt}", "modality=image",
         f"inputs={folder / 'images'}", f"out={tmp_path / 'image.safetensors'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for modality, inputs in (("audio", folder / "audio"), ("text", folder / "captions.txt")):
        assert embed_main([f"ckpt_path={ckpt}", f"modality={modality}", f"inputs={inputs}",
                           f"out={tmp_path / modality}.safetensors"]) == 0  # fmt: skip
    files = {m: load_embeddings(tmp_path / f"{m}.safetensors") for m in ("image", "audio", "text")}
    images = [str(folder / "images" / f"{i}.png") for i in range(3)]
    audio = [folder / "audio" / f"{i}.wav" for i in range(2)]
    tokenizer = imagebind_tokenizer()
    # ImageBind centres each clip in place, in the file's waveform: a copy keeps its later clips clean.
    clips = torch.stack([imagebind_audio(p, overlap_fix=True) for p in audio])
    reference = {
        "image": imagebind_embeddings(model, "vision", ib_data.load_and_transform_vision_data(images, "cpu")),
        "audio": imagebind_embeddings(model, "audio", clips),
        "text": imagebind_embeddings(model, "text", tokenizer(CAPTIONS)),
    }
    bs = BindSpace.from_checkpoint(ckpt)
    inputs = {"image": images, "audio": [str(p) for p in audio], "text": CAPTIONS}
    for m, written in files.items():
        assert written.modality == m and written.ids == [Path(str(x)).name if m != "text" else str(i)
                                                         for i, x in enumerate(inputs[m])]  # fmt: skip
        torch.testing.assert_close(written.embeddings, bs.embed(m, inputs[m]), atol=0, rtol=0)
        difference = (written.embeddings - reference[m]).abs().max().item()
        print(f"{m}: bindspace-embed vs ImageBind, max abs difference {difference:.3g}")
        torch.testing.assert_close(written.embeddings, reference[m], atol=TOLERANCE, rtol=0)


def test_search_ranks_by_the_inner_product_of_imagebinds_embeddings(space, tmp_path, capsys):
    ckpt, model, folder = space
    for modality, inputs in (("image", folder / "images"), ("audio", folder / "audio")):
        assert embed_main([f"ckpt_path={ckpt}", f"modality={modality}", f"inputs={inputs}",
                           f"out={tmp_path / modality}.safetensors"]) == 0  # fmt: skip
    capsys.readouterr()
    index = f"index={tmp_path / 'image.safetensors'},{tmp_path / 'audio.safetensors'}"
    assert search_main([index, f"query={CAPTIONS[2]}", f"ckpt_path={ckpt}", "format=json", "k=5"]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokenizer = imagebind_tokenizer()
    query = imagebind_embeddings(model, "text", tokenizer([CAPTIONS[2]]))[0]
    rows = [load_embeddings(tmp_path / f"{m}.safetensors") for m in ("image", "audio")]
    expected = sorted(
        ((float(e @ query), f.modality, i) for f in rows for e, i in zip(f.embeddings, f.ids)), reverse=True
    )
    assert [(r["modality"], r["id"]) for r in found["results"]] == [(m, i) for _, m, i in expected]
    assert np.allclose([r["score"] for r in found["results"]], [s for s, _, _ in expected], atol=1e-5)


def test_eval_scores_what_imagebind_embeds(space, tmp_path):
    ckpt, model, _ = space
    proc = subprocess.run(
        [*python_m("bindspace.eval"), f"ckpt_path={ckpt}", *EVAL, f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    names = list(MODALITIES.values())
    assert metrics["gallery_size"] == 12 and metrics["fit_split"]["shared_ids"] == 0
    assert set(metrics["retrieval"]) == {f"{q}->{g}" for q in names for g in names if q != g}
    for pair, cell in metrics["retrieval"].items():
        assert cell["trained"] == ("image" in pair.split("->")), pair  # ImageBind's star
    # The same held-out batches through ImageBind's own model: instance R@1 of every ordered pair.
    with initialize_config_module("bindspace.configs", version_base="1.3"):
        data = OmegaConf.to_container(compose("eval", overrides=EVAL).data, resolve=True)
    bs = BindSpace.from_checkpoint(ckpt)
    datamodule = build_datamodule(data, bs.model.configs, bs.edges, seed=0)
    embedded = {m: [] for m in names}
    for batch in datamodule.test_dataloader():
        for ib, m in MODALITIES.items():
            x = batch[m]["input_ids"] if m == "text" else batch[m]  # ImageBind takes bare ids
            embedded[m].append(imagebind_embeddings(model, ib, x))
    embedded = {m: torch.cat(v) for m, v in embedded.items()}
    for q in names:
        for g in names:
            if q != g:
                scores = embedded[q] @ embedded[g].T  # (N, N); sample i's match is gallery item i
                hits = (scores.argmax(dim=1) == torch.arange(len(scores))).float().mean().item() * 100
                assert metrics["retrieval"][f"{q}->{g}"]["R@1"] == pytest.approx(hits, abs=1e-6), f"{q}->{g}"


def test_training_starts_from_the_converted_checkpoint(space, tmp_path):
    """``init_from`` a converted ImageBind: model=huge resized to the converted widths, image's trunk frozen."""
    ckpt, model, _ = space
    sizes = [f"modalities.{m}.trunk.{k}={v}" for m, (w, d, h) in (("image", (32, 2, 4)), ("text", (48, 2, 6)),
             ("audio", (40, 1, 5))) for k, v in (("width", w), ("depth", d), ("heads", h))]  # fmt: skip
    proc = subprocess.run(
        [*python_m("bindspace.train"), "logger=none", "model=huge", "model.embed_dim=24", *sizes,
         "graph.modalities=[image,text,audio]", "modalities.image.trunk.freeze=true", f"init_from={ckpt}",
         "trainer.max_steps=1", "data.batch_size=4", "data.val_size=8", "data.test_size=8", "eval.final=false",
         "+trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "train.log").read_text()
    assert f"init_from: {ckpt}: loaded image, text, audio (temperatures: image|text, image|audio)" in log
    assert f"init_from: depth, thermal, imu in {ckpt} but not in this config: ignored" in log
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    converted = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    frozen = [k for k in converted if k.startswith(("model.preprocessors.image.", "model.trunks.image."))]
    assert frozen and all(torch.equal(state[k], converted[k]) for k in frozen)
    # ImageBind's fixed audio temperature (its postprocessor's log scale) is the edge's, not the preset's.
    audio_scale = model.modality_postprocessors.audio[1].log_logit_scale
    assert torch.equal(state["loss.logit_scales.image|audio.log_scale"], audio_scale.reshape(()))


def test_converted_imagebind_huge_fits_model_huge_for_init_from():
    """The README's ``bindspace-train model=huge init_from=imagebind_huge.ckpt``, checked on the meta device.

    ``imagebind_huge()``'s state dict is converted and compared with ``model=huge``'s model as init_from
    compares them (architecture keys, every tensor's name and shape): nothing is downloaded.
    """
    from test_imagebind_parity import _meta_imagebind_huge

    from bindspace.config import build_run_spec
    from bindspace.inference import checkpoint_metadata
    from bindspace.interop.imagebind import build_configs, convert_state_dict
    from bindspace.models.model import BindSpaceModel
    from bindspace.training.checkpoints import InitSource, fit_problems

    plain, state, embed_dim = convert_state_dict(_meta_imagebind_huge().state_dict())
    six = f"graph.modalities=[{','.join(MODALITIES.values())}]"
    with initialize_config_module("bindspace.configs", version_base="1.3"):
        cfg = compose("train", overrides=["model=huge", six])
    keys = ["modalities", "model", "graph", "optim", "curriculum", "loss", "speed", "trainer"]  # no run paths
    spec = build_run_spec(OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True))
    with torch.device("meta"):
        converted = BindSpaceModel(build_configs(plain), embed_dim)
        huge = BindSpaceModel(spec.modalities, spec.embed_dim)
    source = InitSource("imagebind_huge.ckpt", {f"model.{k}": v for k, v in state.items()},
                        checkpoint_metadata(converted), list(converted.modalities))  # fmt: skip
    assert sorted(huge.modalities) == sorted(source.modalities)
    assert fit_problems(source, huge, huge.modalities) == []
    # And a head count the weights cannot show is caught by name.
    spec.modalities["audio"].trunk.heads = 16
    assert fit_problems(source, huge, ["audio"]) == [
        "modalities.audio.trunk.heads: 12 in the checkpoint, 16 in this config"
    ]
