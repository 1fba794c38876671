"""Bad shards and manifests that are not UTF-8 stop with one line (issue 13, cases 2 and 3).

Case 2: every shard of ``data=shards`` is indexed when the datamodule is built (members, sizes, each
sample's JSON), so a damaged shard fails before any model exists, naming the shard and the member; a
member that only turns out bad when decoded while training follows ``data.on_error``: a
``DataFileError`` naming the shard and the member (also from a DataLoader worker), or the sample is
dropped and counted in the data report. Case 3: a manifest that is not UTF-8 fails naming the file, the
line and the byte offset, in ``bindspace-data check`` and in ``bindspace-train``.

The CLI tests (``slow``) run the real entry points in a fresh interpreter; the others pin the same
behaviour in process, cheaply.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, bindspace_train, python_m
from test_manifest import paired_rows, tiny_configs, write_rows

from bindspace.data import build_datamodule
from bindspace.data.manifest import ManifestEncodingError, load_manifest
from bindspace.data.readers import DataFileError
from bindspace.data.shards import write_shards
from bindspace.modalities import ConfigError

EDGES = [("image", "text")]


def rewrite_member(shard: Path, member: str, change: Callable[[bytes], bytes | None]) -> Path:
    """Rewrite one member of a tar shard with ``change(bytes)`` (None: leave the member out)."""
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            data = change(data) if name == member else data
            if data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return shard


def cut_before(shard: Path, member: str) -> Path:
    """Cut the shard file where ``member``'s header starts: what is left is a valid, shorter tar."""
    with tarfile.open(shard) as tar:
        info = tar.getmember(member)
    shard.write_bytes(shard.read_bytes()[: info.offset])
    return shard


def truncate_inside(shard: Path, member: str) -> Path:
    """Cut the shard file in the middle of ``member``'s payload."""
    with tarfile.open(shard) as tar:
        info = tar.getmember(member)
    data = shard.read_bytes()
    shard.write_bytes(data[: info.offset_data + info.size // 2])
    return shard


@pytest.fixture
def data(tmp_path) -> Path:
    """8 image+text training samples in 2 shards of 4, a held-out manifest and the same as 2 val shards."""
    train = write_rows(tmp_path / "train.jsonl", paired_rows(tmp_path, 8, ["image", "text"]))
    write_shards(load_manifest(train), tmp_path / "train", shard_size=4)
    val = write_rows(tmp_path / "val.jsonl", paired_rows(tmp_path, 4, ["image", "text"], "v"))
    write_shards(load_manifest(val), tmp_path / "val", shard_size=2)
    return tmp_path


def shards_dm(root: Path, val: str = "val.jsonl", **kwargs):
    config = {"name": "shards", "train": str(root / "train"), "val": str(root / val), "batch_size": 2, **kwargs}
    return build_datamodule(config, tiny_configs(["image", "text"]), EDGES, seed=0)


def one_line_error(action: Callable[[], object], error: type[Exception] = DataFileError) -> str:
    with pytest.raises(error) as info:
        action()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def training_ids(dm, steps: int) -> set[int]:
    loader = dm.train_dataloader()
    try:
        return {i for step in itertools.islice(iter(loader), steps) for i in step["image|text"]["id"].tolist()}
    finally:
        loader.close()  # workers ignore SIGTERM: stop them here, not at interpreter exit


# ---- case 2: shards checked at startup ---------------------------------------------------------

# shard-000001.tar holds samples 4..7; each damage -> what the one line says about it.
DAMAGES = {
    "truncated member": (
        lambda s: truncate_inside(s, "000000005.image.png"),
        r"member 000000005\.image\.png: 85 bytes in its header, 42 in the file \(truncated\)",
    ),
    "invalid JSON": (
        lambda s: rewrite_member(s, "000000005.json", lambda b: b"{not json"),
        r"member 000000005\.json: not valid JSON \(Expecting property name",
    ),
    "JSON without id": (
        lambda s: rewrite_member(s, "000000005.json", lambda b: b'{"label": "cat"}'),
        r"member 000000005\.json: key 'id' is 'missing'",
    ),
    "missing JSON": (
        lambda s: rewrite_member(s, "000000005.json", lambda b: None),
        r"member 000000005\.json: missing \(sample 000000005 has \['image\.png', 'text\.txt'\]\)",
    ),
    "empty member": (
        lambda s: rewrite_member(s, "000000005.image.png", lambda b: b""),
        r"member 000000005\.image\.png: empty \(0 bytes\)",
    ),
    "caption not UTF-8": (
        lambda s: rewrite_member(s, "000000005.text.txt", lambda b: "café".encode("latin-1")),
        r"member 000000005\.text\.txt: not UTF-8 \(line 1, byte offset 3: byte 0xe9",
    ),
    "cut between samples": (
        lambda s: cut_before(s, "000000006.json"),
        r"index\.json lists 4 samples \({'image': 4, 'text': 4}\), the file holds 2 \({'image': 2, 'text': 2}\)",
    ),
    "not a tar": (lambda s: s.write_bytes(b"garbage" * 300), r"not a readable tar shard \(ReadError"),
    "missing shard": (lambda s: s.unlink(), r"listed in index\.json but cannot be opened \(No such file"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_bad_training_shard_fails_at_startup_naming_shard_and_member(data, damage):
    shard = data / "train" / "shard-000001.tar"
    plant, expected = DAMAGES[damage]
    plant(shard)
    message = one_line_error(lambda: shards_dm(data))
    assert message.startswith(f"{shard}: ")
    assert re.search(expected, message), message
    assert message.endswith("or set data.on_error=skip to leave out its bad samples")


@pytest.mark.parametrize("damage", ["invalid JSON", "truncated member"])
def test_with_skip_a_bad_shard_loses_its_bad_samples_counted(data, damage):
    plant, _ = DAMAGES[damage]
    plant(data / "train" / "shard-000001.tar")
    dm = shards_dm(data, on_error="skip")
    report = dm.data_report["shards"]
    if damage == "invalid JSON":  # one sample dropped, the rest of the shard is read
        assert dm.index["num_samples"] == 7 and report["skipped_samples"] == 1 and report["unreadable_shards"] == 0
        assert training_ids(dm, 12) == {0, 1, 2, 3, 4, 6, 7}
    else:  # a truncated file cannot be trusted past the cut: the whole shard is left out
        assert dm.index["num_samples"] == 4 and report["skipped_samples"] == 4 and report["unreadable_shards"] == 1
        assert training_ids(dm, 8) == {0, 1, 2, 3}
    assert dm.data_report["skipped"] == report["skipped_samples"]


def test_a_bad_val_shard_fails_at_startup_or_is_skipped(data):
    shard = data / "val" / "shard-000001.tar"  # samples 2 and 3
    rewrite_member(shard, "000000002.json", lambda b: b"[1, 2")
    message = one_line_error(lambda: shards_dm(data, val="val"))
    assert message.startswith(f"{shard}: member 000000002.json: not valid JSON"), message
    rewrite_member(shard, "000000003.image.png", lambda b: bytes(len(b)))  # decodes badly: found by the file check
    dm = shards_dm(data, val="val", on_error="skip")
    assert len(dm.val_set) == 2 and dm.data_report["manifests"][str(data / "val")]["skipped_samples"] == 2
    fixed = {"id": "v2", "label": "cat", "keys": ["id:v2"]}  # keys: the sample's identity, which held-out sets need
    rewrite_member(shard, "000000002.json", lambda b: json.dumps(fixed).encode())
    message = one_line_error(lambda: shards_dm(data, val="val"))
    assert message.startswith(f"{shard}: member 000000003.image.png: cannot decode a PNG/JPEG/WEBP image"), message
    assert "bindspace-heldout" not in message  # the member, not the temporary file it was unpacked to


# ---- case 2: members that turn out bad while training ------------------------------------------


def zero_member(data: Path, member: str = "000000005.image.png") -> Path:
    """A member whose size and header are fine but whose bytes do not decode: only training finds it."""
    return rewrite_member(data / "train" / "shard-000001.tar", member, lambda b: bytes(len(b)))


def test_scan_workers_below_1_fail_naming_the_key(data):
    with pytest.raises(ConfigError, match=r"data\.scan_workers must be an integer >= 1 .*, got 0$"):
        shards_dm(data, scan_workers=0)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_member_bad_while_training_raises_naming_shard_and_member(data, workers):
    shard = zero_member(data)
    dm = shards_dm(data, num_workers=workers)  # the startup check does not decode payloads
    message = one_line_error(lambda: training_ids(dm, 20))  # a DataFileError, also from a worker process
    assert message.startswith(f"{shard}: member 000000005.image.png: cannot decode a PNG/JPEG/WEBP image"), message
    assert "bindspace-shards" not in message  # the member, not the temporary file it was unpacked to


@pytest.mark.parametrize("workers", [0, 1])
def test_with_skip_a_member_bad_while_training_is_dropped_and_counted(data, workers):
    zero_member(data)
    dm = shards_dm(data, on_error="skip", num_workers=workers)
    assert training_ids(dm, 12) == {0, 1, 2, 3, 4, 6, 7}  # every batch full, never sample 5
    report = dm.data_report
    assert report["shards"]["skipped_while_training"] == 1 and report["skipped"] == 1  # once, not once a pass


def test_data_file_error_is_a_one_line_config_error():
    err = DataFileError("/data/shard-000001.tar", "member 000000005.image.png: bad\n  header\n")
    assert isinstance(err, ConfigError) and str(err) == "/data/shard-000001.tar: member 000000005.image.png: bad header"


# ---- case 3: manifests that are not UTF-8 ------------------------------------------------------

ROWS = [{"id": f"s{i}", "text": f"caption {i}", "image": f"s{i}.png"} for i in range(4)]
ROWS[2]["text"] = "café au lait"  # the first non-ASCII character: on line 3 of a JSONL, line 4 of a CSV


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "utf-16-le"])
def test_a_manifest_that_is_not_utf8_names_the_line_and_byte_offset(tmp_path, suffix, encoding):
    path = write_rows(tmp_path / f"m{suffix}", ROWS)
    if suffix == ".jsonl":  # write_rows escapes non-ASCII characters in JSON
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    path.write_bytes(text.encode(encoding))
    message = one_line_error(lambda: load_manifest(path), ManifestEncodingError)
    assert message.startswith(f"{path}: not UTF-8")
    if encoding == "utf-16":
        assert "UTF-16 byte-order mark; line 1, byte offset 0" in message
    else:
        line = 3 if suffix == ".jsonl" else 4
        offset = text.encode(encoding).index("é".encode(encoding))
        assert f"(line {line}, byte offset {offset}: byte 0xe9" in message, message


# ---- the real command lines --------------------------------------------------------------------

RUN = [o for o in TINY_OVERRIDES if not o.startswith(("data.", "trainer.max_steps", "trainer.val_check_interval"))]
RUN += ["trainer.max_steps=4", "trainer.val_check_interval=4", "graph.modalities=[image,text]", "data.batch_size=2"]


def cli(*argv: str, module: str = "bindspace.train", fresh_interpreter: bool = True) -> tuple[int, str]:
    """The command in a fresh interpreter, or (train only) its ``main()`` in this one."""
    if module == "bindspace.train":
        proc = bindspace_train(*argv, fresh_interpreter=fresh_interpreter, timeout=300)
    else:
        proc = subprocess.run([*python_m(module), *argv], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else ""


def train(run_dir: Path, *overrides: str, fresh_interpreter: bool = True) -> tuple[int, str]:
    return cli(*RUN, *overrides, f"hydra.run.dir={run_dir}", fresh_interpreter=fresh_interpreter)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["train", "val"])
def test_cli_a_bad_shard_stops_before_training_with_one_line(data, which):
    if which == "train":
        shard = truncate_inside(data / "train" / "shard-000001.tar", "000000005.image.png")
        member = "member 000000005.image.png: 85 bytes in its header, 42 in the file (truncated)"
    else:
        shard = rewrite_member(data / "val" / "shard-000001.tar", "000000002.json", lambda b: b"{not json")
        member = "member 000000002.json: not valid JSON"
    shards = ["data=shards", f"data.train={data / 'train'}", f"data.val={data / 'val'}"]
    code, last = train(data / "run", *shards, fresh_interpreter=which == "train")  # the train case through the CLI
    assert code == 2 and f"{shard}: {member}" in last, last
    assert not (data / "run" / "checkpoints").exists()  # nothing computed


@pytest.mark.slow
def test_cli_a_member_bad_while_training_stops_with_one_line(data):
    shard = zero_member(data)
    shards = ["data=shards", f"data.train={data / 'train'}", f"data.val={data / 'val.jsonl'}"]
    code, last = train(data / "run", *shards, "data.shuffle_buffer=1")  # one pass over the 8 samples in 4 steps
    assert code == 2 and f"{shard}: member 000000005.image.png: cannot decode" in last, last
    # The progress before the bad member is kept although the checkpoint interval (4) was never reached:
    # sample 5 is in the third batch (batches of 2), which Lightning prefetches while step 2 is about to
    # run, so last.ckpt holds the last completed step, 1. No temporaries are left.
    ckpt = torch.load(data / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1
    assert not list((data / "run").rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "suffix", "encoding"),
    [("check", ".jsonl", "latin-1"), ("check", ".csv", "utf-16"), ("train", ".jsonl", "latin-1")],
)
def test_cli_a_manifest_that_is_not_utf8_stops_with_one_line(tmp_path, command, suffix, encoding):
    rows = paired_rows(tmp_path, 8, ["image", "text"])
    rows[2]["text"] = "café au lait"
    path = write_rows(tmp_path / f"train{suffix}", rows)
    text = path.read_text(encoding="utf-8").replace("\\u00e9", "é")  # write_rows escapes it in JSON
    path.write_bytes(text.encode(encoding))
    if command == "check":
        code, last = cli("check", str(path), module="bindspace.data.cli")
    else:
        code, last = train(tmp_path / "run", "data=manifest", f"data.train={path}")
    assert code == 2 and f"{path}: not UTF-8" in last, last
    assert "(line 3, byte offset" in last if encoding == "latin-1" else "UTF-16 byte-order mark" in last
