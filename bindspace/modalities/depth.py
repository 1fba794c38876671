"""Metric depth maps, encoded as disparity by a 1-channel ViT (ImageBind: 384 wide, 12 blocks, 8 heads).

ImageBind converts depth to disparity before its encoder, because disparity is scale-normalised and
behaves like an image (near things are bright). Here depth in metres is clamped to
``[min_depth, max_depth]`` and mapped to ``disparity = 1 / depth`` (1/m, the disparity of a unit
focal-length x baseline camera), then standardised with ``mean``/``std``. The defaults centre
indoor-range scenes (1-10 m -> 0.1-1.0 /m); set them to your data's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from bindspace.errors import DataFileError
from bindspace.modalities._image_ops import dummy_image, resize_center_crop, to_chw_float
from bindspace.modalities.base import ModalitySpec, register_modality
from bindspace.modalities.files import PathLike, as_plane, checked_file, load_npy, read_gray_image, to_float32
from bindspace.nn.layers import PatchTokenizer


@dataclass
class DepthInput:
    size: int = 224
    patch_size: int = 16
    min_depth: float = 0.1  # metres; nearer values (and 0 = "no reading") are clamped
    max_depth: float = 75.0  # metres; Omnivore/ImageBind's depth range
    mean: float = 0.3  # of the disparity in 1/m
    std: float = 0.3
    channels: int = 1


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
        "huge": {"trunk": {"kv_bias": True}},  # ImageBind's learned key/value bias in every attention
    }

    def transform(self, raw, cfg: DepthInput) -> Tensor:
        """float ``(H, W)`` metres -> standardised disparity ``(1, S, S)``."""
        depth = to_chw_float(raw, 1)
        return self._disparity(resize_center_crop(depth, cfg.size, mode="bilinear"), cfg)

    def transform_batch(self, raws, cfg: DepthInput) -> Tensor:
        if isinstance(raws, Tensor) and raws.ndim == 3:
            return self._disparity(resize_center_crop(raws[:, None].float(), cfg.size, mode="bilinear"), cfg)
        return super().transform_batch(raws, cfg)

    @staticmethod
    def _disparity(depth: Tensor, cfg: DepthInput) -> Tensor:
        """``(1 / depth.clamp(min, max) - mean) / std`` in one new tensor (``depth`` is left as it is)."""
        disparity = torch.clamp(depth, cfg.min_depth, cfg.max_depth)
        disparity = disparity.reciprocal_() if disparity.is_floating_point() else 1.0 / disparity
        disparity -= cfg.mean
        disparity /= cfg.std
        return disparity

    def build_preprocessor(self, cfg: DepthInput, width: int) -> nn.Module:
        return PatchTokenizer(cfg.channels, (cfg.size, cfg.size), width, cfg.patch_size, norm=True)

    def dummy_input(self, cfg: DepthInput, batch_size: int, generator: torch.Generator) -> Tensor:
        return dummy_image(batch_size, cfg.channels, cfg.size, generator)
