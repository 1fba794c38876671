"""A short real-data run: spoken digits, image anchor, audio->text never trained, yet above chance."""

from __future__ import annotations

import pytest
from conftest import compose_config

from bindspace.train import run

pytestmark = pytest.mark.slow

# A small build (seconds) and a short run; the full benchmark is `experiment=spoken_digits`.
SHORT = [
    "experiment=spoken_digits",
    "data.n_train_per_edge=400",
    "data.n_val=100",
    "data.batch_size=32",
    "trainer.max_steps=250",
    "trainer.val_check_interval=250",
    "optim.warmup_steps=20",
]


def test_emergent_audio_to_text_zero_shot_beats_chance(tmp_path, monkeypatch):
    monkeypatch.setenv("BINDSPACE_CACHE", str(tmp_path / "cache"))
    cfg = compose_config(SHORT, run_dir=str(tmp_path / "run"), synthetic=False)
    metrics = run(cfg)
    assert metrics["retrieval"]["audio->text"]["trained"] is False  # audio and text never met
    assert metrics["gallery_size"] == 100
    top1 = metrics["zero_shot"]["audio"]["top1"]  # 10 digits: chance is 10%
    assert top1 > 20.0, f"emergent audio->text zero-shot {top1:.1f}% is not clearly above chance (10%)"
    assert metrics["retrieval_class"]["audio->text"]["R@1"] > 20.0
