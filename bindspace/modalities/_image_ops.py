"""Geometry shared by the image-like modalities (image, depth, thermal)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def to_chw_float(raw: np.ndarray | Tensor, channels: int) -> Tensor:
    """A decoded image -> float ``(C, H, W)``; accepts ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``.

    uint8 input is scaled to [0, 1]; float input is taken as already in its physical unit.
    """
    x = torch.as_tensor(np.asarray(raw)) if not isinstance(raw, Tensor) else raw
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    x = x.float() / scale
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 3 and x.shape[-1] == channels and x.shape[0] != channels:
        x = x.permute(2, 0, 1)
    if x.ndim != 3 or x.shape[0] != channels:
        raise ValueError(f"expected an image with {channels} channel(s), got shape {tuple(x.shape)}")
    return x.contiguous()


def resize_center_crop(x: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Resize the shorter side to ``size`` then centre-crop ``size x size`` (CLIP/ImageBind eval transform).

    The geometry of torchvision's ``Resize(size)`` and ``CenterCrop(size)`` on a tensor, which is what
    Omnivore's and ImageBind's loaders apply to depth: the longer side becomes ``int(size * long / short)``
    (truncated), the interpolation is antialiased, and the crop starts at ``round((side - size) / 2)``.
    Works on ``(C, H, W)`` or ``(B, C, H, W)``; a no-op when the input already has the target size.
    """
    squeeze = x.ndim == 3
    x = x[None] if squeeze else x
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        nh, nw = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
        kwargs = {"align_corners": False, "antialias": True} if mode in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=(nh, nw), mode=mode, **kwargs)
        top, left = round((nh - size) / 2), round((nw - size) / 2)  # half to even, as torchvision
        x = x[..., top : top + size, left : left + size]
    return x[0] if squeeze else x


def dummy_image(batch: int, channels: int, size: int, generator: torch.Generator) -> Tensor:
    return torch.randn(batch, channels, size, size, generator=generator)
