"""bindspace-search checks every embeddings file it reads (issue 13, case 7): one line naming the file, exit 2.

Index and query files are checked alike by ``bindspace.embed.load_embeddings``: a floating (N, D)
tensor, finite, rows of unit norm, ``ids`` a JSON list of N unique strings, a registered modality, and
every index file of one D. A row off the unit sphere (here x1000) would rank first for every query, so
it is refused unless ``renormalize=true``, which renormalises it with one warning line.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import python_m
from safetensors.torch import save_file

from bindspace.embed import FORMAT, EmbeddingFileError, load_embeddings, save_embeddings
from bindspace.search import main

N, D = 8, 16
IDS = [f"u{i}" for i in range(N)]
PREFIX = "bindspace-search: error: "


def unit_rows(n: int = N, d: int = D, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def write_raw(path: Path, embeddings: torch.Tensor, ids: str, modality: str = "image") -> Path:
    """A file with bindspace's metadata but any tensor and any ``ids`` text (save_embeddings refuses these)."""
    save_file({"embeddings": embeddings}, str(path), metadata={"format": FORMAT, "modality": modality, "ids": ids})
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A good index (``index``), a good query file (``query``), and the x1000 copy of the index (``scaled``)."""
    scaled = unit_rows().clone()
    scaled[3] *= 1000
    return {
        "index": save_embeddings(tmp_path / "index.safetensors", unit_rows(), IDS, "image"),
        "query": save_embeddings(tmp_path / "query.safetensors", unit_rows(5, seed=1), list("abcde"), "text"),
        "scaled": save_embeddings(tmp_path / "scaled.safetensors", scaled, IDS, "image"),
    }


def search(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(capsys, bad: Path, *args: str, says: str) -> str:
    """``bindspace-search args`` exits 2 with exactly one stderr line naming ``bad`` and saying ``says``."""
    code, out, err = search(capsys, *args)
    lines = err.splitlines()
    assert code == 2 and out == "", (code, out, err)
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    assert "Traceback" not in err and str(bad) in lines[0] and says in lines[0], lines[0]
    return lines[0]


def ranking(out: str) -> list[list[tuple[str, float]]]:
    return [[(h["id"], h["rank"]) for h in json.loads(line)["results"]] for line in out.splitlines()]


def test_good_files_still_search(files, capsys):
    code, out, err = search(capsys, f"index={files['index']}", f"query={files['query']}", "k=3", "format=json")
    assert code == 0 and err == "" and len(ranking(out)) == 5
    assert load_embeddings(files["index"]).renormalized == 0


def test_ids_not_a_list_is_refused(files, tmp_path, capsys):
    bad = write_raw(tmp_path / "bad.safetensors", unit_rows(), json.dumps({"ids": IDS}))
    assert_refused(capsys, bad, f"index={bad}", f"query={files['query']}", says="must be a JSON list of strings")


def test_ids_not_json_is_refused(files, tmp_path, capsys):
    bad = write_raw(tmp_path / "bad.safetensors", unit_rows(), '["u0", "u1"')
    assert_refused(capsys, bad, f"index={bad}", f"query={files['query']}", says="metadata 'ids' is not JSON")


def test_ids_of_wrong_length_are_refused(files, tmp_path, capsys):
    bad = write_raw(tmp_path / "bad.safetensors", unit_rows(), json.dumps(IDS[:-1]))
    assert_refused(capsys, bad, f"index={bad}", f"query={files['query']}", says=f"{N - 1} ids for {N} embeddings")


def test_ids_that_are_not_strings_are_refused(files, tmp_path, capsys):
    bad = write_raw(tmp_path / "bad.safetensors", unit_rows(), json.dumps([*IDS[:2], 7, *IDS[3:]]))
    assert_refused(capsys, bad, f"index={bad}", f"query={files['query']}", says="item 2 is 7 (int)")


def test_duplicate_ids_are_refused(files, tmp_path, capsys):
    bad = write_raw(tmp_path / "bad.safetensors", unit_rows(), json.dumps([*IDS[:5], "u1", *IDS[6:]]))
    assert_refused(capsys, bad, f"index={bad}", f"query={files['query']}", says="duplicate id 'u1' (rows 1 and 5)")


def test_a_one_dimensional_tensor_is_refused(files, tmp_path, capsys):
    bad = write_raw(tmp_path / "bad.safetensors", unit_rows(1)[0], json.dumps([str(i) for i in range(D)]))
    assert_refused(
        capsys, bad, f"index={bad}", f"query={files['query']}", says=f"2-D (N, D) with D > 0, got shape ({D},)"
    )


def test_an_int32_tensor_is_refused(files, tmp_path, capsys):
    bad = write_raw(tmp_path / "bad.safetensors", torch.eye(N, D, dtype=torch.int32), json.dumps(IDS))
    assert_refused(
        capsys, bad, f"index={bad}", f"query={files['query']}", says="floating tensor (float32), got torch.int32"
    )


def test_a_row_scaled_x1000_is_refused(files, capsys):
    line = assert_refused(
        capsys,
        files["scaled"],
        f"index={files['scaled']}",
        f"query={files['query']}",
        says="1 of 8 rows are not unit-norm",
    )
    assert "first id 'u3'" in line and "renormalize=true" in line


def test_renormalize_ranks_a_scaled_row_like_the_unit_norm_file(files, capsys):
    args = [f"query={files['query']}", f"k={N}", "format=json"]
    code, unit_out, err = search(capsys, f"index={files['index']}", *args)
    assert code == 0 and err == ""
    code, fixed_out, err = search(capsys, f"index={files['scaled']}", *args, "renormalize=true")
    assert code == 0 and ranking(fixed_out) == ranking(unit_out)
    # One warning line naming the file and counting the renormalised rows.
    (warning,) = err.splitlines()
    assert warning.startswith("bindspace-search: warning: ") and str(files["scaled"]) in warning
    assert "renormalised 1 of 8 rows" in warning and "'u3'" in warning
    for fixed, unit in zip(fixed_out.splitlines(), unit_out.splitlines(), strict=True):
        scores = [[h["score"] for h in json.loads(line)["results"]] for line in (fixed, unit)]
        assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_a_nan_row_is_refused_even_with_renormalize(files, tmp_path, capsys):
    rows = unit_rows()
    rows[5, 2] = float("nan")
    bad = save_embeddings(tmp_path / "nan.safetensors", rows, IDS, "image")
    for extra in ("renormalize=false", "renormalize=true"):
        line = assert_refused(
            capsys, bad, f"index={files['index']},{bad}", f"query={files['query']}", extra, says="NaN or inf"
        )
        assert "1 of 8 rows" in line and "first id 'u5'" in line


def test_index_files_of_different_sizes_are_refused(files, tmp_path, capsys):
    small = save_embeddings(tmp_path / "small.safetensors", unit_rows(3, 8), ["s0", "s1", "s2"], "audio")
    line = assert_refused(
        capsys, small, f"index={files['index']},{small}", f"query={files['query']}", says="different embedding sizes"
    )
    assert f"D={D}" in line and "D=8" in line


def test_an_unknown_modality_is_refused(files, tmp_path, capsys):
    bad = save_embeddings(tmp_path / "smell.safetensors", unit_rows(), IDS, "smell")
    assert_refused(capsys, bad, f"index={bad}", f"query={files['query']}", says="unknown modality 'smell'")


def test_a_query_file_gets_the_same_checks(files, tmp_path, capsys):
    rows = unit_rows(5, seed=1)
    rows[0] *= 1000
    scaled = save_embeddings(tmp_path / "scaled_query.safetensors", rows, list("abcde"), "text")
    assert_refused(capsys, scaled, f"index={files['index']}", f"query={scaled}", says="first id 'a'")
    code, out, err = search(capsys, f"index={files['index']}", f"query={scaled}", "format=json", "renormalize=true")
    assert code == 0 and len(ranking(out)) == 5 and len(err.splitlines()) == 1 and "renormalised 1 of 5 rows" in err
    int_query = write_raw(tmp_path / "int_query.safetensors", torch.ones(2, D, dtype=torch.int32), '["a", "b"]', "text")
    assert_refused(capsys, int_query, f"index={files['index']}", f"query={int_query}", says="torch.int32")
    wide = save_embeddings(tmp_path / "wide.safetensors", unit_rows(2, 2 * D), ["a", "b"], "text")
    assert_refused(capsys, wide, f"index={files['index']}", f"query={wide}", says=f"D={2 * D}, the index D={D}")


def test_the_loader_raises_one_config_error_for_library_callers(files):
    with pytest.raises(EmbeddingFileError, match="not unit-norm"):
        load_embeddings(files["scaled"])
    fixed = load_embeddings(files["scaled"], renormalize=True)
    assert fixed.renormalized == 1 and torch.allclose(fixed.embeddings, load_embeddings(files["index"]).embeddings)


def test_the_installed_cli_refuses_in_one_line_and_warns_in_one_line(files):
    """The same through ``python -m bindspace.search``, as a user runs it: no traceback, exit 2."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    cli = [*python_m("bindspace.search"), f"index={files['scaled']}", f"query={files['query']}"]
    refused = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and refused.stdout == "", refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(PREFIX) and str(files["scaled"]) in refused.stderr
    fixed = subprocess.run([*cli, "renormalize=true", "k=1"], capture_output=True, text=True, env=env, timeout=120)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stderr.splitlines() == [fixed.stderr.strip()] and "warning: " in fixed.stderr


class FakeModel:
    """Stands in for ``BindSpace.from_checkpoint`` in bindspace-embed: gives ``rows`` as the embeddings."""

    modalities, centering = ["text"], {}

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def embed(self, modality, inputs, batch_size=64, center=False, progress=False) -> torch.Tensor:
        return self.rows[: len(inputs)]


def fake_checkpoint(monkeypatch, model: FakeModel) -> None:
    """bindspace-embed reads any checkpoint as one holding ``model`` (and one weight, for its hash)."""
    from bindspace import inference

    monkeypatch.setattr(inference, "load_checkpoint", lambda path, key="ckpt_path": {"state_dict": WEIGHTS})
    monkeypatch.setattr(inference.BindSpace, "from_state", classmethod(lambda cls, *a, **k: model))


WEIGHTS = {"model.heads.text.weight": torch.ones(2, 2)}


@pytest.mark.parametrize("broken", [False, True], ids=["unit", "nan"])
def test_bindspace_embed_writes_only_files_search_accepts(tmp_path, capsys, monkeypatch, broken):
    from bindspace.embed import main as embed_main

    rows = unit_rows(3)
    if broken:
        rows[1] = float("nan")
    fake_checkpoint(monkeypatch, FakeModel(rows))
    (tmp_path / "lines.txt").write_text("a red sphere\na blue cube\na dog\n", encoding="utf-8")
    out = tmp_path / "out.safetensors"
    capsys.readouterr()
    args = ["ckpt_path=any.ckpt", "modality=text", f"inputs={tmp_path / 'lines.txt'}", f"out={out}"]
    code = embed_main(args)
    err = capsys.readouterr().err
    if broken:  # one line naming the input's id, and nothing written
        assert code == 2 and not out.exists() and len(err.splitlines()) == 1, err
        assert err.startswith("bindspace-embed: error: ") and "NaN or inf (first id '1'" in err
    else:
        assert code == 0 and load_embeddings(out).ids == ["0", "1", "2"]


@pytest.mark.parametrize("text", [b"", b"\n", b"  \n\t\n \r\n\n"], ids=["empty", "one-newline", "whitespace"])
def test_a_txt_file_without_text_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, monkeypatch, text):
    """Blank lines are skipped; a file of nothing else gave an empty embeddings file and exit 0."""
    from bindspace.embed import main as embed_main

    fake_checkpoint(monkeypatch, FakeModel(unit_rows(3)))
    captions = tmp_path / "blank.txt"
    captions.write_bytes(text)
    out = tmp_path / "out.safetensors"
    capsys.readouterr()
    code = embed_main(["ckpt_path=any.ckpt", "modality=text", f"inputs={captions}", f"out={out}"])
    err = capsys.readouterr().err
    assert (code, err) == (2, f"bindspace-embed: error: inputs: {captions} holds no text: every line is blank "
                              "(one text per line)\n")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt"]  # no output, no temporary


def test_a_relaunch_removes_the_temporary_a_killed_embed_left_and_no_live_one(tmp_path, caplog, monkeypatch):
    """A bindspace-embed SIGKILLed while writing leaves ``.<out>.<random>.tmp`` beside the output (as large as
    the output); the same command again removes it. A temporary another live process is writing (locked until
    its rename) and those of other outputs stay."""
    import fcntl

    from bindspace.embed import main as embed_main

    fake_checkpoint(monkeypatch, FakeModel(unit_rows(3)))
    (tmp_path / "lines.txt").write_text("a red sphere\na blue cube\na dog\n", encoding="utf-8")
    out = tmp_path / "out.safetensors"
    dead, live, other = (tmp_path / n for n in (".out.safetensors.k1ll3d_x.tmp", ".out.safetensors.wr1t1ng_.tmp",
                                                 ".more.safetensors.k1ll3d_x.tmp"))  # fmt: skip
    for tmp in (dead, live, other):
        tmp.write_bytes(b"half a file")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a live atomic_write holds until its rename
        args = ["ckpt_path=any.ckpt", "modality=text", f"inputs={tmp_path / 'lines.txt'}", f"out={out}"]
        assert embed_main(args) == 0
    assert load_embeddings(out).ids == ["0", "1", "2"]
    assert not dead.exists() and live.exists() and other.exists()
    assert [r.getMessage() for r in caplog.records if "temporary" in r.getMessage()] == [
        f"removing {dead}, a temporary file an interrupted bindspace-embed left behind"
    ]


def test_a_write_in_progress_keeps_its_temporary_from_a_cleaner(tmp_path):
    from bindspace.utils.io import atomic_write, remove_stale_temporaries

    out = tmp_path / "out.safetensors"
    seen = []

    def write(f):
        seen.append(remove_stale_temporaries(out))  # another process's relaunch, during this write
        f.write(b"whole")

    atomic_write(out, write)
    assert seen == [[]] and out.read_bytes() == b"whole" and not list(tmp_path.glob(".*.tmp"))


def test_without_flock_writes_stay_atomic_and_nothing_is_removed(tmp_path, monkeypatch):
    """A file system that offers no flock (Lustre without -o flock, some FUSE mounts: ENOLCK, EOPNOTSUPP):
    atomic_write goes ahead unlocked, and the cleaner, unable to tell a stale temporary from a live one,
    removes nothing."""
    import errno
    import fcntl

    from bindspace.utils import io

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "out.safetensors"
    io.atomic_write(out, lambda f: f.write(b"whole"))
    assert out.read_bytes() == b"whole" and not list(tmp_path.glob(".*.tmp"))
    left = tmp_path / ".out.safetensors.k1ll3d_x.tmp"
    left.write_bytes(b"half a file")
    assert io.remove_stale_temporaries(out) == [] and left.exists()


def test_text_ids_are_the_line_numbers_of_the_txt_file(tmp_path):
    """Blank lines are skipped, not renumbered around: id i is line i (0-based) of the file, lines split by
    universal newlines only (a U+2028 inside a caption is not a line break to an editor or to `sed -n`)."""
    from bindspace.embed import resolve_inputs

    (tmp_path / "lines.txt").write_bytes("a red sphere\r\n\n  \na blue\u2028cube\n".encode())
    assert resolve_inputs("text", str(tmp_path / "lines.txt")) == (["0", "3"], ["a red sphere", "a blue\u2028cube"])


@pytest.mark.parametrize(
    ("modality", "name"), [("text", "captions.txt"), ("text", "rows.jsonl"), ("audio", "rows.csv")]
)
def test_a_missing_inputs_file_is_named_as_missing(tmp_path, modality, name):
    # A .txt or manifest path that does not exist: say so (it said a text input must be a .txt file).
    from bindspace.embed import resolve_inputs
    from bindspace.errors import ConfigError

    missing = tmp_path / name
    with pytest.raises(ConfigError, match="no such file") as err:
        resolve_inputs(modality, str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
