"""Speed options change speed, not results: feature cache, gradient checkpointing, compile, bf16, channels_last."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from bindspace.config import build_run_spec
from bindspace.modalities import get_modality
from bindspace.training.feature_cache import FrozenFeatureCache, encoder_hash

pytestmark = pytest.mark.slow

# The image anchor frozen, as ImageBind freezes CLIP; two edges keep the runs at seconds.
FROZEN_ANCHOR = [
    "graph.edges=[[image,audio],[image,imu]]",
    "modalities.image.trunk.freeze=true",
    "trainer.max_steps=6",
    "eval.final=false",
    "+trainer.limit_val_batches=0",
    # dropout off: it is seeded per step, but cached and uncached runs draw it in different op orders
    "modalities.imu.trunk.drop_path=0.0",
    "modalities.imu.head.dropout=0.0",
]


def train(run_dir, *overrides):
    from bindspace.train import run

    run(compose_config([*FROZEN_ANCHOR, *overrides], str(run_dir)))
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_weights(a, b, rtol=1e-5, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return train(tmp_path_factory.mktemp("reference"))


def test_frozen_feature_cache_trains_identically_and_persists(tmp_path, reference):
    cached = train(tmp_path, "cache.frozen_features=true")
    assert_same_weights(reference, cached)
    files = sorted(p.name for p in (tmp_path / "feature_cache").rglob("*.pt"))
    assert files == ["image-audio.rank0.pt", "image-imu.rank0.pt"]
    state = torch.load(next((tmp_path / "feature_cache").rglob("image-audio.rank0.pt")), weights_only=True)
    assert state["features"].shape == (len(state["ids"]), 128) and len(set(state["ids"].tolist())) == len(state["ids"])


def test_feature_cache_under_a_freezing_curriculum_trains_identically(tmp_path):
    """progressive_frozen: the image anchor frozen whole from step 0, audio frozen once aligned; both cached."""
    from bindspace.train import run

    staged = [
        "graph.edges=[[image,audio],[image,imu]]", "curriculum=progressive_frozen", "curriculum.stage.steps=3",
        "curriculum.stage.warmup_steps=1", "trainer.max_steps=6", "eval.final=false", "+trainer.limit_val_batches=0",
        "modalities.imu.trunk.drop_path=0.0", "modalities.imu.head.dropout=0.0",
    ]  # fmt: skip
    weights = []
    for name, extra in (("plain", []), ("cached", ["cache.frozen_features=true"])):
        run(compose_config([*staged, *extra], str(tmp_path / name)))
        weights.append(torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert_same_weights(*weights)
    assert (tmp_path / "cached" / "feature_cache").exists()


def test_feature_cache_keeps_distilling_a_cached_encoder_whose_head_trains(tmp_path):
    """progressive_distill with the image trunk frozen (its head trains): stage 1 distils image and audio. The
    cached image embeddings were left out of the distillation term (only encoded inputs were kept for the
    teacher), so with the cache on the image head trained without it; the teacher now runs its head on the
    same cached features."""
    weights = [
        train(tmp_path / name, "curriculum=progressive_distill", "curriculum.stage.steps=3",
              "curriculum.stage.warmup_steps=1", *extra)
        for name, extra in (("plain", []), ("cached", ["cache.frozen_features=true"]))
    ]  # fmt: skip
    assert_same_weights(*weights)
    assert (tmp_path / "cached" / "feature_cache").exists()


def test_feature_cache_serves_what_the_encoder_computes():
    cfg = compose_config(["graph.edges=[[image,text]]", "modalities.image.trunk.freeze=true"])
    model = build_run_spec(OmegaConf.to_container(cfg, resolve=True)).build_model().eval()
    x = get_modality("image").dummy_input(model.configs["image"].input, 4, torch.Generator().manual_seed(0))
    cache = FrozenFeatureCache()
    ids = torch.tensor([10, 11, 12, 10])  # a sample drawn twice in one batch is computed once
    first = cache.features(model, "image", "image|text", ids, x)
    assert (cache.hits, cache.misses) == (0, 4) and len(cache.tables) == 1
    assert len(next(iter(cache.tables.values()))) == 3
    again = cache.features(model, "image", "image|text", ids, x)
    assert (cache.hits, cache.misses) == (4, 4) and torch.equal(first, again)
    with torch.no_grad():
        expected = model.encode("image", x)
    torch.testing.assert_close(model.encode_from_features("image", first)[:3], expected[:3])
    key = encoder_hash(model, "image")
    with torch.no_grad():
        next(model.trunks["image"].parameters()).add_(1.0)
    assert encoder_hash(model, "image") != key  # trained weights -> a different cache


def test_a_cache_dir_outside_the_run_folder_loses_its_stale_temporaries_not_a_live_write(tmp_path):
    """cache.dir may be shared and outside the run folder (which the run sweeps at its start): a table's
    first use removes the temporaries a killed write of this rank left, and leaves one a live writer holds."""
    import fcntl
    import os

    cache = FrozenFeatureCache(tmp_path / "shared_cache", rank=0)
    target = cache._file("8044224a4f187e98", "image|text", 0)
    target.parent.mkdir(parents=True)
    stale = target.parent / f".{target.name}.k2j4h6g8.tmp"
    live = target.parent / f".{target.name}.a1b2c3d4.tmp"
    other_rank = target.parent / f".{cache._file('8044224a4f187e98', 'image|text', 1).name}.z9y8x7w6.tmp"
    for path in (stale, live, other_rank):
        path.write_bytes(b"\0" * 100)
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what atomic_write holds until its rename
    try:
        assert len(cache._load("8044224a4f187e98", "image|text")) == 0
    finally:
        os.close(held)
    assert not stale.exists() and live.exists() and other_rank.exists()  # rank 1 sweeps its own


def test_gradient_checkpointing_gives_the_same_weights(tmp_path, reference):
    ckpt = train(
        tmp_path, "modalities.audio.trunk.grad_checkpointing=true", "modalities.imu.trunk.grad_checkpointing=true"
    )
    assert_same_weights(reference, ckpt)


def test_compiled_trunks_keep_their_names_and_train(tmp_path, reference):
    # aot_eager runs the real torch.compile pipeline (dynamo + AOTAutograd) without a C++ toolchain step.
    ckpt = train(tmp_path, "speed.compile=[audio,imu]", "speed.compile_backend=aot_eager")
    assert_same_weights(reference, ckpt, rtol=1e-4, atol=1e-5)


def test_bf16_mixed_and_channels_last_train_to_finite_weights(tmp_path):
    from bindspace.train import run

    metrics = run(
        compose_config(
            [
                "graph.edges=[[image,audio]]",
                "trainer.precision=bf16-mixed",
                "speed.channels_last=true",
                "trainer.max_steps=4",
            ],
            str(tmp_path),
        )
    )
    assert metrics["steps"] == 4 and metrics["retrieval"]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert state["model.preprocessors.image.proj.weight"].dtype == torch.float32  # bf16 is autocast, not storage
