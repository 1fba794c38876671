"""Seeded fuzzing of every input bindspace reads (issue 13): the answer is the input or a one-line error.

Random bytes, random bytes behind a valid file's first bytes, truncations, flipped bytes, spliced
bytes and wrong encodings (Latin-1, UTF-16, double-encoded UTF-8) are fed to each modality's file
reader, the manifest parser (JSONL and CSV), the shard reader (the startup check, the streaming reader
and ``index.json``) and the checkpoint loader. Each must either read the input or raise the project's
one-line error type (``ConfigError`` or a subclass: ``DataFileError``, ``ManifestError``,
``CheckpointError``) whose message has no line break and names the file, never a bare
``UnicodeDecodeError``, ``JSONDecodeError``, ``struct.error``, ``OSError`` ... traceback.

The cases are drawn from ``random.Random(SEED)``: the same inputs on every run, and a failure lists the
mutation that caused it. Unlike ``tests/test_readers.py`` (hypothesis, readers only), this covers every
reader of the package, and the whole file runs in a few seconds.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import pickle
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest_files import write_sample_files
from test_manifest import tiny_configs

from bindspace.data.manifest import load_manifest
from bindspace.data.readers import SUPPORTED_SUFFIXES, read_file
from bindspace.data.shard_datamodule import ShardStream, check_shard_set
from bindspace.data.shards import INDEX_NAME, load_index, write_shards
from bindspace.inference import CheckpointError, load_checkpoint
from bindspace.modalities import ConfigError

SEED = 13
CASES = 24  # per target
ENCODINGS = ("latin-1 as UTF-16", "UTF-16-LE", "UTF-8 read as Latin-1 and re-encoded", "cp1252")

# One valid file per (modality, suffix) the readers accept: a key of write_sample_files.
VALID_FILE = {
    ("image", ".png"): "image.png_rgb",
    ("image", ".jpg"): "image.jpg",
    ("image", ".jpeg"): "image.jpeg_upper",
    ("image", ".webp"): "image.webp_lossless",
    ("audio", ".wav"): "audio.wav_stereo_44k",
    ("audio", ".flac"): "audio.flac_mono_22k",
    ("audio", ".ogg"): "audio.ogg_vorbis",
    ("depth", ".npy"): "depth.npy_m",
    ("depth", ".png"): "depth.png16_mm",
    ("thermal", ".npy"): "thermal.npy_float",
    ("thermal", ".png"): "thermal.png16",
    ("thermal", ".jpg"): "thermal.jpg",
    ("thermal", ".jpeg"): "thermal.jpg",
    ("imu", ".npy"): "imu.npy_time_major",
    ("imu", ".csv"): "imu.csv_header",
}
assert set(VALID_FILE) == {(m, s) for m, suffixes in SUPPORTED_SUFFIXES.items() for s in suffixes}


def reencode(data: bytes, how: str) -> bytes:
    """``data`` in a wrong encoding: text re-encoded, binary bytes transcoded as if they were text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if how == "latin-1 as UTF-16":
        return text.encode("utf-16")  # with a byte-order mark
    if how == "UTF-16-LE":
        return text.encode("utf-16-le")  # without one
    if how == "cp1252":
        return text.encode("cp1252", errors="replace")
    return text.encode("utf-8").decode("latin-1").encode("utf-8")  # mojibake: double-encoded UTF-8


def mutations(data: bytes, rng: random.Random, n: int = CASES) -> list[tuple[str, bytes]]:
    """``n`` damaged versions of ``data``, every kind of damage in turn; ``(description, bytes)``."""
    out = [(f"encoding {how}", reencode(data, how)) for how in ENCODINGS]
    while len(out) < n:
        kind = len(out) % 5
        if kind == 0:
            size = rng.choice([0, 1, 7, 64, rng.randrange(1, 4096)])
            out.append((f"{size} random bytes", rng.randbytes(size)))
        elif kind == 1:
            keep = rng.randrange(1, min(64, len(data)) + 1)
            out.append((f"first {keep} bytes + random tail", data[:keep] + rng.randbytes(rng.randrange(0, 2048))))
        elif kind == 2:
            cut = rng.randrange(0, len(data))
            out.append((f"truncated to {cut} of {len(data)} bytes", data[:cut]))
        elif kind == 3:
            damaged = bytearray(data)
            where = sorted(rng.randrange(len(data)) for _ in range(rng.randrange(1, 9)))
            for i in where:
                damaged[i] = rng.randrange(256)
            out.append((f"bytes changed at {where}", bytes(damaged)))
        else:
            a = rng.randrange(len(data))
            b = min(len(data), a + rng.randrange(1, 512))
            out.append(
                (f"bytes {a}:{b} replaced by random ones", data[:a] + rng.randbytes(rng.randrange(0, 64)) + data[b:])
            )
    return out[:n]


def verdict(action: Callable[[], object], path: Path, allowed: type[Exception] = ConfigError) -> str | None:
    """None when ``action`` reads the input or fails with a one-line ``allowed`` error naming ``path``."""
    try:
        action()
    except allowed as err:
        message = str(err)
        if "\n" in message or "\r" in message:
            return f"{type(err).__name__} spans {len(message.splitlines())} lines: {message[:300]!r}"
        if path.name not in message:
            return f"{type(err).__name__} does not name {path.name}: {message[:300]!r}"
    except Exception as err:  # the contract broken: a bare traceback type
        return f"{type(err).__name__}: {str(err)[:300]!r}"
    return None


def fuzz(base: bytes, path: Path, action: Callable[[], object], seed: object, **kwargs) -> list[str]:
    """Write every mutation of ``base`` to ``path`` in turn and collect the broken verdicts."""
    failures = []
    for what, data in mutations(base, random.Random(f"{SEED}-{seed}")):
        path.write_bytes(data)
        problem = verdict(action, path, **kwargs)
        if problem:
            failures.append(f"{what}: {problem}")
    return failures


# ---- file readers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, Path]:
    return write_sample_files(tmp_path_factory.mktemp("valid"))


@pytest.mark.parametrize(("modality", "suffix"), list(VALID_FILE), ids=[f"{m}{s}" for m, s in VALID_FILE])
def test_every_reader_answers_damaged_files_with_one_line(valid_files, tmp_path, modality, suffix):
    base = valid_files[VALID_FILE[modality, suffix]].read_bytes()
    path = tmp_path / f"fuzzed{suffix}"
    failures = fuzz(base, path, lambda: read_file(modality, path), f"{modality}{suffix}")
    assert not failures, "\n".join(failures)


# ---- manifests ---------------------------------------------------------------------------------

ROWS = [
    {"id": f"s{i}", "label": ["chat", "hund", "älg"][i % 3], "text": f"naïve café nº {i} ✓", "image": f"f/s{i}.png"}
    for i in range(6)
]


def manifest_bytes(suffix: str) -> bytes:
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS).encode("utf-8")
    out = io.StringIO()
    writer = csv.DictWriter(out, list(ROWS[0]))
    writer.writeheader()
    writer.writerows(ROWS)
    return out.getvalue().encode("utf-8")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_the_manifest_parser_answers_damaged_manifests_with_one_line(tmp_path, suffix):
    base = manifest_bytes(suffix)
    path = tmp_path / f"manifest{suffix}"
    path.write_bytes(base)
    assert len(load_manifest(path).samples) == len(ROWS)  # the base is valid
    failures = fuzz(base, path, lambda: load_manifest(path), suffix)
    assert not failures, "\n".join(failures)


# ---- shards ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory, valid_files) -> Path:
    """Four samples (image, text, audio) in one shard."""
    root = tmp_path_factory.mktemp("shard_set")
    rows = [
        {"id": f"s{i}", "label": "ünï", "text": f"caption ✓ {i}", "image": str(valid_files["image.png_rgb"])}
        | {"audio": str(valid_files["audio.flac_mono_22k"])}
        for i in range(4)
    ]
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    write_shards(load_manifest(root / "m.jsonl"), root / "shards", shard_size=4)
    return root / "shards"


def stream_shard(folder: Path) -> None:
    """What training does with a shard the startup check never saw: two steps of the streaming reader."""
    _, index = load_index(folder)
    edges = [("image", "audio")]
    stream = ShardStream(folder, index, edges, [edges], 2, 0, tiny_configs(["image", "audio"]), None, shuffle_buffer=1)
    list(itertools.islice(iter(stream), 2))


def test_the_shard_reader_answers_damaged_shards_with_one_line(shard_set, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / INDEX_NAME).write_bytes((shard_set / INDEX_NAME).read_bytes())
    base = (shard_set / "shard-000000.tar").read_bytes()
    path = folder / "shard-000000.tar"
    check_shard_set(shard_set, "raise")  # the base is valid
    stream_shard(shard_set)
    failures = fuzz(base, path, lambda: check_shard_set(folder, "raise"), "startup")
    failures += [f"streaming, {f}" for f in fuzz(base, path, lambda: stream_shard(folder), "stream")]
    assert not failures, "\n".join(failures)


def test_the_shard_index_is_answered_with_one_line(shard_set, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "shard-000000.tar").write_bytes((shard_set / "shard-000000.tar").read_bytes())
    base = (shard_set / INDEX_NAME).read_bytes()
    path = folder / INDEX_NAME
    failures = fuzz(base, path, lambda: check_shard_set(folder, "raise"), "index")
    assert not failures, "\n".join(failures)


# ---- checkpoints -------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``print``: code that a weights-only load must refuse (without running it)."""

    def __reduce__(self):
        return (print, ("code ran",))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, bytes]:
    """A small Lightning-like checkpoint, in the zip format and the legacy (plain pickle) format."""
    ckpt = {
        "state_dict": {"encoder.weight": torch.randn(8, 4), "encoder.bias": torch.zeros(8)},
        "global_step": 3,
        "bindspace": {"format": 1, "embed_dim": 8, "modalities": {}, "edges": [["image", "text"]]},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(4)}}, "param_groups": [{"lr": 1e-3}]}],
    }
    out = {}
    for name, zipped in (("zip", True), ("legacy", False)):
        buffer = io.BytesIO()
        torch.save(ckpt, buffer, _use_new_zipfile_serialization=zipped)
        out[name] = buffer.getvalue()
    return out


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_the_checkpoint_loader_answers_damaged_checkpoints_with_one_line(checkpoints, tmp_path, kind):
    path = tmp_path / "last.ckpt"
    path.write_bytes(checkpoints[kind])
    assert torch.equal(load_checkpoint(path)["state_dict"]["encoder.bias"], torch.zeros(8))  # the base is valid
    failures = fuzz(checkpoints[kind], path, lambda: load_checkpoint(path), kind, allowed=CheckpointError)
    assert not failures, "\n".join(failures)


def test_the_checkpoint_loader_answers_code_and_non_checkpoints_with_one_line(tmp_path, capsys):
    cases = {
        "payload.ckpt": pickle.dumps({"state_dict": {}, "x": _Payload()}),
        "array.ckpt": np.arange(4).tobytes(),
        "list.ckpt": _saved([torch.zeros(2)]),
        "no_state.ckpt": _saved({"weights": torch.zeros(2)}),
        "empty.ckpt": b"",
    }
    failures = []
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        problem = verdict(lambda path=path: load_checkpoint(path), path, allowed=CheckpointError)
        if problem:
            failures.append(f"{name}: {problem}")
    assert "code ran" not in capsys.readouterr().out
    assert not failures, "\n".join(failures)


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
