"""Issue 17, part 3: several captions of one sound (rows of one ``group``) are one source everywhere.

Training already treats them as each other's positives (tests/test_losses_groups.py). Held out, they
must neither straddle the train/val split (the sound would be trained on through another caption) nor
the fit/score halves of ``bindspace-eval`` (a correction fitted on a copy of a scored sound), and at
instance level a caption's matches are every row of its group, not only its own row, whose file other
rows repeat: scored by id, those exact duplicates would be counted wrong in the model's disfavour.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_config
from test_manifest import TINY_INPUT, build, paired_rows, write_rows

from bindspace.data import build_datamodule
from bindspace.data.manifest import ManifestError, id_fraction, load_manifest, source_key, split_by_id
from bindspace.data.manifest_datamodule import group_index, group_of, stable_group_id
from bindspace.errors import ConfigError
from bindspace.eval import embed_split, take_rows
from bindspace.evaluation.embed import HeldOut
from bindspace.evaluation.fit_split import split_fit_and_score
from bindspace.evaluation.suite import evaluate_split
from bindspace.modalities import get_modality
from bindspace.train import run

pytestmark = pytest.mark.slow  # decodes image files


def captioned_rows(root, sounds: int, captions: int, loose: int = 0) -> list[dict]:
    """``sounds`` images, each in ``captions`` rows (same file, its own caption, one group); ``loose`` ungrouped."""
    base = paired_rows(root, sounds + loose, ["image", "text"], labels=None)
    rows = []
    for i, row in enumerate(base[:sounds]):
        for c in range(captions):
            rows.append({**row, "id": f"{row['id']}-c{c}", "text": f"caption {c} of {i}", "group": f"sound{i}"})
    return rows + base[sounds:]


def test_the_rows_of_a_group_land_on_one_side_of_the_split(tmp_path):
    manifest = load_manifest(write_rows(tmp_path / "m.jsonl", captioned_rows(tmp_path, 40, 3, loose=20)))
    train, val = split_by_id(manifest.samples, 0.3)
    side = {}
    for part, name in ((train, "train"), (val, "val")):
        for s in part:
            if s.group is not None:
                assert side.setdefault(s.group, name) == name, f"group {s.group} straddles the split"
    assert {"train", "val"} == set(side.values())  # both sides hold groups: the test can fail
    # Ungrouped samples split by their id exactly as before.
    loose = [s for s in manifest.samples if s.group is None]
    assert {s.id for s in val if s.group is None} == {s.id for s in loose if id_fraction(s.id) < 0.3}
    assert source_key(loose[0]) == loose[0].id and source_key(manifest.samples[0]) == "group:sound0"


def test_a_groups_rows_are_each_others_instance_matches():
    # Two sounds, each in two rows: the image rows are exact duplicates, each caption sits next to its image.
    image = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    )
    text = torch.nn.functional.normalize(
        image + 0.1 * torch.tensor([[0, 0, 1.0], [0, 0, -1.0], [0, 0, 1.0], [0, 0, -1.0]])
    )
    embs, ids = {"image": image, "text": text}, torch.arange(4)
    by_group = evaluate_split(
        None, HeldOut(embs, ids, None, torch.tensor([0, 0, 1, 1])), [("image", "text")], gap=False
    )
    by_id = evaluate_split(None, HeldOut(embs, ids, None), [("image", "text")], gap=False)
    assert by_group.metrics["instance_relevance"] == "group" and by_id.metrics["instance_relevance"] == "id"
    # text -> image: the two copies of the caption's image tie; either is a match by group, one of two by id.
    assert by_group.metrics["retrieval"]["text->image"]["R@1"] == pytest.approx(100.0)
    assert by_id.metrics["retrieval"]["text->image"]["R@1"] == pytest.approx(50.0)
    # image -> text: both captions of the sound are matches; chance counts them too.
    assert by_group.metrics["retrieval"]["image->text"]["R@1"] == pytest.approx(100.0)
    assert by_group.metrics["chance"]["retrieval"]["R@1"] == pytest.approx(50.0)
    assert by_id.metrics["chance"]["retrieval"]["R@1"] == pytest.approx(25.0)
    # per_query.npz keeps the unique sample ids, so runs are still matched query by query.
    assert by_group.per_query["ids"].tolist() == [0, 1, 2, 3]


def test_eval_fits_and_scores_on_disjoint_groups(tmp_path):
    from bindspace.inference import BindSpace
    from bindspace.models.model import BindSpaceModel

    rows = captioned_rows(tmp_path, 12, 3, loose=4)
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    edges = [("image", "text")]
    # The tiny preset's encoders at the test's input sizes (the defaults are ImageBind-sized).
    configs = {m: get_modality(m).config_from_dict({"input": TINY_INPUT[m]}, "tiny") for m in ("image", "text")}
    data = {"name": "manifest", "batch_size": 4, "train": str(manifest), "val": str(manifest)}
    dm = build_datamodule(data, configs, edges, seed=0)
    bs = BindSpace(BindSpaceModel(configs, embed_dim=16), edges=edges)
    split, keys = embed_split(bs, dm, "val")
    assert split.groups is not None and len(keys) == len(rows)
    assert keys.count("group:sound0") == 3  # the three rows of one sound share one source key
    plan = split_fit_and_score(keys, keys, "val", "val")  # one split serves both: halved by source key
    fit = {keys[i] for i in plan.fit_rows}
    scored = {keys[i] for i in plan.score_rows}
    assert not fit & scored and any(k.startswith("group:") for k in scored)
    scored_split = take_rows(split, plan.score_rows)
    assert scored_split.groups is not None and len(scored_split.groups) == len(plan.score_rows)


# ---- several captions in one JSON Lines row --------------------------------------------------------


def test_a_list_of_captions_is_one_group_of_samples(tmp_path):
    base = paired_rows(tmp_path, 2, ["image", "text"], labels=None)
    rows = [
        {**base[0], "text": ["a red ball", "something round and red", "a ball"], "label": "ball"},
        {**base[1], "text": ["one caption only"], "group": "kept"},
    ]
    samples = load_manifest(write_rows(tmp_path / "m.jsonl", rows)).samples
    assert [s.id for s in samples] == ["s0#0", "s0#1", "s0#2", "s1"]
    assert [s.values["text"] for s in samples[:3]] == rows[0]["text"]
    assert {s.values["image"] for s in samples[:3]} == {tmp_path / base[0]["image"]}  # one file, three rows
    assert {s.group for s in samples[:3]} == {"s0"} and {s.label for s in samples[:3]} == {"ball"}
    assert samples[3].values["text"] == "one caption only" and samples[3].group == "kept"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ([], r"key 'text': a list must hold one or more non-empty strings \(captions\), got \[\]"),
        (["fine", 3], r"key 'text': a list must hold one or more non-empty strings"),
        (["fine", "  "], r"key 'text': a list must hold one or more non-empty strings"),
    ],
)
def test_bad_caption_lists_name_the_line_and_key(tmp_path, text, message):
    row = {**paired_rows(tmp_path, 1, ["image"], labels=None)[0], "text": text}
    with pytest.raises(ManifestError, match=rf"m\.jsonl:1: {message}"):
        load_manifest(write_rows(tmp_path / "m.jsonl", [row]))


def test_caption_lists_train_and_evaluate_as_groups_through_the_cli(tmp_path):
    base = paired_rows(tmp_path, 24, ["image", "text"], labels=None)
    rows = [{**r, "text": [f"first caption of {i}", f"second caption of {i}"]} for i, r in enumerate(base)]
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    run_dir = tmp_path / "run"
    cfg = compose_config(
        ["data=manifest", f"data.train={manifest}", "data.val_fraction=0.3", "graph.modalities=[image,text]",
         "data.batch_size=4", "trainer.max_steps=2", "+trainer.limit_val_batches=0"],
        run_dir=str(run_dir),
        synthetic=False,
    )  # fmt: skip
    run(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["instance_relevance"] == "group"
    per_query = np.load(run_dir / "per_query.npz")
    assert len(np.unique(per_query["ids"])) == len(per_query["ids"]) == metrics["gallery_size"]
    assert metrics["gallery_size"] % 2 == 0  # both captions of every held-out image, never one of them
    # The two rows of an image are one source: every interval resamples the held-out images (groups), and
    # metrics.json says so; resampling the rows as independent would make the intervals too narrow.
    from bindspace.evaluation.stats import DEFAULT_BOOTSTRAP

    assert metrics["bootstrap"] == {**DEFAULT_BOOTSTRAP.as_dict(), "unit": "group"}
    groups = per_query["groups"]
    assert len(np.unique(groups)) == metrics["gallery_size"] // 2
    assert all(np.sum(groups == g) == 2 for g in np.unique(groups))
    for pair, entry in metrics["retrieval"].items():
        values = per_query[f"retrieval/{pair}/AP"].astype(np.float64)
        clustered = 100 * DEFAULT_BOOTSTRAP.intervals(values, groups)
        np.testing.assert_allclose(entry["mAP_ci"], clustered, rtol=0, atol=1e-3)
    image_queries = per_query["retrieval/image->text/AP"].astype(np.float64)
    rows = 100 * DEFAULT_BOOTSTRAP.intervals(image_queries)  # both copies of an image score alike
    low, high = metrics["retrieval"]["image->text"]["mAP_ci"]
    assert high - low > 1.2 * (rows[1] - rows[0]) > 0


def unnamed_captioned(root, prefix: str, n: int) -> list[dict]:
    """``n`` images without ids (row numbers name them), each with two captions: one group per row."""
    base = paired_rows(root, n, ["image", "text"], prefix=prefix, labels=None)
    return [{"image": r["image"], "text": [f"{prefix}: first of {i}", f"{prefix}: second of {i}"]} for i, r in
            enumerate(base)]  # fmt: skip


def test_sources_without_ids_keep_their_rows_apart_in_training_and_held_out_groups(tmp_path):
    """Row 3 of one source and row 3 of another are two samples (they shared a group: each other's positives
    in InfoNCE, and one held-out source scored as matches of each other)."""
    a = load_manifest(write_rows(tmp_path / "a.jsonl", unnamed_captioned(tmp_path, "a", 4))).samples
    b = load_manifest(write_rows(tmp_path / "b.jsonl", unnamed_captioned(tmp_path, "b", 4))).samples
    assert a[6].id == b[6].id == "3#0" and a[6].group == b[6].group == "3"  # the same names ...
    index = group_index([*a, *b])
    assert len(set(index.values())) == 8 and index[group_of(a[6])] != index[group_of(b[6])]  # ... two groups
    assert index[group_of(a[6])] == index[group_of(a[7])]  # the captions of one row stay one group
    assert stable_group_id(a[6]) != stable_group_id(b[6]) and stable_group_id(a[6]) == stable_group_id(a[7])


def test_group_ids_do_not_depend_on_where_the_data_is_mounted(tmp_path):
    """Ranks on two nodes that mount the same sources at different paths number the groups alike (the loss
    all-gathers the ids); sorting by path numbered them by where each node mounts the data."""
    from dataclasses import replace

    a = load_manifest(write_rows(tmp_path / "a.jsonl", unnamed_captioned(tmp_path, "a", 4))).samples
    b = load_manifest(write_rows(tmp_path / "b.jsonl", unnamed_captioned(tmp_path, "b", 4))).samples

    def mounted(samples, path):
        return [replace(s, origin=path) for s in samples]

    node1 = [*mounted(a, "/mnt/z/a.jsonl"), *mounted(b, "/mnt/z/b.jsonl")]
    node2 = [*mounted(a, "/data/b-side/a.jsonl"), *mounted(b, "/data/a-side/b.jsonl")]  # b's path sorts first here
    ids1, ids2 = group_index(node1), group_index(node2)
    assert [ids1[group_of(s)] for s in node1] == [ids2[group_of(s)] for s in node2]


def test_held_out_groups_of_several_sources_without_ids_through_the_cli(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", unnamed_captioned(tmp_path, "a", 16))
    b = write_rows(tmp_path / "b.jsonl", unnamed_captioned(tmp_path, "b", 16))
    run_dir = tmp_path / "run"
    cfg = compose_config(
        ["data=manifest", f"data.sources=[{{path: '{a}', weight: 1.0}}, {{path: '{b}', weight: 1.0}}]",
         "data.val_fraction=0.4", "graph.modalities=[image,text]", "data.batch_size=4", "trainer.max_steps=2",
         "+trainer.limit_val_batches=0"],
        run_dir=str(run_dir),
        synthetic=False,
    )  # fmt: skip
    run(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    groups = np.load(run_dir / "per_query.npz")["groups"]
    # The split hashes the row number in each source, so row k of a and row k of b are held out together:
    # each held-out group is one row's two captions, never four rows of two sources.
    assert metrics["gallery_size"] >= 8 and metrics["gallery_size"] % 4 == 0
    assert len(np.unique(groups)) == metrics["gallery_size"] // 2
    assert all(np.sum(groups == g) == 2 for g in np.unique(groups))


# ---- data.captions=sample: one caption drawn per training visit ----------------------------------


def test_caption_sampling_draws_per_visit_deterministically_and_scores_every_caption(tmp_path):
    base = paired_rows(tmp_path, 16, ["image", "text"], labels=None)
    rows = [{**r, "text": [f"caption {c} of picture {i}" for c in range(4)]} for i, r in enumerate(base)]
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    kept = load_manifest(manifest, captions="sample").samples
    assert len(kept) == 16 and kept[0].alternatives["text"] == tuple(rows[0]["text"])

    def drawn(world: int, rank: int) -> dict[tuple[int, str], str]:
        dm = build([("image", "text")], train=str(manifest), val_fraction=0.25, captions="sample", batch_size=4)
        dm.trainer = None
        steps = dm.train_dataloader().dataset
        steps.rank, steps.world_size, steps.batch_size = rank, world, 4 // world
        out = {}
        for step in range(12):
            batch = steps[step]["image|text"]
            for sample_id, tokens in zip(batch["sample_id"], batch["text"]["input_ids"], strict=True):
                out[(step, sample_id)] = tokens.tolist()
        return out, dm

    one, dm = drawn(1, 0)
    assert one == drawn(1, 0)[0]  # the same draws on a rebuild (resume is exact)
    split = {**drawn(2, 0)[0], **drawn(2, 1)[0]}
    assert split == one  # per global row: two ranks draw what one process draws
    by_sample: dict[str, set] = {}
    for (_, sample_id), tokens in one.items():
        by_sample.setdefault(sample_id, set()).add(tuple(tokens))
    assert any(len(v) > 1 for v in by_sample.values())  # revisits draw other captions
    assert all("#" not in s for s in by_sample)  # training keeps one sample per picture
    held = [s.id for s in dm.val_set.samples]
    assert held and all("#" in s for s in held) and len(held) % 4 == 0  # held out: every caption, scored


def test_caption_sampling_with_the_cache_of_a_frozen_text_encoder_is_refused():
    from bindspace.config import build_run_spec
    from bindspace.train import plain_config

    cfg = compose_config(["data=manifest", "data.train=x.jsonl", "data.captions=sample", "cache.frozen_features=true",
                          "modalities.text.trunk.freeze=true"], synthetic=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.captions=sample: text is frozen and cache\.frozen_features=true"):
        build_run_spec(plain_config(cfg))


def test_a_bad_captions_value_names_the_key(tmp_path):
    manifest = write_rows(tmp_path / "m.jsonl", paired_rows(tmp_path, 8, ["image", "text"], labels=None))
    with pytest.raises(ConfigError, match=r"data\.captions must be one of \['all', 'sample'\], got 'each'"):
        build([("image", "text")], train=str(manifest), captions="each")
