"""Tar shards (bindspace.data.shards): round trip, atomic rewrite, streaming split over readers, data=shards."""

from __future__ import annotations

import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_manifest import paired_rows, tiny_configs, write_rows

from bindspace.data import build_datamodule
from bindspace.data.manifest import ManifestError, load_manifest
from bindspace.data.readers import read_file
from bindspace.data.shard_datamodule import ShardStream
from bindspace.data.shards import extract_shards, iter_shard, load_index, write_shards
from bindspace.modalities import ConfigError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """7 samples: 3 with every modality, 2 image+text, 2 audio+imu (one unlabelled)."""
    root = tmp_path_factory.mktemp("shards")
    rows = paired_rows(root, 3, ["image", "text", "audio", "depth", "thermal", "imu"], "all")
    rows += paired_rows(root, 2, ["image", "text"], "it")
    rows += paired_rows(root, 2, ["audio", "imu"], "ai")
    rows[-1]["text"] = "unicode: ünïcødé ✓"
    write_rows(root / "train.jsonl", rows)
    return root


def test_shards_round_trip_the_same_bytes_and_arrays(dataset, tmp_path):
    manifest = load_manifest(dataset / "train.jsonl")
    index = write_shards(manifest, tmp_path / "out", shard_size=3)
    assert [s["name"] for s in index["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s["samples"] for s in index["shards"]] == [3, 3, 1]
    assert index["pairs"]["image+text"] == 5 and index["pairs"]["audio+imu"] == 5
    assert load_index(tmp_path / "out")[1] == json.loads((tmp_path / "out" / "index.json").read_text())
    with tarfile.open(tmp_path / "out" / "shard-000001.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000000003.json", "000000003.image.png", "000000003.text.txt"]
    back = extract_shards(tmp_path / "out", tmp_path / "back")
    assert len(back.samples) == len(manifest.samples)
    for a, b in zip(manifest.samples, back.samples):
        assert (a.id, a.label, sorted(a.values)) == (b.id, b.label, sorted(b.values))
        for m, v in a.values.items():
            if m == "text":
                assert b.values[m] == v
                continue
            assert Path(b.values[m]).read_bytes() == Path(v).read_bytes(), (a.id, m)
            x, y = read_file(m, v), read_file(m, b.values[m])
            assert all(np.array_equal(p, q) for p, q in zip(x, y)) if isinstance(x, tuple) else np.array_equal(x, y)


def test_rewriting_is_atomic_and_removes_stale_shards(dataset, tmp_path):
    manifest = load_manifest(dataset / "train.jsonl")
    write_shards(manifest, tmp_path, shard_size=2)
    first = (tmp_path / "shard-000000.tar").read_bytes()
    write_shards(manifest, tmp_path, shard_size=2)
    assert (tmp_path / "shard-000000.tar").read_bytes() == first  # reproducible bytes (no mtimes, owners)
    write_shards(manifest, tmp_path, shard_size=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "shard-000000.tar", "shard-000001.tar"]


def test_bad_files_stop_sharding_before_anything_is_written(dataset, tmp_path):
    rows = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()]
    rows[4]["image"] = "nowhere.png"
    manifest = load_manifest(write_rows(dataset / "broken.jsonl", rows))
    with pytest.raises(ManifestError, match=r"1 bad file.*\n  line 5 \(image\): .*nowhere.png: file not found"):
        write_shards(manifest, tmp_path / "out", shard_size=2)
    assert not (tmp_path / "out").exists()


def test_a_corrupt_shard_names_the_file(tmp_path):
    (tmp_path / "shard-000000.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(Exception, match=r"shard-000000.tar: cannot read tar shard"):
        list(iter_shard(tmp_path / "shard-000000.tar"))


def _stream(folder: Path, rank: int, world: int, edges, batch_size=2, seed=0) -> ShardStream:
    _, index = load_index(folder)
    configs = tiny_configs()
    return ShardStream(folder, index, edges, [edges], batch_size, seed, configs, None, rank, world, shuffle_buffer=1)


def test_stream_splits_samples_over_ranks_and_holds_only_pairs(tmp_path):
    rows = paired_rows(tmp_path, 16, ["image", "text"], "it", labels=None)
    rows += paired_rows(tmp_path, 8, ["text", "imu"], "ti", labels=None)
    index = write_shards(load_manifest(write_rows(tmp_path / "m.jsonl", rows)), tmp_path / "out", shard_size=4)
    assert len(index["shards"]) == 6
    edges = [("image", "text")]
    seen = []
    for rank in (0, 1):
        steps = itertools.islice(iter(_stream(tmp_path / "out", rank, 2, edges)), 4)  # one pass: 8 per rank
        ids = [s for step in steps for s in step["image|text"]["sample_id"]]
        assert all(s.startswith("it") for s in ids)
        seen.append(set(ids))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {f"it{i}" for i in range(16)}


def test_stream_is_reproducible_and_differs_by_seed(dataset, tmp_path):
    write_shards(load_manifest(dataset / "train.jsonl"), tmp_path, shard_size=2)
    edges = [("image", "text"), ("audio", "imu")]
    runs = [list(itertools.islice(iter(_stream(tmp_path, 0, 1, edges, seed=s)), 5)) for s in (0, 0, 3)]
    for x, y in zip(runs[0], runs[1]):
        assert x.keys() == y.keys() == {"image|text", "audio|imu"}
        assert torch.equal(x["audio|imu"]["audio"], y["audio|imu"]["audio"]) and torch.equal(
            x["image|text"]["id"], y["image|text"]["id"]
        )
    order = [[s["image|text"]["sample_id"] for s in run] for run in runs]
    assert order[0] == order[1] != order[2]


def test_shard_datamodule_trains_and_evaluates(dataset, tmp_path):
    write_shards(load_manifest(dataset / "train.jsonl"), tmp_path / "train", shard_size=3)
    val_rows = paired_rows(tmp_path, 3, ["image", "text"], "v", labels=("cat", "zebra"))
    write_shards(load_manifest(write_rows(tmp_path / "val.jsonl", val_rows)), tmp_path / "val", shard_size=2)
    data = {"name": "shards", "train": str(tmp_path / "train"), "val": str(tmp_path / "val"), "batch_size": 2}
    edges = [("image", "text")]
    dm = build_datamodule(data, tiny_configs(["image", "text"]), edges, seed=0)
    step = next(iter(dm.train_dataloader()))
    assert step["image|text"]["image"].shape == (2, 3, 16, 16)
    val = list(dm.val_dataloader())
    assert [b["sample_id"] for b in val] == [["v0", "v1"], ["v2"]]
    assert dm.class_names == ["cat", "dog", "eel", "zebra"] and torch.cat([b["label"] for b in val]).tolist() == [
        0,
        3,
        0,
    ]
    with pytest.raises(ConfigError, match=r"edge image\|imu: 3 samples in .*, fewer than data.batch_size=4"):
        build_datamodule({**data, "batch_size": 4}, tiny_configs(["image", "imu"]), [("image", "imu")], seed=0)
    with pytest.raises(ConfigError, match=r"needs data\.train"):
        build_datamodule(
            {"name": "shards", "train": str(tmp_path / "train")}, tiny_configs(["image", "text"]), edges, 0
        )


def test_groups_survive_sharding_and_agree_across_ranks(tmp_path):
    """A manifest's groups (here three captions per picture) reach the shards, their index, the held-out
    set unpacked from shards, and the stream's batches, where the ids agree on every rank (the loss
    compares them across ranks) and for rows of one group only."""
    rows = []
    for i, row in enumerate(paired_rows(tmp_path, 8, ["image", "text"], "p", labels=None)):
        rows.append({**row, "text": [f"caption {c} of picture {i}" for c in range(3)]})
    manifest = load_manifest(write_rows(tmp_path / "m.jsonl", rows))
    index = write_shards(manifest, tmp_path / "train", shard_size=5)
    assert (index["grouped_samples"], index["groups"]) == (24, 8)
    assert load_index(tmp_path / "train")[1]["groups"] == 8
    unpacked = extract_shards(tmp_path / "train", tmp_path / "unpacked")
    assert [s.group for s in unpacked.samples] == [s.group for s in manifest.samples]
    edges = [("image", "text")]
    group_of = {s.id: s.group for s in manifest.samples}
    ids_of: dict[str, int] = {}
    for rank in (0, 1):
        for step in itertools.islice(iter(_stream(tmp_path / "train", rank, 2, edges, batch_size=4)), 6):
            batch = step["image|text"]
            for sample_id, gid in zip(batch["sample_id"], batch["group"].tolist(), strict=True):
                assert ids_of.setdefault(sample_id, gid) == gid  # the same id at every visit, on both ranks
    by_group: dict[str, set[int]] = {}
    for sample_id, gid in ids_of.items():
        by_group.setdefault(group_of[sample_id], set()).add(gid)
    assert all(len(v) == 1 for v in by_group.values())  # one id per group ...
    assert len({next(iter(v)) for v in by_group.values()}) == len(by_group)  # ... and distinct groups differ


def test_shards_without_groups_carry_no_group_ids(dataset, tmp_path):
    index = write_shards(load_manifest(dataset / "train.jsonl"), tmp_path, shard_size=2)
    assert index["grouped_samples"] == 0
    step = next(iter(_stream(tmp_path, 0, 1, [("image", "text")])))
    assert "group" not in step["image|text"]


def test_shards_whose_groups_all_have_one_member_warn(tmp_path):
    rows = [{**r, "group": r["id"]} for r in paired_rows(tmp_path, 6, ["image", "text"], "g", labels=None)]
    write_shards(load_manifest(write_rows(tmp_path / "m.jsonl", rows)), tmp_path / "train", shard_size=3)
    val = write_rows(tmp_path / "val.jsonl", paired_rows(tmp_path, 2, ["image", "text"], "v", labels=None))
    data = {"name": "shards", "train": str(tmp_path / "train"), "val": str(val), "batch_size": 2}
    with pytest.warns(UserWarning, match="every group of the shards' group column has one member"):
        build_datamodule(data, tiny_configs(["image", "text"]), [("image", "text")], seed=0)
