"""Manifests (bindspace.data.manifest) and data=manifest (bindspace.data.manifest_datamodule) on real files."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest_files import modality_of, write_corrupt_files, write_one_per_modality, write_sample_files

from bindspace.data import build_datamodule
from bindspace.data.manifest import (
    ManifestError,
    canonical,
    id_fraction,
    load_manifest,
    outside_paths,
    scan_files,
    split_by_id,
)
from bindspace.data.manifest_datamodule import ManifestDataset, weighted_rows
from bindspace.modalities import ConfigError, get_modality

ALL = ["image", "text", "audio", "depth", "thermal", "imu"]
FILE_MODALITIES = [m for m in ALL if m != "text"]
# Small model inputs, so decoding a batch costs milliseconds.
TINY_INPUT = {
    "image": {"size": 16},
    "depth": {"size": 16},
    "thermal": {"size": 16},
    "audio": {"clip_seconds": 0.1, "num_mel_bins": 16, "target_frames": 8},
    "imu": {"length": 16},
    "text": {"context_length": 16},
}


def tiny_configs(modalities=ALL):
    return {m: get_modality(m).config_from_dict({"input": TINY_INPUT[m]}) for m in modalities}


def write_rows(path: Path, rows: list[dict]) -> Path:
    """A manifest in the format its suffix names (CSV: one column per key used, empty cell = absent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        keys = {k for r in rows for k in r}
        columns = [k for k in ("id", "label") if k in keys] + canonical(keys)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def paired_rows(root: Path, n: int, modalities=ALL, prefix: str = "s", labels=("cat", "dog", "eel")) -> list[dict]:
    """``n`` samples holding ``modalities``, files under ``root/files``, paths relative to ``root``."""
    rows = []
    for i in range(n):
        files = write_one_per_modality(root / "files", f"{prefix}{i}")
        row = {"id": f"{prefix}{i}", "label": labels[i % len(labels)]} if labels else {"id": f"{prefix}{i}"}
        for m in modalities:
            row[m] = f"{prefix} number {i}" if m == "text" else str(files[m].relative_to(root))
        rows.append(row)
    return rows


def build(edges, **data):
    configs = tiny_configs(sorted({m for e in edges for m in e}, key=ALL.index))
    seed = data.pop("seed", 0)
    return build_datamodule({"name": "manifest", "batch_size": 4, **data}, configs, edges, seed=seed)


# ---- the manifest format ------------------------------------------------------------------------


def test_every_reader_kind_reads_through_a_manifest(tmp_path):
    files = write_sample_files(tmp_path / "kinds")
    rows = [{"id": key, modality_of(key): str(p.relative_to(tmp_path))} for key, p in files.items()]
    manifest = load_manifest(write_rows(tmp_path / "m.jsonl", rows))
    assert scan_files(manifest) == []
    configs = tiny_configs()
    for i, (key, path) in enumerate(files.items()):
        m = modality_of(key)
        batch = ManifestDataset(manifest.samples, [m], configs).__getitems__([i])
        spec = get_modality(m)
        expected = spec.transform(spec.read(path), configs[m].input)
        assert torch.equal(batch[m][0], expected), key
        assert batch["sample_id"] == [key]


def test_every_corrupt_file_is_reported_by_name(tmp_path):
    bad = write_corrupt_files(tmp_path / "bad")
    rows = [{"id": key, modality_of(key): str(p.relative_to(tmp_path)), "text": "x"} for key, p in bad.items()]
    problems = scan_files(load_manifest(write_rows(tmp_path / "m.jsonl", rows)), workers=4)
    assert {p.sample_id for p in problems} == set(bad)
    for p in problems:
        assert p.path == bad[p.sample_id] and str(bad[p.sample_id]) in str(p)


def test_csv_and_jsonl_give_the_same_batches(tmp_path):
    rows = paired_rows(tmp_path, 5)
    del rows[1]["audio"], rows[3]["text"], rows[4]["label"]  # absent values: empty CSV cells
    a = load_manifest(write_rows(tmp_path / "m.jsonl", rows))
    b = load_manifest(write_rows(tmp_path / "m.csv", rows))
    assert [(s.id, s.label, s.values) for s in a.samples] == [(s.id, s.label, s.values) for s in b.samples]
    assert "audio" not in b.samples[1].values and b.samples[4].label is None
    configs = tiny_configs()
    for m in ALL:
        keep = [s for s in a.samples if m in s.values]
        same = [s for s in b.samples if m in s.values]
        x, y = (ManifestDataset(ss, [m], configs).__getitems__(range(len(ss)))[m] for ss in (keep, same))
        pairs = zip(x.values(), y.values()) if isinstance(x, dict) else [(x, y)]
        assert all(torch.equal(u, v) for u, v in pairs), m


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ('{"image": "a.png"}\n{"image": \n', ".jsonl", r"m.jsonl:2: not valid JSON"),
        ('["image"]\n', ".jsonl", r"m.jsonl:1: expected a JSON object"),
        ('{"imag": "a.png"}\n', ".jsonl", r"m.jsonl:1: unknown key\(s\) \['imag'\]"),
        ('{"text": 3}\n', ".jsonl", r"m.jsonl:1: key 'text' must be a string"),
        ('{"text": "   "}\n', ".jsonl", r"m.jsonl:1: key 'text' must be a non-empty string \(the text itself\)"),
        ("id,text\na, \t\n", ".csv", r"m.csv:2: key 'text' must be a non-empty string"),
        ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', ".jsonl", r"m.jsonl:2: id 'a' already used on line 1"),
        ('{"id": "a", "label": "b"}\n', ".jsonl", r"m.jsonl:1: sample holds no modality"),
        ("\n\n", ".jsonl", r"m.jsonl: manifest holds no samples"),
        ("id,text\na,hello,extra\n", ".csv", r"m.csv:2: 3 cells, the header has 2"),
        ("text,text\na,b\n", ".csv", r"m.csv:1: duplicate column"),
        ("image\n", ".txt", r"m.txt: manifest must end in"),
    ],
)
def test_malformed_manifests_name_file_line_and_key(tmp_path, text, suffix, message):
    path = tmp_path / f"m{suffix}"
    path.write_text(text)
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


def test_paths_leaving_the_folder_are_listed_as_such(tmp_path):
    outside = write_one_per_modality(tmp_path / "elsewhere", "o")
    inside = write_one_per_modality(tmp_path / "set" / "files", "i")
    (tmp_path / "set" / "link.png").symlink_to(outside["image"])
    rows = [
        {"id": "rel", "image": "files/i.png"},
        {"id": "dots", "image": "../elsewhere/o.png"},
        {"id": "abs", "image": str(inside["image"].resolve())},
        {"id": "link", "image": "link.png"},
    ]
    manifest = load_manifest(write_rows(tmp_path / "set" / "m.jsonl", rows))
    found = {s.id: why for s, _, why in outside_paths(manifest)}
    assert found == {"dots": "'..' leaves the folder", "abs": "absolute path", "link": "symlink to outside the folder"}
    assert scan_files(manifest) == []  # allowed: they are read like any other path


def test_id_split_is_stable_and_near_the_fraction(tmp_path):
    rows = [{"id": f"clip-{i}", "text": "x"} for i in range(2000)]
    samples = load_manifest(write_rows(tmp_path / "m.jsonl", rows)).samples
    _, val = split_by_id(samples, 0.2)
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    assert {s.id for s in split_by_id(shuffled, 0.2)[1]} == {s.id for s in val}
    assert 0.17 < len(val) / len(samples) < 0.23
    assert all(id_fraction(s.id) < 0.2 for s in val)


# ---- data=manifest --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Pairs it/ia/ta (8, 6, 6 samples) and triples ita (4); a val set with all three modalities."""
    root = tmp_path_factory.mktemp("mixed")
    rows = paired_rows(root, 8, ["image", "text"], "it")
    rows += paired_rows(root, 6, ["image", "audio"], "ia")
    rows += paired_rows(root, 6, ["text", "audio"], "ta")
    rows += paired_rows(root, 4, ["image", "text", "audio"], "ita")
    write_rows(root / "train.jsonl", rows)
    write_rows(root / "val.jsonl", paired_rows(root, 6, ["image", "text", "audio"], "v", labels=("dog", "fox")))
    return root


EDGES = [("image", "text"), ("image", "audio"), ("text", "audio")]


def test_edges_draw_only_samples_holding_both_modalities(mixed):
    dm = build(EDGES, train=str(mixed / "train.jsonl"), val=str(mixed / "val.jsonl"))
    dm.train_dataloader()
    expected = {"image|text": {"it", "ita"}, "image|audio": {"ia", "ita"}, "text|audio": {"ta", "ita"}}
    seen = {k: set() for k in expected}
    for step in range(8):
        for key, batch in dm.train_steps[step].items():
            assert set(batch) == {"id", "sample_id", "label", *key.split("|")}
            seen[key] |= set(batch["sample_id"])
    for key, prefixes in expected.items():
        assert {s.rstrip("0123456789") for s in seen[key]} == prefixes, key
    assert dm.class_names == ["cat", "dog", "eel", "fox"]


def test_batches_are_a_function_of_seed_and_step(mixed):
    a, b, c = (build(EDGES, train=str(mixed / "train.jsonl"), val=str(mixed / "val.jsonl"), seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.train_dataloader()
    for step in (0, 3, 11):
        x, y = a.train_steps[step], b.train_steps[step]
        assert all(torch.equal(x[k]["image"], y[k]["image"]) for k in ("image|text", "image|audio"))
        assert all(torch.equal(x[k]["id"], y[k]["id"]) and x[k]["sample_id"] == y[k]["sample_id"] for k in x)
    assert any(
        a.train_steps[s]["image|text"]["sample_id"] != c.train_steps[s]["image|text"]["sample_id"] for s in range(3)
    )


def test_val_batches_hold_ids_labels_and_common_modalities(mixed):
    dm = build(EDGES, train=str(mixed / "train.jsonl"), val=str(mixed / "val.jsonl"))
    batches = list(dm.val_dataloader())
    assert [b["sample_id"] for b in batches] == [["v0", "v1", "v2", "v3"], ["v4", "v5"]]
    assert torch.equal(torch.cat([b["id"] for b in batches]), torch.arange(6))
    assert torch.cat([b["label"] for b in batches]).tolist() == [1, 3, 1, 3, 1, 3]  # dog, fox in cat..fox
    assert batches[0]["image"].shape == (4, 3, 16, 16) and batches[0]["audio"].shape[0] == 4
    assert dm.test_dataloader().dataset is dm.val_set


def test_val_without_a_modality_for_every_sample_skips_it_with_a_warning(mixed, tmp_path):
    rows = paired_rows(tmp_path, 4, ["image", "text", "audio"], "v")
    del rows[2]["audio"]
    val = write_rows(tmp_path / "val.jsonl", rows)
    with pytest.warns(UserWarning, match=r"evaluating \['image', 'text'\] only.*audio \(3\)"):
        dm = build(EDGES, train=str(mixed / "train.jsonl"), val=str(val))
    assert "audio" not in next(iter(dm.val_dataloader()))
    del rows[1]["text"]
    with pytest.raises(ConfigError, match=r"data.val: retrieval needs two modalities.*only \['image'\]"):
        build(EDGES, train=str(mixed / "train.jsonl"), val=str(write_rows(tmp_path / "val2.jsonl", rows)))


def test_val_fraction_holds_out_samples_by_id(tmp_path):
    train = write_rows(tmp_path / "train.jsonl", paired_rows(tmp_path, 24, ["image", "text"]))
    dm = build([("image", "text")], train=str(train), val_fraction=0.25)
    val_ids = set(dm.val_set.samples[i].id for i in range(len(dm.val_set)))
    assert val_ids and all(id_fraction(i) < 0.25 for i in val_ids)
    train_ids = {s.id for pool in dm.pools.values() for s in pool.samples}
    assert not val_ids & train_ids and len(val_ids | train_ids) == 24


def test_on_error_raise_lists_bad_files_before_training(tmp_path):
    rows = paired_rows(tmp_path, 16, ["image", "text"])
    bad = write_corrupt_files(tmp_path / "bad")
    planted = [k for k in bad if k.startswith("image.")] + [
        "audio.empty",
        "depth.png8",
        "imu.csv_ragged",
        "thermal.npy_inf",
    ]
    for row, key in zip(rows, planted):
        row.pop("image")
        row[modality_of(key)] = str(bad[key].relative_to(tmp_path))
    train = write_rows(tmp_path / "train.jsonl", rows)
    with pytest.raises(ConfigError) as err:
        build([("image", "text")], train=str(train), val_fraction=0.2)
    # Only the graph's modalities are read: the 7 planted image files, not the audio/depth/... ones.
    lines = str(err.value).splitlines()
    assert "7 bad file(s)" in lines[0] and str(train) in lines[0]
    assert sorted(lines[1:]) == sorted(
        f"  line {i + 1} (image): {bad[k]}: {_reason(bad[k])}" for i, k in enumerate(planted[:7])
    )


def _reason(path: Path) -> str:
    from bindspace.data.readers import DataFileError, read_file

    try:
        read_file("image", path)  # through the spec: its suffix is checked first
    except DataFileError as err:
        return err.reason
    raise AssertionError(f"{path} reads fine")


def test_on_error_raise_shows_ten_files_and_counts_the_rest(tmp_path):
    rows = [{"id": f"x{i}", "text": "t", "image": f"missing{i}.png"} for i in range(13)]
    with pytest.raises(ConfigError, match=r"13 bad file\(s\)") as err:
        build([("image", "text")], train=str(write_rows(tmp_path / "m.jsonl", rows)), val_fraction=0.2)
    lines = str(err.value).splitlines()
    assert len(lines) == 12 and lines[-1] == "  ... and 3 more" and lines[1].endswith("missing0.png: file not found")


def test_on_error_skip_drops_and_counts_samples(mixed, tmp_path):
    rows = paired_rows(tmp_path, 12, ["image", "text"])
    for i in (2, 5, 7):
        rows[i]["image"] = f"gone{i}.png"
    train = write_rows(tmp_path / "train.jsonl", rows)
    with pytest.warns(UserWarning, match=r"dropped 3 sample\(s\)"):
        dm = build([("image", "text")], train=str(train), val=str(mixed / "val.jsonl"), on_error="skip")
    assert dm.skipped == 3 and dm.data_report["skipped"] == 3
    assert dm.data_report["manifests"][str(train)] == {"samples": 12, "bad_files": 3, "skipped_samples": 3}
    assert {s.id for s in dm.pools["image|text"].samples} == {f"s{i}" for i in range(12)} - {"s2", "s5", "s7"}


def test_weighted_sources_follow_the_weights(tmp_path):
    small = write_rows(tmp_path / "a.jsonl", paired_rows(tmp_path, 6, ["text", "imu"], "a"))
    large = write_rows(tmp_path / "b.jsonl", paired_rows(tmp_path, 18, ["text", "imu"], "b"))
    sources = [{"path": str(small), "weight": 3.0}, {"path": str(large), "weight": 1.0}]
    dm = build([("text", "imu")], sources=sources, val=str(small))
    dm.train_dataloader()
    drawn = Counter(s for step in range(60) for s in dm.train_steps[step]["text|imu"]["sample_id"])
    share = sum(n for s, n in drawn.items() if s.startswith("a")) / drawn.total()
    assert abs(share - 0.75) < 0.04, share
    assert len(drawn) == 24  # every sample of both sources is drawn


def test_weighted_rows_cover_every_sample_in_proportion():
    rows = weighted_rows([3, 10], [4.0, 1.0])
    source = rows >= 3
    assert abs(source.mean() - 0.2) < 0.02 and set(rows.tolist()) == set(range(13))
    assert weighted_rows([5], [2.0]) is None
    with pytest.raises(ValueError, match="slots"):
        weighted_rows([1000, 10], [0.001, 1.0])


def test_bad_data_settings_fail_with_the_key(mixed, tmp_path):
    train = str(mixed / "train.jsonl")
    with pytest.raises(ConfigError, match=r"exactly one of data\.train"):
        build(EDGES, val=train)
    with pytest.raises(ConfigError, match=r"data.sources\[0\].weight must be a positive number"):
        build(EDGES, sources=[{"path": train, "weight": 0}])
    with pytest.raises(ConfigError, match=r"data\.on_error must be one of"):
        build(EDGES, train=train, on_error="ignore")
    for workers in (0, -2, 1.5):
        with pytest.raises(ConfigError, match=rf"data\.scan_workers must be an integer >= 1 .*, got {workers}$"):
            build(EDGES, train=train, scan_workers=workers)
    with pytest.raises(ConfigError, match=r"edge image\|imu: no training sample holds both image and imu"):
        build([("image", "imu")], train=train, val=str(mixed / "val.jsonl"))
    with pytest.raises(ConfigError, match="unknown key"):
        build(EDGES, train=train, val_size=3)


@pytest.mark.parametrize("name", ["manifest", "shards"])
def test_config_keys_are_constructor_arguments(name):
    import inspect

    import yaml

    from bindspace.data import DATAMODULES

    keys = set(yaml.safe_load((Path(__file__).parents[1] / "configs" / "data" / f"{name}.yaml").read_text())) - {"name"}
    module, cls = DATAMODULES[name].split(":")
    params = inspect.signature(getattr(__import__(module, fromlist=[cls]), cls)).parameters
    assert keys <= set(params) - {"configs", "edges", "seed"}


@pytest.mark.slow
def test_training_runs_on_manifests_through_the_entry_point(tmp_path, monkeypatch):
    import conftest

    from bindspace.train import run

    synthetic_only = ("data.val_size", "data.test_size")
    monkeypatch.setattr(
        conftest, "TINY_OVERRIDES", [o for o in conftest.TINY_OVERRIDES if not o.startswith(synthetic_only)]
    )
    mods = ["image", "text", "audio"]
    a = write_rows(tmp_path / "a.jsonl", paired_rows(tmp_path, 8, ["image", "text"], "a"))
    b = write_rows(tmp_path / "b.csv", paired_rows(tmp_path, 8, ["image", "audio"], "b"))
    val = write_rows(tmp_path / "val.jsonl", paired_rows(tmp_path, 6, mods, "v"))
    overrides = [
        "data=manifest",
        f"data.sources=[{{path: '{a}', weight: 1.0}}, {{path: '{b}', weight: 2.0}}]",
        f"data.val='{val}'",
        "data.batch_size=4",
        f"graph.modalities=[{','.join(mods)}]",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "checkpoint.every_n_train_steps=2",
    ]
    metrics = run(conftest.compose_config(overrides, run_dir=str(tmp_path / "run")))
    assert metrics["gallery_size"] == 6 and metrics["steps"] == 2
    assert set(metrics["retrieval"]) == {f"{q}->{g}" for q in mods for g in mods if q != g}
    assert "retrieval_class" in metrics  # labels reach class-level retrieval
