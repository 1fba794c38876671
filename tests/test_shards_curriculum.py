"""``data=shards`` under a curriculum: every step streams the edges of its own stage.

The stream's state lives in DataLoader workers, which render steps ahead of training (and Lightning
fetches one batch ahead of any stream), so a stage index written when the stage begins reached batches
too late: the first step of every stage lacked the new edge with ``data.num_workers=0``, and with 2
workers a short stage never trained it. The stream now derives each step's stage from the step itself.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import compose_config
from test_manifest import paired_rows, tiny_configs, write_rows

from bindspace.data.manifest import load_manifest
from bindspace.data.shard_datamodule import ShardStream
from bindspace.data.shards import load_index, write_shards
from bindspace.errors import ConfigError
from bindspace.train import run

MODALITIES = ["image", "text", "audio"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards_curriculum")
    train = write_rows(root / "train.jsonl", paired_rows(root, 12, MODALITIES, "t"))
    write_shards(load_manifest(train), root / "train", shard_size=3)  # 4 shards: enough for 2 workers
    val = write_rows(root / "val.jsonl", paired_rows(root, 4, MODALITIES, "v"))
    return root, val


def overrides(shards, *extra: str) -> list[str]:
    root, val = shards
    return [
        "data=shards",
        f"data.train={root / 'train'}",
        f"data.val={val}",
        "data.batch_size=2",
        "graph.modalities=[image,text,audio]",
        # image-text for steps 1-2, +audio for steps 3-4
        "curriculum=progressive",
        "curriculum.order=[audio]",
        "curriculum.stage.steps=2",
        "curriculum.stage.warmup_steps=1",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "checkpoint.every_n_train_steps=2",
        *extra,
    ]


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def without_workers(shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("w0")
    metrics = run(compose_config(overrides(shards, "data.num_workers=0"), run_dir=str(run_dir), synthetic=False))
    return run_dir, metrics


EXPECTED_EDGE_STEPS = {"image|text": 4, "image|audio": 2}  # every edge trains every step of its stages


@pytest.mark.slow
def test_every_stage_trains_its_edges_from_its_first_step(without_workers):
    _, metrics = without_workers
    assert metrics["budget"]["edge_steps"] == EXPECTED_EDGE_STEPS
    assert [s["trained_edges"] for s in metrics["stages"]] == [["image|text"], ["image|text", "image|audio"]]


@pytest.mark.slow
def test_a_worker_prefetching_across_the_boundary_changes_nothing(shards, without_workers, tmp_path):
    """One worker reads the shards exactly as the main process does (the same single reader), but renders
    steps ahead of training: the weights are those of the run without workers, to the bit."""
    run_dir, _ = without_workers
    metrics = run(compose_config(overrides(shards, "data.num_workers=1"), run_dir=str(tmp_path), synthetic=False))
    assert metrics["budget"]["edge_steps"] == EXPECTED_EDGE_STEPS
    a, b = weights(run_dir / "checkpoints" / "last.ckpt"), weights(tmp_path / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs with data.num_workers=1")


@pytest.mark.slow
def test_two_workers_and_a_resume_at_the_boundary_train_the_same_edges(shards, without_workers, tmp_path):
    """Two workers split the shards between two readers, and a resumed stream starts a fresh shuffle (both
    documented), so their samples differ; which edges train at every step does not."""
    run_dir, _ = without_workers
    two = run(compose_config(overrides(shards, "data.num_workers=2"), run_dir=str(tmp_path / "w2"), synthetic=False))
    assert two["budget"]["edge_steps"] == EXPECTED_EDGE_STEPS
    assert two["stages"][1]["trained_edges"] == ["image|text", "image|audio"]
    ckpt = run_dir / "checkpoints" / "step000002.ckpt"  # the end of the first stage
    resumed = run(
        compose_config(
            overrides(shards, "data.num_workers=2", f"ckpt_path={ckpt}"), run_dir=str(tmp_path / "r"), synthetic=False
        )
    )
    assert resumed["budget"]["edge_steps"] == EXPECTED_EDGE_STEPS


def _stream(shards, starts, start_step=0, accumulate=1) -> ShardStream:
    folder, index = load_index(shards[0] / "train")
    edges = [("image", "text"), ("image", "audio")]
    return ShardStream(
        folder, index, edges, [edges[:1], edges], 2, 0, tiny_configs(MODALITIES), None, shuffle_buffer=4,
        start_step=start_step, stage_starts=starts, accumulate=accumulate,
    )  # fmt: skip


def test_the_stream_draws_the_edges_of_each_steps_stage(shards):
    """Stage 1 starts at step 2: the stream knows it without being told when the stage begins."""
    keys = [sorted(b) for b in itertools.islice(iter(_stream(shards, [0, 2])), 4)]
    assert keys == [["image|text"]] * 2 + [["image|audio", "image|text"]] * 2
    # Resumed at step 3, two batches per step (trainer.accumulate_grad_batches=2): items 6, 7 are step 3.
    keys = [sorted(b) for b in itertools.islice(iter(_stream(shards, [0, 4], start_step=3, accumulate=2)), 4)]
    assert keys == [["image|text"]] * 2 + [["image|audio", "image|text"]] * 2


def test_a_stage_whose_end_is_not_known_in_advance_streams_the_later_edges_too(shards):
    """After a plateau stage the next stage's start is unknown: every edge of the later stages is drawn at
    every step (the step keeps those of its stage), so what a step trains never depends on prefetching."""
    keys = [sorted(b) for b in itertools.islice(iter(_stream(shards, [0, None])), 3)]
    assert keys == [["image|audio", "image|text"]] * 3


@pytest.mark.slow
def test_a_plateau_stage_over_shards_gives_the_same_weights_with_a_prefetching_worker(shards, tmp_path):
    """The stage after a plateau starts at a step no worker can know when it renders: the edges of both
    stages are streamed at every step, and each step trains exactly its stage's."""
    # min_delta is unreachable: the validation after step 4 is "no improvement", so stage b starts at step 5.
    plateau = "{metric: val/mean_R@1, patience: 1, min_delta: 1000, max_steps: 50}"
    stages = f"[{{name: a, edges: [[image,text]], plateau: {plateau}}}, {{name: b, edges: all}}]"
    runs = []
    for workers in (0, 1):
        extra = [f"curriculum.stages={stages}", "trainer.max_steps=6", "trainer.val_check_interval=2"]
        # No final evaluation: it would score the validation set the plateau is chosen on (refused).
        extra += [f"data.num_workers={workers}", "eval.final=false"]
        cfg = overrides(shards, *extra)
        cfg = [o for o in cfg if not o.startswith(("curriculum=", "curriculum.order", "curriculum.stage."))]
        metrics = run(compose_config(cfg, run_dir=str(tmp_path / f"w{workers}"), synthetic=False))
        assert [(s["name"], s["step"]) for s in metrics["stages"]] == [("a", 5), ("b", 6)]
        assert metrics["budget"]["edge_steps"] == {"image|text": 6, "image|audio": 1}
        runs.append(weights(tmp_path / f"w{workers}" / "checkpoints" / "last.ckpt"))
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=0, atol=0, msg=f"{k} differs with a worker")


@pytest.mark.slow
def test_resuming_epoch_stages_with_another_epoch_length_is_refused_before_a_step(shards, tmp_path):
    """Stages in epochs start where the epoch length puts them; the stream draws by those planned starts, so
    a checkpoint whose stage started elsewhere (another data.batch_size) cannot be continued exactly."""
    epochs = ["curriculum.stage.steps=null", "+curriculum.stage.epochs=1", "trainer.max_steps=8"]
    run(compose_config(overrides(shards, *epochs), run_dir=str(tmp_path / "a"), synthetic=False))  # 6 steps/epoch
    ckpt = tmp_path / "a" / "checkpoints" / "step000008.ckpt"
    resumed = overrides(shards, *epochs, "trainer.max_steps=10", "data.batch_size=3", f"ckpt_path={ckpt}")
    with pytest.raises(ConfigError, match=r"curriculum.stages\[1\] \(\+audio\) started at step 6 .* now step 4 "):
        run(compose_config(resumed, run_dir=str(tmp_path / "b"), synthetic=False))
    saved = tmp_path / "b" / "checkpoints" / "last.ckpt"  # the run's exit checkpoint, if any: no step trained
    assert not saved.exists() or torch.load(saved, map_location="cpu", weights_only=True)["global_step"] == 8
