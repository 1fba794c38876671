"""Every command that writes a file checks ``out`` before it reads anything (``bindspace.cli.check_output``).

``bindspace-embed ... out=<the checkpoint>`` replaced the trained checkpoint with an embeddings file, and
``out=<a folder>`` failed with a traceback after embedding everything. Here every input is junk that
would fail to load with a message of its own: a refusal that names ``out`` proves it came first.
"""

from __future__ import annotations

import os

import pytest

from bindspace.connect import main as connect_main
from bindspace.convert import main as convert_main
from bindspace.embed import main as embed_main

JUNK = b"not a checkpoint"


def refused(capsys, main, args: list[str], prog: str) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"{prog}: error: out="), err
    return err


@pytest.fixture
def files(tmp_path):
    """Junk inputs (a checkpoint, one named .safetensors, a .pth, a text file) and a folder named like an output."""
    paths = {name: tmp_path / name for name in ("last.ckpt", "a.safetensors", "src.pth", "caps.txt")}
    for path in paths.values():
        path.write_bytes(JUNK)
    (tmp_path / "link.safetensors").symlink_to(paths["a.safetensors"])
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "folder.ckpt").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("last.ckpt", "the embeddings file is a .safetensors file"),  # the checkpoint itself
        ("emb.npy", "the embeddings file is a .safetensors file"),
        ("folder.safetensors", "is a folder"),
        ("a.safetensors", "is ckpt_path="),  # a checkpoint named .safetensors
        ("link.safetensors", "is ckpt_path="),  # a symlink to it
    ],
)
def test_embed_refuses_an_out_it_must_not_write_before_loading_anything(files, capsys, out, says):
    ckpt = files / ("a.safetensors" if "ckpt_path" in says else "last.ckpt")
    args = [f"ckpt_path={ckpt}", "modality=text", f"inputs={files / 'caps.txt'}", f"out={files / out}"]
    assert says in refused(capsys, embed_main, args, "bindspace-embed")
    assert ckpt.read_bytes() == JUNK and (files / "folder.safetensors").is_dir()


def test_embed_refuses_a_hard_link_to_the_checkpoint(files, capsys):
    os.link(files / "a.safetensors", files / "hard.safetensors")
    args = [f"ckpt_path={files / 'a.safetensors'}", "modality=text", f"inputs={files / 'caps.txt'}"]
    assert "is ckpt_path=" in refused(
        capsys, embed_main, [*args, f"out={files / 'hard.safetensors'}"], "bindspace-embed"
    )


@pytest.mark.parametrize(("out", "says"), [("folder.safetensors", "is a folder"), ("a.safetensors", "is b=")])
def test_connect_refuses_a_folder_or_a_checkpoint_as_out(files, capsys, out, says):
    args = [f"a={files / 'last.ckpt'}", f"b={files / 'a.safetensors'}", "shared=image", "fit=synthetic"]
    assert says in refused(capsys, connect_main, [*args, f"out={files / out}"], "bindspace-connect")
    assert (files / "a.safetensors").read_bytes() == JUNK


@pytest.mark.parametrize(
    ("taken_by", "says"),
    [
        ("a folder", "is a folder; the metrics file is a .json file (move the folder away)"),
        ("eval", "is eval={metrics} itself; writing the metrics file would replace it"),  # a JSON Lines manifest
        ("b", "is b={metrics} itself; writing the metrics file would replace it"),  # a checkpoint named so
    ],
)
def test_connect_checks_the_metrics_file_eval_writes_before_loading_anything(files, capsys, taken_by, says):
    """``eval=`` writes ``<out>.metrics.json`` after fitting and scoring: a folder there failed with a traceback
    after all of it (the connector written), and an input there was replaced."""
    out, metrics = files / "conn.safetensors", files / "conn.metrics.json"
    if taken_by == "a folder":
        metrics.mkdir()
    else:
        metrics.write_bytes(JUNK)
    b = metrics if taken_by == "b" else files / "a.safetensors"
    evaluated = metrics if taken_by == "eval" else "synthetic"
    args = [f"a={files / 'last.ckpt'}", f"b={b}", "shared=image", "fit=synthetic", f"eval={evaluated}", f"out={out}"]
    err = refused(capsys, connect_main, args, "bindspace-connect")
    assert err == f"bindspace-connect: error: out={out} (eval= writes {metrics}): {says.format(metrics=metrics)}\n"
    assert not out.exists() and (metrics.is_dir() if taken_by == "a folder" else metrics.read_bytes() == JUNK)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["merge", "last.ckpt", "last.ckpt"], "is src="),
        (["imagebind", "src.pth", "out.pt"], "the checkpoint is a .ckpt file"),
        (["imagebind", "src.pth", "folder.ckpt"], "is a folder"),
        (["adapters", "last.ckpt", "out.ckpt"], "the adapter file is a .safetensors file"),
        (["apply-adapters", "last.ckpt", "a.safetensors", "last.ckpt"], "is base="),
    ],
)
def test_convert_refuses_an_out_it_must_not_write_before_reading_its_inputs(files, capsys, argv, says):
    args = [argv[0], *(files / a for a in argv[1:])]
    assert says in refused(capsys, convert_main, args, "bindspace-convert")
    assert (files / "last.ckpt").read_bytes() == JUNK
