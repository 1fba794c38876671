"""``bindspace-data check`` and ``bindspace-data shard``: reports, planted bad files, exit codes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest_files import modality_of, write_corrupt_files
from test_manifest import paired_rows, write_rows

from bindspace.data.cli import main


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def clean(tmp_path) -> Path:
    rows = paired_rows(tmp_path, 4, ["image", "text", "audio"])
    rows += paired_rows(tmp_path, 2, ["text", "imu"], "t", labels=None)
    return write_rows(tmp_path / "train.csv", rows)


def test_check_reports_counts_and_exits_0_on_clean_data(clean, capsys):
    code, out = run(capsys, "check", clean)
    assert code == 0, out
    assert re.search(r"samples per modality:\n  image  4\n  text   6\n  audio  4\n  imu    2\n", out)
    pairs = "samples per pair:\n  image+audio  4\n  image+text   4\n  text+audio   4\n  text+imu     2\n"
    assert pairs in out
    assert "labels (3 classes, 4 of 6 samples)" in out and "decoded 10 files" in out and ": 0 bad" in out


def test_check_finds_exactly_the_planted_bad_files_and_exits_1(tmp_path, capsys):
    rows = paired_rows(tmp_path, 6, ["image", "text", "depth"])
    bad = write_corrupt_files(tmp_path / "bad")
    planted = {"image.truncated_png": 0, "image.missing": 1, "depth.png8": 2, "depth.npy_nan": 4, "imu.csv_ragged": 5}
    for key, row in planted.items():
        rows[row][modality_of(key)] = str(bad[key].relative_to(tmp_path))
    (tmp_path / "files" / "s3.png").write_bytes(b"")  # an empty file, named by its sample's manifest line
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    code, out = run(capsys, "check", manifest, "--workers", "3")
    assert code == 1
    listed = {line.split(": ", 2)[1] for line in out.splitlines() if line.startswith("  line ")}
    assert listed == {str(bad[k]) for k in planted} | {str(tmp_path / "files" / "s3.png")}
    assert "6 bad" in out and "line 4 (image): " in out and "file is empty (0 bytes)" in out


def test_check_lists_paths_outside_the_folder_but_passes(tmp_path, capsys):
    rows = paired_rows(tmp_path / "elsewhere", 1, ["image", "text"])
    rows[0]["image"] = "../elsewhere/" + rows[0]["image"]
    code, out = run(capsys, "check", write_rows(tmp_path / "set" / "m.jsonl", rows))
    assert code == 0, out
    assert "paths outside the manifest folder (allowed): 1" in out and "['..' leaves the folder]" in out


def test_usage_errors_exit_2_and_malformed_manifests_exit_1(tmp_path, capsys):
    assert run(capsys, "check", tmp_path / "nope.jsonl")[0] == 2
    (tmp_path / "m.txt").write_text("{}")
    assert run(capsys, "check", tmp_path / "m.txt")[0] == 2
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    (tmp_path / "m.jsonl").write_text('{"image": "a.png"}\n{"image": \n')
    code, out = run(capsys, "check", tmp_path / "m.jsonl")
    assert code == 1 and "m.jsonl:2: not valid JSON" in out
    assert run(capsys, "shard", tmp_path / "m.jsonl", tmp_path / "out", "--shard-size", "0")[0] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "{m}", "--workers", "0"], "argument --workers: must be an integer >= 1 (decoding threads), got '0'"),
        (["shard", "{m}", "{tmp}/out", "--workers", "-1"], "argument --workers: must be an integer >= 1"),
        (["shard", "{m}", "{tmp}/a_file"], "{tmp}/a_file: cannot write shards there: not a folder"),
        (["shard", "{m}", "{tmp}/a_file/out"], "not a folder ({tmp}/a_file is not a folder)"),
    ],
)
def test_bad_workers_or_shard_folder_exit_2_in_one_line_before_decoding(clean, tmp_path, capsys, argv, message):
    (tmp_path / "a_file").write_text("")
    try:
        code = main([a.format(m=clean, tmp=tmp_path) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out = capsys.readouterr().err
    assert code == 2 and message.format(tmp=tmp_path) in out and len(out.splitlines()) == 1, out
    assert not (tmp_path / "out").exists() and (tmp_path / "a_file").read_text() == ""


def test_shard_writes_shards_and_refuses_bad_files_unless_skipped(clean, tmp_path, capsys):
    code, out = run(capsys, "shard", clean, tmp_path / "out", "--shard-size", "4")
    assert code == 0, out
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["num_samples"] == 6 and [s["samples"] for s in index["shards"]] == [4, 2]
    rows = paired_rows(tmp_path, 3, ["image", "text"], "b")
    rows[1]["image"] = "missing.png"
    broken = write_rows(tmp_path / "broken.jsonl", rows)
    code, out = run(capsys, "shard", broken, tmp_path / "b")
    assert code == 1 and "missing.png: file not found" in out and not (tmp_path / "b").exists()
    code, out = run(capsys, "shard", broken, tmp_path / "b", "--skip-bad")
    assert code == 0 and "1 sample(s) with bad files left out" in out
    assert json.loads((tmp_path / "b" / "index.json").read_text())["num_samples"] == 2


@pytest.mark.slow  # a fresh interpreter imports torch: seconds
def test_console_script_is_installed(clean):
    exe = shutil.which("bindspace-data", path=str(Path(__file__).parents[1] / ".venv" / "bin"))
    if exe is None:
        pytest.skip("bindspace-data is not installed in .venv (run `make install`)")
    proc = subprocess.run([exe, "check", str(clean)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "samples per modality" in proc.stdout
