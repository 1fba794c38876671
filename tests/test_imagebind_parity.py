"""ImageBind weights in bindspace (issue 15, parts 1-2): ``bindspace-convert imagebind`` against Meta's own model code.

Small ``ImageBindModel``s with random weights (its constructor takes every size; nothing is downloaded)
are saved, converted through the command's ``main``, loaded with ``BindSpace.from_checkpoint`` and
compared on ImageBind's own input tensors after L2 normalisation (bindspace keeps temperatures in the
loss). The ImageBind code comes from the ``imagebind`` test extra; without it these tests skip.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from bindspace.convert import main as convert_main
from bindspace.inference import BindSpace
from bindspace.interop.imagebind import MODALITIES, convert_state_dict
from bindspace.modalities import get_modality
from bindspace.modalities.text import CLIP_BPE
from bindspace.models.model import BindSpaceModel

EXTRA = "ImageBind's model code is not installed (test extra: pip install -e '.[imagebind]')"


def _imagebind_model():
    """``imagebind.models.imagebind_model`` without running the package ``__init__``.

    That ``__init__`` imports ``imagebind.data`` (pytorchvideo, decord, pkg_resources); the model
    modules need only einops, ftfy, regex, iopath and timm.
    """
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(EXTRA, allow_module_level=True)
    if "imagebind" not in sys.modules:
        package = importlib.util.module_from_spec(spec)  # its __init__ not run; find_spec still works
        sys.modules["imagebind"] = package
    return pytest.importorskip("imagebind.models.imagebind_model", reason=EXTRA)


ib_model = _imagebind_model()

# Every modality its own width, depth and head count, so that nothing is read from the wrong place.
SIZES = {
    "vision": (32, 2, 4),
    "text": (48, 2, 6),
    "audio": (40, 1, 5),
    "depth": (24, 2, 3),
    "thermal": (32, 1, 4),
    "imu": (16, 2, 2),
}
EMBED_DIM = 24
TOLERANCE = 1e-5


def tiny_imagebind(seed: int = 0) -> torch.nn.Module:
    kwargs = {"out_embed_dim": EMBED_DIM}
    for name, (width, depth, heads) in SIZES.items():
        kwargs |= {f"{name}_embed_dim": width, f"{name}_num_blocks": depth, f"{name}_num_heads": heads}
    torch.manual_seed(seed)
    model = ib_model.ImageBindModel(**kwargs).eval()
    with torch.no_grad():  # LayerNorms and biases start at 1 and 0: move every parameter off its init
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


HEADS = [f"{MODALITIES[name]}={heads}" for name, (_, _, heads) in SIZES.items()]


def imagebind_inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    """ImageBind's own input tensors: text as CLIP BPE ids (start 49406, end 49407, zero padding)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 49406, (batch, 77), generator=g)
    ids[:, 0] = 49406
    ids[0, 9], ids[0, 10:] = 49407, 0  # a short caption
    ids[1, 76] = 49407  # one that fills the context
    return {
        "vision": torch.randn(batch, 3, 224, 224, generator=g),
        "text": ids,
        "audio": torch.randn(batch, 3, 1, 128, 204, generator=g),  # three clips per sample
        "depth": torch.randn(batch, 1, 224, 224, generator=g),
        "thermal": torch.randn(batch, 1, 224, 224, generator=g),
        "imu": torch.randn(batch, 6, 2000, generator=g),
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagebind")
    model = tiny_imagebind()
    torch.save(model.state_dict(), folder / "imagebind.pth")
    assert convert_main(["imagebind", str(folder / "imagebind.pth"), str(folder / "out.ckpt"), "--heads", *HEADS]) == 0
    inputs = imagebind_inputs()
    with torch.no_grad():
        reference = {k: F.normalize(v, dim=-1) for k, v in model(inputs).items()}
    return BindSpace.from_checkpoint(folder / "out.ckpt"), inputs, reference, folder


@pytest.mark.parametrize("name", list(SIZES))
def test_converted_imagebind_encodes_as_imagebind(converted, name):
    bs, inputs, reference, _ = converted
    out = bs.encode(MODALITIES[name], inputs[name])
    assert out.shape == reference[name].shape
    print(f"{name}: max abs difference {(out - reference[name]).abs().max().item():.3g}")
    torch.testing.assert_close(out, reference[name], atol=TOLERANCE, rtol=0)


def test_the_conversion_reads_every_size_and_recipe_from_the_weights(converted):
    bs = converted[0]
    cfgs = bs.model.configs
    for name, (width, depth, heads) in SIZES.items():
        trunk = cfgs[MODALITIES[name]].trunk
        assert (trunk.width, trunk.depth, trunk.heads) == (width, depth, heads), name
        assert trunk.kv_bias == (name not in ("vision", "text")), name  # ImageBind's add_bias_kv
    assert bs.embed_dim == EMBED_DIM and cfgs["image"].input.frames == 2 and cfgs["image"].trunk.pre_norm
    assert (cfgs["text"].input.tokenizer, cfgs["text"].input.context_length) == (CLIP_BPE, 77)
    assert (cfgs["audio"].input.num_clips, cfgs["audio"].input.clip_sampler, cfgs["audio"].input.mono) == (
        3, "imagebind", "first"
    )  # fmt: skip
    assert cfgs["image"].input.resize == "pil"  # ImageBind's loaders (tests/test_imagebind_preprocessing.py)
    scales = {m: (round(c.logit_scale.init, 4), c.logit_scale.learnable) for m, c in cfgs.items()}
    assert scales["audio"] == (20.0, False) and scales["thermal"] == (10.0, False) and scales["text"][1]
    assert sorted(map(tuple, bs.edges)) == sorted(("image", m) for m in cfgs if m != "image")


def test_text_ids_with_a_mask_encode_as_the_bare_ids(converted):
    """The transform's ``{"input_ids", "attention_mask"}`` and ImageBind's bare ids give one embedding."""
    bs, inputs, reference, _ = converted
    ids = inputs["text"]
    mask = (torch.arange(77) <= ids.argmax(dim=1, keepdim=True)).long()
    out = bs.encode("text", {"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(out, reference["text"], atol=TOLERANCE, rtol=0)


CAPTIONS = [
    "A dog barks at the mailman.",
    "",
    "Ünïcödé café, 東京 &amp; 12,345.6 — “quoted” ﬁne",
    "It's raining; they'll stay in.   Tabs\tand\nnewlines",
    "word " * 100,  # cut to 77 ids, the end token kept
]


def test_converted_imagebind_encodes_strings_as_imagebind(converted):
    """Captions through bindspace's CLIP BPE and encoder equal ImageBind's tokenizer and model."""
    bs, *_ = converted
    assert bs.model.configs["text"].input.tokenizer == CLIP_BPE
    pre = pytest.importorskip("imagebind.models.multimodal_preprocessors", reason=EXTRA)
    tokenizer = pre.SimpleTokenizer(str(Path(pre.__file__).parent.parent / "bpe" / "bpe_simple_vocab_16e6.txt.gz"))
    ids = tokenizer(CAPTIONS)
    with torch.no_grad():
        reference = F.normalize(tiny_imagebind()({"text": ids})["text"], dim=-1)  # the converted weights (seed 0)
    out = bs.embed("text", CAPTIONS)
    print(f"text from strings: max abs difference {(out - reference).abs().max().item():.3g}")
    torch.testing.assert_close(out, reference, atol=TOLERANCE, rtol=0)


def _meta_imagebind_huge() -> torch.nn.Module:
    """``imagebind_huge()`` on the meta device (its drop-path schedule calls ``.item()``: computed on CPU)."""
    linspace = torch.linspace
    on_cpu = mock.patch.object(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    with torch.device("meta"), on_cpu:
        return ib_model.imagebind_huge()


def _huge(text_override: dict | None = None) -> BindSpaceModel:
    configs = {m: get_modality(m).default_config("huge") for m in MODALITIES.values()}
    if text_override:
        configs["text"] = get_modality("text").config_from_dict({"input": text_override}, preset="huge")
    with torch.device("meta"):
        return BindSpaceModel(configs, 1024)


def _count(module: torch.nn.Module, modality: str | None = None) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if modality is None or f".{modality}." in n)


def test_huge_preset_encoders_have_imagebind_huges_parameters():
    """Image, audio, depth, thermal and IMU of ``model=huge`` hold exactly ImageBind-huge's parameters."""
    ib, bs = _meta_imagebind_huge(), _huge()
    for name, m in MODALITIES.items():
        if name != "text":
            assert _count(bs, m) == _count(ib, name), name
    # And converting ImageBind-huge's weights gives the huge preset itself, key for key.
    plain, _, embed_dim = convert_state_dict(ib.state_dict())
    assert embed_dim == 1024
    for m, cfg in plain.items():
        if m != "text":
            assert get_modality(m).config_from_dict(cfg, preset="huge") == get_modality(m).default_config("huge"), m


def test_huge_with_imagebinds_text_input_has_imagebind_huges_parameter_count():
    """With CLIP BPE ids in ImageBind's 77 positions, the whole model's count is ImageBind-huge's.

    ImageBind counts one more parameter, text's learnable logit scale, which bindspace keeps in the loss.
    """
    ib, bs = _meta_imagebind_huge(), _huge({"tokenizer": CLIP_BPE, "context_length": 77})
    assert _count(bs) == _count(ib) - 1


def test_huge_preset_is_imagebind_huge_including_text():
    assert _count(_huge()) == _count(_meta_imagebind_huge()) - 1


# ---- bad input: one line naming the keys, exit 2 ----------------------------------------------------


def convert_error(capsys, src: Path, out: Path, *extra: str) -> str:
    assert convert_main(["imagebind", str(src), str(out), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bindspace-convert: error: "), lines
    assert not out.exists()
    return lines[0]


@pytest.fixture(scope="module")
def source_state():
    return tiny_imagebind().state_dict()


def test_a_state_dict_that_is_not_imagebinds(tmp_path, capsys):
    torch.save({"encoder.layer.weight": torch.randn(3, 3), "encoder.layer.bias": torch.randn(3)}, tmp_path / "x.pth")
    line = convert_error(capsys, tmp_path / "x.pth", tmp_path / "out.ckpt")
    assert "not an ImageBind state dict" in line and "encoder.layer.weight" in line


def test_a_missing_key_is_named(tmp_path, capsys, source_state):
    state = dict(source_state)
    del state["modality_trunks.audio.blocks.0.attn.bias_v"]
    torch.save(state, tmp_path / "x.pth")
    line = convert_error(capsys, tmp_path / "x.pth", tmp_path / "out.ckpt", "--heads", *HEADS)
    assert "missing" in line and "modality_trunks.audio.blocks.0.attn.bias_v" in line


def test_an_extra_key_is_named(tmp_path, capsys, source_state):
    state = {**source_state, "modality_heads.vision.3.weight": torch.randn(4, 4)}
    torch.save(state, tmp_path / "x.pth")
    line = convert_error(capsys, tmp_path / "x.pth", tmp_path / "out.ckpt", "--heads", *HEADS)
    assert "left over" in line and "modality_heads.vision.3.weight" in line


def test_a_shape_no_config_explains_is_named(tmp_path, capsys, source_state):
    state = dict(source_state)
    key = "modality_trunks.depth.blocks.1.mlp.fc2.weight"
    state[key] = torch.randn(24, 50)  # the first block's MLP says 96 hidden units
    torch.save(state, tmp_path / "x.pth")
    line = convert_error(capsys, tmp_path / "x.pth", tmp_path / "out.ckpt", "--heads", *HEADS)
    assert re.search(rf"{re.escape(key)} \(24, 50\) \(expected \(24, 96\)\)", line), line


def test_heads_that_do_not_divide_the_width_and_unknown_modalities(tmp_path, capsys, source_state):
    torch.save(source_state, tmp_path / "x.pth")
    line = convert_error(capsys, tmp_path / "x.pth", tmp_path / "out.ckpt")  # huge's 12 heads for a 40-wide audio
    assert "modality_trunks.audio.blocks.0.norm_1.weight: width 40 is not divisible by 12 heads" in line
    line = convert_error(capsys, tmp_path / "x.pth", tmp_path / "out.ckpt", "--heads", "viison=4")
    assert "(did you mean 'vision'?)" in line


def test_a_file_carrying_code_is_refused(tmp_path, capsys):
    torch.save({"modality_trunks.vision.x": torch.zeros(1), "code": Path("x")}, tmp_path / "x.pth")
    line = convert_error(capsys, tmp_path / "x.pth", tmp_path / "out.ckpt")
    assert "refused" in line or "not a state dict" in line


def test_bindspace_never_imports_imagebind():
    """ImageBind's code is CC-BY-NC: only tests import it, never the package."""
    package = Path(__file__).resolve().parent.parent / "bindspace"
    offenders = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if re.search(r"^\s*(import imagebind|from imagebind)", p.read_text(encoding="utf-8"), re.MULTILINE)
    ]
    assert offenders == []
