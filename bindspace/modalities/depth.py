"""Metric depth maps, encoded as disparity by a 1-channel ViT (ImageBind: 384 wide, 12 blocks, 8 heads).

ImageBind converts depth to disparity before its encoder, because disparity is scale-normalised and
behaves like an image (near things are bright). The transform, in ImageBind's order:

1. depth in metres clamped to ``[min_depth, max_depth]`` (0 = "no reading" becomes ``min_depth``);
2. ``disparity = disparity_scale / depth``: with the camera's stereo baseline (m) times its focal
   length (px) as the scale this is the disparity in pixels; with 1 (the default) it is 1/depth;
3. with ``max_disparity`` set, Omnivore's ``DepthNorm``: disparity clamped to ``[0.01, max_disparity]``
   and divided by ``max_disparity``;
4. resize of the shorter side and centre crop (bilinear, antialiased, torchvision's geometry);
5. standardised with ``mean``/``std``.

``model=huge`` sets ImageBind's recipe, the one Omnivore published for SUN RGB-D and NYU-D
(omnivore issue 12, ``DepthNorm(max_depth=75, clamp_max_before_scale=True)`` and
``Normalize(0.0418, 0.0295)`` in its demo): depth in [0.01, 50] m, the NYU-D Kinect's baseline x focal
length (0.075 m x 518.857901 px), disparity clamped at 75 px. Data from another camera sets
``disparity_scale`` to its own baseline x focal length. The other presets keep 1/depth in 1/m,
standardised around indoor ranges (1-10 m -> 0.1-1.0 /m); set ``mean``/``std`` to your data's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from bindspace.errors import ConfigError, DataFileError
from bindspace.modalities._image_ops import dummy_image, resize_center_crop, to_chw_float
from bindspace.modalities.base import ModalitySpec, register_modality
from bindspace.modalities.files import PathLike, as_plane, checked_file, load_npy, read_gray_image, to_float32
from bindspace.nn.layers import PatchTokenizer

# ImageBind / Omnivore's disparity recipe (see the module docstring).
NYUD_BASELINE_M = 0.075  # Kinect v1 stereo baseline, as in omnivore issue 12 ("kv1")
NYUD_FOCAL_PX = 518.857901  # NYU-D's published colour-camera fx
DEPTHNORM_MIN = 0.01  # Omnivore's DepthNorm floor, in the disparity's unit


@dataclass
class DepthInput:
    size: int = 224
    patch_size: int = 16
    min_depth: float = 0.1  # metres; nearer values (and 0 = "no reading") are clamped
    max_depth: float = 75.0  # metres
    disparity_scale: float = 1.0  # baseline (m) x focal length (px); 1 gives 1/depth in 1/m
    max_disparity: float | None = None  # Omnivore's DepthNorm: clamp to [0.01, this] and divide by it
    mean: float = 0.3  # of the encoded disparity
    std: float = 0.3
    channels: int = 1

    def __post_init__(self) -> None:
        key = "modalities.depth.input"
        if not 0 < self.min_depth < self.max_depth:
            raise ConfigError(
                f"{key}.min_depth and max_depth must satisfy 0 < min_depth < max_depth (metres), "
                f"got {self.min_depth!r} and {self.max_depth!r}"
            )
        if not self.disparity_scale > 0:
            raise ConfigError(
                f"{key}.disparity_scale must be > 0 (baseline x focal length), got {self.disparity_scale!r}"
            )
        if self.max_disparity is not None and not self.max_disparity > DEPTHNORM_MIN:
            raise ConfigError(f"{key}.max_disparity must be null or > {DEPTHNORM_MIN}, got {self.max_disparity!r}")
        if not self.std > 0:
            raise ConfigError(f"{key}.std must be > 0, got {self.std!r}")


def read_depth(path: PathLike) -> np.ndarray:
    """Read a depth map in metres.

    Args:
        path: Float .npy in metres shaped (H, W) or (1, H, W), or 16-bit grayscale PNG in
            millimetres.

    Returns:
        float32 array (H, W) in metres, all values finite and >= 0.

    Raises:
        DataFileError: Unreadable file, 8-bit PNG, integer .npy, wrong shape, NaN/Inf or negatives.
    """
    path = checked_file(path)
    if path.suffix.lower() == ".npy":
        array = load_npy(path)
        if array.dtype.kind != "f":
            raise DataFileError(
                path, f"depth .npy must hold floats in metres, got dtype {array.dtype} (units ambiguous)"
            )
        depth = to_float32(path, as_plane(path, array, "depth"), "depth")
    else:
        stored = read_gray_image(path, ("PNG",))
        if stored.dtype != np.uint16:
            raise DataFileError(
                path, "8-bit PNG depth is ambiguous (unknown units); save 16-bit PNG in mm or .npy in metres"
            )
        depth = stored.astype(np.float32) / 1000.0
    if depth.min() < 0:
        raise DataFileError(path, f"depth has negative values (min {depth.min():.4g}); expected metres >= 0")
    return depth


@register_modality
class DepthSpec(ModalitySpec):
    name = "depth"
    input_config = DepthInput
    readers = dict.fromkeys((".npy", ".png"), read_depth)
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "trunk": {"width": 384, "depth": 12, "heads": 8, "drop_path": 0.0},
        "head": {"pool": "cls"},
        "logit_scale": {"init": 5.0, "learnable": False},
    }
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "tiny": {"input": {"size": 64, "patch_size": 16}, "trunk": {"width": 128, "depth": 2, "heads": 4}},
        "small": {"input": {"size": 112, "patch_size": 16}, "trunk": {"width": 384, "depth": 6, "heads": 6}},
        "huge": {
            "trunk": {"kv_bias": True},  # ImageBind's learned key/value bias in every attention
            "input": {
                "min_depth": 0.01,
                "max_depth": 50.0,
                "disparity_scale": NYUD_BASELINE_M * NYUD_FOCAL_PX,
                "max_disparity": 75.0,
                "mean": 0.0418,
                "std": 0.0295,
            },
        },
    }

    def transform(self, raw, cfg: DepthInput) -> Tensor:
        """float ``(H, W)`` metres -> standardised disparity ``(1, S, S)``."""
        return self._encode(to_chw_float(raw, 1), cfg)

    def transform_batch(self, raws, cfg: DepthInput) -> Tensor:
        if isinstance(raws, Tensor) and raws.ndim == 3:
            return self._encode(raws[:, None].float(), cfg)
        return super().transform_batch(raws, cfg)

    @staticmethod
    def _encode(depth: Tensor, cfg: DepthInput) -> Tensor:
        """Steps 1-5 of the module docstring on ``(C, H, W)`` or ``(B, C, H, W)``; ``depth`` is left as it is."""
        disparity = torch.clamp(depth, cfg.min_depth, cfg.max_depth)
        if cfg.disparity_scale == 1.0:
            disparity.reciprocal_()
        else:
            disparity = torch.div(cfg.disparity_scale, disparity)
        if cfg.max_disparity is not None:
            disparity.clamp_(DEPTHNORM_MIN, cfg.max_disparity)
            disparity /= cfg.max_disparity
        disparity = resize_center_crop(disparity, cfg.size, mode="bilinear")
        disparity -= cfg.mean
        disparity /= cfg.std
        return disparity

    def build_preprocessor(self, cfg: DepthInput, width: int) -> nn.Module:
        return PatchTokenizer(cfg.channels, (cfg.size, cfg.size), width, cfg.patch_size, norm=True)

    def dummy_input(self, cfg: DepthInput, batch_size: int, generator: torch.Generator) -> Tensor:
        return dummy_image(batch_size, cfg.channels, cfg.size, generator)
