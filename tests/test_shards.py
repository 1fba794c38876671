"""Tar shards (bindspace.data.shards): round trip, atomic rewrite, streaming split over readers, data=shards."""

from __future__ import annotations

import io
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


# ---- sample identity: a check on held-out shards answers as on the manifests they were written from -------


@pytest.fixture(scope="module")
def unnamed(tmp_path_factory) -> Path:
    """Manifests ``a`` and ``b`` without ids (disjoint files; both number their rows 0..9), ``a``'s rows under ids
    of their own (``renamed``) and a training manifest, each also written as ``<name>-shards`` by the
    ``bindspace-data shard`` command."""
    from bindspace.data.cli import main as data_main

    root = tmp_path_factory.mktemp("identity")

    def rows(prefix: str, n: int = 10) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "id"} for r in paired_rows(root, n, ["image", "text"], prefix)]

    a = rows("a")
    sets = {"a": a, "b": rows("b"), "renamed": [{**r, "id": f"x{i}"} for i, r in enumerate(a)], "train": rows("t", 8)}
    for name, content in sets.items():
        manifest = write_rows(root / f"{name}.jsonl", content)
        assert data_main(["shard", str(manifest), str(root / f"{name}-shards"), "--shard-size", "4"]) == 0
    return root


def identity_answers(root: Path, val: str, test: str) -> tuple[int, bool]:
    """(samples ``bindspace-eval`` finds shared by val and test, whether early stopping on val is refused), for
    a datamodule of those held-out sets (a name ending in ``-shards`` is a shard set, else a manifest; with any
    shard set, ``data=shards`` training on ``train-shards``)."""
    from test_manifest import TINY_INPUT

    from bindspace.eval import EvalOptions, fit_and_score_splits
    from bindspace.inference import BindSpace
    from bindspace.modalities import get_modality
    from bindspace.models.model import BindSpaceModel
    from bindspace.train import check_selection_apart

    def where(name: str) -> str:
        return str(root / name) if name.endswith("-shards") else str(root / f"{name}.jsonl")

    edges = [("image", "text")]
    configs = {m: get_modality(m).config_from_dict({"input": TINY_INPUT[m]}, "tiny") for m in ("image", "text")}
    source = "shards" if any(name.endswith("-shards") for name in (val, test)) else "manifest"
    train = where("train-shards" if source == "shards" else "train")
    data = {"name": source, "train": train, "val": where(val), "test": where(test), "batch_size": 4}
    dm = build_datamodule(data, configs, edges, seed=0)
    bs = BindSpace(BindSpaceModel(configs, embed_dim=8), edges=edges)
    _, _, plan = fit_and_score_splits(bs, dm, EvalOptions())
    try:
        check_selection_apart({"early_stopping": {"patience": 1}, "trainer": {}}, dm)
        refused = False
    except ConfigError as err:
        assert "the final evaluation scores the same samples" in str(err)
        refused = True
    return plan.info["shared_ids"], refused


@pytest.mark.slow
@pytest.mark.parametrize(
    ("val", "test", "shared"),
    [("a", "b", 0), ("renamed", "a", 10), ("a", "a", 10)],
    ids=["two-manifests-without-ids", "the-same-files-renamed", "one-manifest"],
)
def test_held_out_shards_are_told_apart_as_their_manifests_are(unnamed, val, test, shared):
    """Shards stored a row number as the id of a row without one: shards of two such manifests looked like the
    same samples (split in halves, early stopping refused), and shards of a manifest looked like other samples
    than the manifest itself (scored next to what was fitted on)."""
    manifests = identity_answers(unnamed, val, test)
    assert manifests[0] == shared and manifests[1] == (val == test)  # selection is checked by id alone
    assert identity_answers(unnamed, f"{val}-shards", f"{test}-shards") == manifests
    assert identity_answers(unnamed, f"{val}-shards", test) == manifests  # a manifest beside shards
    assert identity_answers(unnamed, val, f"{test}-shards") == manifests


def train_cli(root: Path, run_dir: Path, val: str, test: str, train: str = "train-shards", *extra: str):
    """``bindspace-train data=shards`` (its main(), in this process), early stopping on ``val``, scoring ``test``."""
    from conftest import TINY_OVERRIDES, run_main_in_process

    from bindspace.train import main as train_main

    def where(name: str) -> Path:
        return root / name if name.endswith("-shards") else root / f"{name}.jsonl"

    argv = [
        *(o for o in TINY_OVERRIDES if not o.startswith(("data.", "trainer."))), "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "data=shards", "data.batch_size=4",
        f"data.train={where(train)}", f"data.val={where(val)}", f"data.test={where(test)}", f"hydra.run.dir={run_dir}",
        "graph.modalities=[image,text]", "early_stopping={metric: val/mean_R@1, patience: 1}", *extra,
    ]  # fmt: skip
    return run_main_in_process(train_main, "bindspace-train", *argv)


@pytest.mark.slow
def test_bindspace_train_selects_and_scores_held_out_shards_as_their_manifests(unnamed, tmp_path):
    from conftest import run_main_in_process

    import bindspace.eval as eval_cli

    apart = train_cli(unnamed, tmp_path / "apart", "a-shards", "b-shards")  # two manifests without ids
    assert apart.returncode == 0, apart.stderr[-3000:]
    # bindspace-eval fits its mitigations on val and scores test: every sample of each, none shared.
    ckpt = tmp_path / "apart" / "checkpoints" / "last.ckpt"
    for test, shared in (("b-shards", 0), ("a.jsonl", 10)):
        argv = [
            f"ckpt_path={ckpt}",
            "data=shards",
            f"data.train={unnamed / 'train-shards'}",
            "data.batch_size=4",
            f"data.val={unnamed / 'a-shards'}",
            f"data.test={unnamed / test}",
            f"hydra.run.dir={tmp_path / test}",
        ]
        done = run_main_in_process(eval_cli.main, "bindspace-eval", *argv)
        assert done.returncode == 0, done.stderr[-3000:]
        info = json.loads((tmp_path / test / "metrics.json").read_text())["fit_split"]
        assert (info["shared_ids"], info["method"]) == (shared, "id_hash" if shared else "separate_splits")
    same = train_cli(unnamed, tmp_path / "same", "a", "a-shards")  # a manifest and its own shards
    lines = [line for line in same.stderr.splitlines() if line.strip()]
    assert same.returncode == 2 and len(lines) == 1, same.stderr[-3000:]
    refusal = "early_stopping selects the checkpoint on the validation set, and the final evaluation scores the same"
    assert lines[0].startswith(f"bindspace-train: config error: {refusal} samples (10 shared")


def without_identity(folder: Path, out: Path) -> Path:
    """``folder``'s shards as bindspace-data wrote them before they recorded sample identity (format /1)."""
    out.mkdir()
    for tar_path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(tar_path) as src, tarfile.open(out / tar_path.name, "w", format=tarfile.PAX_FORMAT) as dst:
            for member in src:
                data = src.extractfile(member).read()
                if member.name.endswith(".json"):
                    data = json.dumps({k: v for k, v in json.loads(data).items() if k != "keys"}).encode()
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
    index = json.loads((folder / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**index, "format": "bindspace-shards/1"}))
    return out


@pytest.mark.slow
def test_shards_written_before_sample_identity_still_train_and_are_refused_as_held_out_sets(unnamed, tmp_path):
    from bindspace.data.cli import main as data_main

    old_train = without_identity(unnamed / "train-shards", tmp_path / "old-train-shards")
    old_val = without_identity(unnamed / "a-shards", tmp_path / "old-a-shards")
    data = {"name": "shards", "train": str(old_train), "val": str(unnamed / "a.jsonl"), "batch_size": 4}
    dm = build_datamodule(data, tiny_configs(["image", "text"]), [("image", "text")], seed=0)
    assert next(iter(dm.train_dataloader()))["image|text"]["image"].shape[0] == 4  # training streams them as before
    refused = train_cli(tmp_path, tmp_path / "run", "old-a-shards", "old-a-shards", train="old-train-shards")
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    rewrite = f"`bindspace-data shard {unnamed / 'a.jsonl'} {old_val}`"
    assert lines[0] == (
        f"bindspace-train: config error: {old_val / 'index.json'}: bindspace-shards/1 shards record no sample "
        "identity, which held-out sets need (fitted and scored samples are kept apart by it); rewrite them with "
        f"{rewrite}"
    )
    assert data_main(rewrite.strip("`").split()[1:]) == 0  # the command it names rewrites them, and they load
    assert load_index(old_val)[1]["format"] == "bindspace-shards/2"
    assert len(extract_shards(old_val, tmp_path / "unpacked").samples) == 10


def _one_sample_without_identity(unnamed: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``a-shards`` (bindspace-shards/2) whose sample 1 lost its ``keys``: the folder and the shard."""
    shards = tmp_path / "a-shards"
    shards.mkdir()
    for path in (unnamed / "a-shards").iterdir():
        (shards / path.name).write_bytes(path.read_bytes())
    shard = shards / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            if member.name == "000000001.json":
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "keys"}).encode()
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return shards, shard


def test_a_held_out_sample_without_its_identity_is_named_in_one_line(unnamed, tmp_path):
    shards, shard = _one_sample_without_identity(unnamed, tmp_path)
    with pytest.raises(ConfigError) as err:
        extract_shards(shards, tmp_path / "out")
    assert str(err.value) == (
        f"{shard}: member 000000001.json: no 'keys' (its identity); rewrite the shards with `bindspace-data shard`"
    )


@pytest.mark.slow
def test_a_held_out_sample_without_its_identity_is_a_bad_sample_under_on_error(unnamed, tmp_path):
    """The shard check counts it as a bad sample: one line naming shard and member before any compute under
    data.on_error=raise, left out (and counted) under skip; before, both raised while unpacking the held-out set."""
    shards, shard = _one_sample_without_identity(unnamed, tmp_path)
    refused = train_cli(unnamed, tmp_path / "refused", str(shards), "b")  # an absolute path: used as it is
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert f"{shard}: member 000000001.json: no 'keys' (its identity)" in lines[0], lines[0]
    assert not (tmp_path / "refused" / "checkpoints").exists()
    skipped = train_cli(unnamed, tmp_path / "skipped", str(shards), "b", "train-shards", "data.on_error=skip")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    report = json.loads((tmp_path / "skipped" / "metrics.json").read_text())["data"]
    assert report["manifests"][str(shards)]["skipped_samples"] == 1 and report["val_samples"] == 9, report
