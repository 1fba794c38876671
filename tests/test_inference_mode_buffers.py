"""The audio transform's reused work buffers survive a switch out of ``torch.inference_mode``.

``bindspace-embed`` and ``bindspace-search`` transform under inference mode; a buffer made there is an
inference tensor, which cannot be written outside it. Found by running ``bindspace-embed``'s ``main``
and then ``BindSpace.embed`` in one process (tests/test_imagebind_clis.py).
"""

from __future__ import annotations

import torch

from bindspace.modalities import get_modality


def test_audio_transforms_alike_inside_and_after_inference_mode():
    spec = get_modality("audio")
    cfg = spec.default_config("tiny").input
    wave = torch.randn(int(cfg.sample_rate * cfg.clip_seconds * 2), generator=torch.Generator().manual_seed(0))
    sample = (wave.numpy(), cfg.sample_rate)
    with torch.inference_mode():
        inside = spec.transform(sample, cfg).clone()
    after = spec.transform(sample, cfg)  # raised "Inplace update to inference tensor outside InferenceMode"
    assert torch.equal(inside, after) and not after.is_inference()
