"""RGB images (the default anchor, as in ImageBind).

ImageBind-huge: 224 px, ViT-H/14 (width 1280, 32 blocks, 16 heads) with a LayerNorm before the
blocks, CLIP normalisation. ImageBind patches a 2-frame "video" with a (2, 14, 14) Conv3d; for a
still image that equals a 14x14 Conv2d (the sum of the two temporal slices), which the smaller presets
use; ``huge`` keeps the Conv3d (``input.frames=2``) so that ImageBind's weights load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from bindspace.errors import ConfigError
from bindspace.modalities._image_ops import dummy_image, resize_center_crop, to_chw_float
from bindspace.modalities.base import ModalitySpec, register_modality
from bindspace.modalities.files import SIXTEEN_BIT_MODES, PathLike, as_file, checked_file, decoding
from bindspace.nn.layers import PatchTokenizer

# OpenAI CLIP's RGB statistics, used by ImageBind's vision transform.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZES = ("torch", "pil")


@dataclass
class ImageInput:
    size: int = 224  # resize the shorter side then centre-crop (bicubic, as CLIP)
    patch_size: int = 14
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    channels: int = 3
    frames: int = 1  # ImageBind (huge): 2, the image repeated into 2 frames and patched by a (2, p, p) Conv3d
    # "torch": antialiased bicubic interpolation of the float image, with the geometry of torchvision
    # on a tensor. "pil": ImageBind's loader (torchvision on a PIL image): PIL's bicubic on the 8-bit
    # image. Both truncate the long side and round the crop offset. Float input (renders) takes "torch".
    resize: str = "torch"

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ConfigError(f"modalities.image.input.resize must be one of {RESIZES}, got {self.resize!r}")


def read_image(path: PathLike) -> np.ndarray:
    """Read a PNG, JPEG or WEBP image as RGB.

    Args:
        path: Image file; any size and PIL mode (L, LA, P, RGBA, I;16, CMYK ...).

    Returns:
        uint8 array (H, W, 3), RGB, in stored pixel order.

    Raises:
        DataFileError: Missing, empty, truncated or undecodable file.
    """
    path = checked_file(path)
    with decoding(path, "a PNG/JPEG/WEBP image"), Image.open(as_file(path), formats=("PNG", "JPEG", "WEBP")) as img:
        img.load()  # decode every byte now, so a truncated file fails here and not in a transform
        if img.mode in SIXTEEN_BIT_MODES:
            # convert("RGB") would clip 16-bit values at 255; scale to the full 8-bit range instead.
            gray = (np.clip(np.array(img), 0, 65535) / 257.0).round().astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        return np.array(img.convert("RGB"))


def pil_resize_center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> ``(size, size, 3)`` as torchvision's ``Resize(size, BICUBIC)`` and ``CenterCrop(size)``
    do on a PIL image (ImageBind's vision loader): the shorter side becomes ``size``, the longer
    ``int(size * long / short)``, PIL's bicubic filter, the crop's offsets ``round((side - size) / 2)``.
    """
    h, w = rgb.shape[:2]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(h, w) < 1:
        raise ValueError(f"expected a non-empty uint8 (H, W, 3) image, got shape {rgb.shape}")
    nh, nw = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
    img = Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = round((nh - size) / 2), round((nw - size) / 2)  # half to even, as torchvision
    return np.array(img.crop((left, top, left + size, top + size)))  # writable, as torch wants


@lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """CLIP-style per-channel statistics as ``(C, 1, 1)`` float32 tensors, built once per config."""
    return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)


@register_modality
class ImageSpec(ModalitySpec):
    name = "image"
    input_config = ImageInput
    readers = dict.fromkeys((".png", ".jpg", ".jpeg", ".webp"), read_image)
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "trunk": {"width": 1280, "depth": 32, "heads": 16, "pre_norm": True},
        "head": {"pool": "cls"},
        # ImageBind's vision postprocessor has no scale; image-anchored edges take the other side's.
        "logit_scale": {"init": 1 / 0.07, "learnable": True},
    }
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "tiny": {
            "input": {"size": 64, "patch_size": 16},
            "trunk": {"width": 128, "depth": 2, "heads": 4, "drop_path": 0.0},
        },
        "small": {
            "input": {"size": 112, "patch_size": 16},
            "trunk": {"width": 384, "depth": 6, "heads": 6, "drop_path": 0.0},
        },
        "base": {"input": {"size": 224, "patch_size": 16}, "trunk": {"width": 768, "depth": 12, "heads": 12}},
        # ImageBind's Conv3d stem, so its weights load as they are, and its loader's resize and crop.
        "huge": {"input": {"frames": 2, "resize": "pil"}},
    }

    def transform(self, raw, cfg: ImageInput) -> Tensor:
        """uint8 ``(H, W, 3)`` (from a file) or float ``(3, H, W)`` in [0, 1] -> normalised ``(3, S, S)``."""
        if cfg.resize == "pil" and isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.shape[2:] == (3,):
            raw = pil_resize_center_crop(raw, cfg.size)
        return self._clamp_normalize(resize_center_crop(to_chw_float(raw, 3), cfg.size), cfg)

    def transform_batch(self, raws, cfg: ImageInput) -> Tensor:
        if isinstance(raws, Tensor) and raws.ndim == 4:
            return self._clamp_normalize(resize_center_crop(raws.float(), cfg.size), cfg)
        return super().transform_batch(raws, cfg)

    @staticmethod
    def _clamp_normalize(x: Tensor, cfg: ImageInput) -> Tensor:
        """``(x.clamp(0, 1) - mean) / std`` per channel, in one new tensor (never ``x`` itself)."""
        mean, std = _channel_stats(tuple(cfg.mean), tuple(cfg.std))
        out = torch.clamp(x, 0.0, 1.0, out=torch.empty_like(x, memory_format=torch.contiguous_format))
        out -= mean
        out /= std
        return out

    def build_preprocessor(self, cfg: ImageInput, width: int) -> nn.Module:
        # No LayerNorm on the vision stem (ImageBind); its trunk uses pre_norm instead.
        return PatchTokenizer(cfg.channels, (cfg.size, cfg.size), width, cfg.patch_size, norm=False, frames=cfg.frames)

    def dummy_input(self, cfg: ImageInput, batch_size: int, generator: torch.Generator) -> Tensor:
        return dummy_image(batch_size, cfg.channels, cfg.size, generator)
