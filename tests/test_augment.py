"""Augmentation per modality (issue 16, part 5): one override each, random per (seed, step, sample),
identical across DDP ranks and on resume (also run through the real CLI in tests/test_ddp.py), off in
evaluation, refused with the frozen-feature cache, and each operation doing what it says."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from bindspace.config import build_run_spec
from bindspace.data.augment import AUGMENTERS, augment_batch, parse_augment, row_generators
from bindspace.data.datamodule import SyntheticDataModule
from bindspace.data.steps import StepBatches
from bindspace.errors import ConfigError
from bindspace.modalities import get_modality
from bindspace.modalities.text import BYTE_OFFSET

ALL = ["image", "text", "audio", "depth", "thermal", "imu"]


def spec_of(overrides: list[str]):
    return build_run_spec(OmegaConf.to_container(compose_config(overrides), resolve=True))


@pytest.fixture(scope="module")
def augmented():
    spec = spec_of([f"modalities.{m}.augment=default" for m in ALL])
    return spec, SyntheticDataModule(spec.modalities, spec.edges, batch_size=8)


@pytest.fixture(scope="module")
def plain():
    spec = spec_of([])
    return spec, SyntheticDataModule(spec.modalities, spec.edges, batch_size=8)


def flat(batch) -> dict[str, torch.Tensor]:
    out = {}
    for key, edge in batch.items():
        for m, x in edge.items():
            for name, t in x.items() if isinstance(x, dict) else [("", x)]:
                out[f"{key}/{m}/{name}"] = t
    return out


def test_default_turns_every_modality_on_and_changes_only_training_inputs(augmented, plain):
    spec, dm = augmented
    assert {m: c.augment for m, c in spec.modalities.items()} == {m: dict(AUGMENTERS[m].default) for m in ALL}
    aug, ref = flat(dm.train_dataloader().dataset[3]), flat(plain[1].train_dataloader().dataset[3])
    assert aug.keys() == ref.keys()
    for name, x in aug.items():
        assert x.shape == ref[name].shape and x.dtype == ref[name].dtype, name
        changed, modality = not torch.equal(x, ref[name]), name.split("/")[1]
        assert changed == (modality in ALL) or name.endswith("attention_mask"), name  # ids, labels: never
    # Evaluation never sees augmentation: the held-out sets are the plain ones.
    held, held_ref = dm.heldout_set("val").__getitems__(range(8)), plain[1].heldout_set("val").__getitems__(range(8))
    for m in ALL:
        a, b = held[m], held_ref[m]
        assert all(torch.equal(a[k], b[k]) for k in a) if isinstance(a, dict) else torch.equal(a, b)


def test_random_per_seed_step_and_row_so_ranks_and_resume_agree(augmented):
    _, dm = augmented
    sources, stages, aug = dm.edge_sources(), [dm.edges], dm.augmentations()
    one = StepBatches(sources, stages, 8, 0, 0, 1, aug, dm.configs)
    again = flat(StepBatches(sources, stages, 8, 0, 0, 1, aug, dm.configs)[5])  # a resumed run's loader
    assert all(torch.equal(x, again[k]) for k, x in flat(one[5]).items())
    halves = [flat(StepBatches(sources, stages, 4, 0, r, 2, aug, dm.configs)[5]) for r in (0, 1)]
    for k, x in flat(one[5]).items():
        assert torch.equal(x, torch.cat([h[k] for h in halves])), k
    other_step, other_seed = flat(one[6]), flat(StepBatches(sources, stages, 8, 1, 0, 1, aug, dm.configs)[5])
    assert not torch.equal(other_step["image|audio/image/"], flat(one[5])["image|audio/image/"])
    assert not torch.equal(other_seed["image|audio/audio/"], flat(one[5])["image|audio/audio/"])


def test_presets_mappings_and_bad_values_in_one_line():
    assert parse_augment("image", None) is None and parse_augment("image", "none") is None
    assert parse_augment("audio", {"gain_db": 3}) == {"gain_db": 3.0}
    spec = spec_of(["modalities.imu.augment={rotate: 0.5, noise: 0.1}"])
    assert spec.modalities["imu"].augment == {"rotate": 0.5, "noise": 0.1}
    bad = {
        "modalities.image.augment={crop_scal: 0.5}": "unknown key 'crop_scal' (did you mean 'crop_scale'?)",
        "modalities.image.augment={flip: 1.5}": "modalities.image.augment.flip must be a number in [0.0, 1.0]",
        "modalities.audio.augment=strong": "modalities.audio.augment='strong': use default, none, or a mapping",
        "modalities.imu.augment={jitter: 0.1}": "imu takes",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError) as err:
            spec_of([override])
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_refused_with_the_frozen_feature_cache_for_that_modality():
    frozen = ["cache.frozen_features=true", "modalities.text.trunk.freeze=true"]
    with pytest.raises(ConfigError, match=r"modalities\.text\.augment: text is frozen and cache\.frozen_features"):
        spec_of([*frozen, "modalities.text.augment=default"])
    spec_of([*frozen, "modalities.image.augment=default"])  # a trained modality may be augmented beside it


def test_the_cache_never_serves_an_augmented_modality_however_it_is_frozen():
    """``trunk.unlocked_layers=0`` freezes a trunk without a final norm wholly, which the config checks (trunk.freeze,
    curriculum freezing) do not see: the cache served the first augmented view's feature at every later visit."""
    from bindspace.training.pipeline import build_feature_cache, plain_config

    cfg = plain_config(compose_config(
        ["graph.modalities=[image,text]", "cache.frozen_features=true", "modalities.text.trunk.freeze=true",
         "modalities.image.augment=default", "modalities.image.trunk.unlocked_layers=0"], run_dir="unused",
    ))  # fmt: skip
    spec = build_run_spec(cfg)
    model = spec.build_model()
    for m in ("image", "text"):
        model.set_frozen(m, ("preprocessor", "trunk"))  # both wholly frozen, however the config froze them
    assert build_feature_cache(cfg, spec).active(model) == ["text"]


def generators(n: int, step: int = 0) -> list[torch.Generator]:
    return row_generators(0, step, 0, "m", range(n))


def test_image_flip_crop_and_jitter_do_what_they_say():
    cfg = get_modality("image").default_config().input
    x = torch.randn(4, 3, 16, 16)
    flipped = AUGMENTERS["image"].apply(x.clone(), cfg, {"flip": 1.0}, generators(4))
    assert torch.equal(flipped, x.flip(-1))
    cropped = AUGMENTERS["image"].apply(x.clone(), cfg, {"crop_scale": 0.3}, generators(4))
    assert cropped.shape == x.shape and not torch.equal(cropped, x)
    # Jitter works on the un-normalised RGB in [0, 1]: the result maps back into it.
    jittered = AUGMENTERS["image"].apply(x.clone(), cfg, {"jitter": 0.5}, generators(4))
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    rgb = jittered * std + mean
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5


def test_audio_gain_is_a_constant_within_its_bound_and_masks_are_bands():
    cfg = get_modality("audio").default_config().input
    x = torch.randn(6, 1, 1, 32, 40)
    gained = AUGMENTERS["audio"].apply(x, cfg, {"gain_db": 6.0}, generators(6))
    shift = (gained - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)  # one constant per sample
    bound = 6.0 * math.log(10) / 10 / cfg.std
    assert (shift[:, 0].abs() <= bound + 1e-6).all() and shift[:, 0].abs().max() > 0
    masked = AUGMENTERS["audio"].apply(x, cfg, {"masks": 1, "freq_mask": 0.25, "time_mask": 0.25}, generators(6))
    zero = masked[:, 0, 0] == 0
    full_rows, full_cols = zero.all(dim=2), zero.all(dim=1)  # masked mel bins, masked frames
    assert full_rows.any() or full_cols.any()
    assert torch.equal(masked[:, 0, 0][~zero], x[:, 0, 0][~zero])  # nothing else changed
    assert full_rows.sum(1).max() <= 8 and full_cols.sum(1).max() <= 10


def test_imu_rotation_turns_both_sensors_alike_and_keeps_their_norms():
    cfg = get_modality("imu").default_config().input
    x = torch.randn(5, 6, 50)
    turned = AUGMENTERS["imu"].apply(x, cfg, {"rotate": 1.0}, generators(5))
    for triad in (slice(0, 3), slice(3, 6)):
        torch.testing.assert_close(turned[:, triad].norm(dim=1), x[:, triad].norm(dim=1))
    rot = torch.linalg.lstsq(x[0, :3].T, turned[0, :3].T).solution.T  # one matrix for the whole window
    torch.testing.assert_close(turned[0, 3:], rot @ x[0, 3:], atol=1e-4, rtol=1e-4)
    small = AUGMENTERS["imu"].apply(x, cfg, {"rotate": 0.05}, generators(5))
    cos = torch.nn.functional.cosine_similarity(small[:, :3], x[:, :3], dim=1)
    assert cos.min() > math.cos(0.05 * math.pi) - 1e-4  # no vector turns by more than 9 degrees


@pytest.mark.parametrize("tokenizer", ["bytes", "clip_bpe"])
def test_word_dropout_leaves_out_whole_words_and_keeps_the_special_tokens(tokenizer):
    text = get_modality("text")
    cfg = dataclasses.replace(text.default_config().input, tokenizer=tokenizer, context_length=40)
    captions = ["a small red sphere spinning fast near the left edge"] * 16
    x = text.transform_batch(captions, cfg)
    out = AUGMENTERS["text"].apply(x, cfg, {"word_dropout": 0.5}, generators(16))
    words = captions[0].split()
    lengths = out["attention_mask"].sum(1)
    assert (lengths < x["attention_mask"].sum(1)).any() and (lengths >= 3).all()
    for row in range(16):
        ids = out["input_ids"][row, : int(lengths[row])].tolist()
        last = int(x["attention_mask"][row].sum()) - 1
        assert ids[0] == x["input_ids"][row, 0] and ids[-1] == x["input_ids"][row, last]  # start, end kept
        assert (out["input_ids"][row, int(lengths[row]) :] == 0).all()
        if tokenizer == "bytes":
            kept = bytes(i - BYTE_OFFSET for i in ids[1:-1]).decode().split()
        else:
            kept = [w for w in words if any(text.transform_batch([w], cfg)["input_ids"][0, 1] == i for i in ids)]
            body = [i for i in ids[1:-1]]
            rebuilt = text.transform_batch([" ".join(kept)], cfg)["input_ids"][0, 1 : 1 + len(body)].tolist()
            assert rebuilt == body  # the kept tokens are exactly the tokens of the kept words
        assert kept and set(kept) <= set(words)
        assert kept == [w for w in words if w in kept]  # in order


def test_augment_batch_leaves_unlisted_modalities_and_ids_alone():
    batch = {"image": torch.randn(2, 3, 8, 8), "id": torch.tensor([4, 5])}
    cfg = {"image": get_modality("image").default_config()}
    out = augment_batch(batch, {"image": {"flip": 1.0}}, cfg, 0, 0, 0, [0, 1])
    assert torch.equal(out["id"], batch["id"]) and torch.equal(out["image"], batch["image"].flip(-1))
    assert augment_batch(batch, {}, cfg, 0, 0, 0, [0, 1]) == batch
    assert np.array_equal(out["id"].numpy(), [4, 5])
