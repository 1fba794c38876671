"""Issue 15, part 3 (depth): ``model=huge``'s depth input is ImageBind's disparity from the same file.

ImageBind ships no depth loader (ImageBind issues 14, 69, 122, 134). Its depth encoder was trained on
Omnivore's SUN RGB-D / NYU-D pipeline, which Meta published in pieces: the depth -> disparity snippet
(omnivore issue 12: depth in mm / 1000 clipped to [0.01, 50] m, ``baseline * focal / depth``),
``DepthNorm(max_depth=75.0, clamp_max_before_scale=True)`` (``omnivore/transforms.py``) and the demo's
``Resize(224)``, ``CenterCrop(224)``, ``Normalize(0.0418, 0.0295)``. The reference below strings those
together as published, with torchvision's own transforms for the geometry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from bindspace.errors import ConfigError
from bindspace.modalities import get_modality
from bindspace.modalities.depth import NYUD_BASELINE_M, NYUD_FOCAL_PX, DepthInput


def omnivore_depth_norm(image: torch.Tensor, max_depth: float, min_depth: float = 0.01) -> torch.Tensor:
    """Omnivore's ``DepthNorm(max_depth, clamp_max_before_scale=True)`` on the depth channel."""
    depth = image.clamp(min=min_depth)
    depth = depth.clamp(max=max_depth)
    depth /= max_depth
    return depth


def reference_disparity(path, baseline: float, focal: float, min_depth: float = 0.01, max_depth: float = 50):
    """Omnivore issue 12's conversion, then the demo's RGB-D transform (depth channel)."""
    depth = np.array(Image.open(path)).astype(np.float32)
    depth_in_meters = np.clip(depth / 1000.0, min_depth, max_depth)
    disparity = torch.from_numpy(baseline * focal / depth_in_meters).float()[None]
    transform = T.Compose(
        [
            lambda x: omnivore_depth_norm(x, max_depth=75.0),
            T.Resize(224),
            T.CenterCrop(224),
            T.Normalize(mean=[0.0418], std=[0.0295]),
        ]
    )
    return transform(disparity)


def write_depth_png(path, width: int, height: int, seed: int = 0) -> None:
    """A 16-bit depth PNG in mm: smooth walls, sharp edges, near and far values and missing readings."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(300, 9000, (height // 8 + 1, width // 8 + 1))
    mm = np.kron(coarse, np.ones((8, 8)))[:height, :width]
    mm += np.linspace(0, 500, width)[None]
    mm[rng.random((height, width)) < 0.05] = 0  # holes: "no reading"
    mm[: height // 10, : width // 10] = 60_000  # beyond the 50 m clip
    mm[-3:, -3:] = 150  # nearer than baseline x focal / 75 px: the disparity clamp
    Image.fromarray(mm.astype(np.uint16)).save(path)


@pytest.mark.parametrize(
    ("width", "height"),
    [(640, 480), (730, 530), (561, 427), (224, 224), (300, 500), (97, 150)],  # SUN kv1, kv2, NYU-D crop, ...
)
def test_huge_depth_equals_omnivores_published_pipeline(tmp_path, width, height):
    path = tmp_path / "d.png"
    write_depth_png(path, width, height)
    spec = get_modality("depth")
    cfg = spec.default_config("huge").input
    out = spec.transform(spec.read(path), cfg)
    reference = reference_disparity(path, NYUD_BASELINE_M, NYUD_FOCAL_PX)
    assert out.shape == reference.shape == (1, 224, 224)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    # The batch path (renders, cached tensors) gives the same numbers.
    raw = torch.from_numpy(spec.read(path))
    torch.testing.assert_close(spec.transform_batch(raw[None].expand(2, -1, -1), cfg)[1], out, atol=0, rtol=0)


def test_another_camera_sets_its_own_baseline_times_focal(tmp_path):
    path = tmp_path / "d.png"
    write_depth_png(path, 640, 480, seed=1)
    spec = get_modality("depth")
    realsense = 0.095 * 570.0  # omnivore issue 12's RealSense baseline, an fx of 570 px
    cfg = spec.config_from_dict({"input": {**vars(spec.default_config("huge").input), "disparity_scale": realsense}})
    out = spec.transform(spec.read(path), cfg.input)
    torch.testing.assert_close(out, reference_disparity(path, 0.095, 570.0), atol=1e-5, rtol=0)


def test_default_presets_keep_standardised_inverse_depth():
    spec = get_modality("depth")
    cfg = DepthInput(size=4)
    depth = torch.tensor([[0.0, 0.5, 2.0, 100.0]] * 4)  # a hole, near, mid, beyond max_depth
    out = spec.transform(depth.numpy(), cfg)
    expected = (1 / depth.clamp(cfg.min_depth, cfg.max_depth) - cfg.mean) / cfg.std
    torch.testing.assert_close(out[0], expected, atol=1e-6, rtol=0)
    assert spec.default_config("tiny").input.max_disparity is None
    assert spec.default_config("tiny").input.disparity_scale == 1.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"min_depth": 0.0}, r"modalities\.depth\.input\.min_depth and max_depth must satisfy"),
        ({"min_depth": 5.0, "max_depth": 2.0}, r"min_depth < max_depth"),
        ({"disparity_scale": -1.0}, r"modalities\.depth\.input\.disparity_scale must be > 0"),
        ({"max_disparity": 0.0}, r"modalities\.depth\.input\.max_disparity must be null or > 0\.01"),
        ({"std": 0.0}, r"modalities\.depth\.input\.std must be > 0"),
    ],
)
def test_bad_depth_settings_fail_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        get_modality("depth").config_from_dict({"input": override})
