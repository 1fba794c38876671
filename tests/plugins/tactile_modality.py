"""A seventh modality defined outside bindspace: a 4 x 4 tactile sensor array sampled over time.

Everything bindspace needs to know about the modality is in this one file: the input dataclass, a
reader for its own file format (``.tact``: CSV text, one row per time step, one column per taxel),
the transform, the tokenizer, the ImageBind-style trunk/head/temperature defaults, a size preset,
and how the synthetic benchmark renders a scene's touch. It is registered by the decorator when
imported; ``tests/test_seventh_modality.py`` also installs it as a distribution whose entry point of
group ``bindspace.modalities`` names this module, so every command line finds it as a user's plugin
package would be found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from bindspace.errors import DataFileError
from bindspace.modalities import ModalitySpec, register_modality
from bindspace.modalities.files import checked_file, load_csv, to_float32
from bindspace.nn.layers import SequencePatchTokenizer


@dataclass
class TactileInput:
    taxels: int = 16  # a 4 x 4 array
    length: int = 100  # time steps after crop or resampling
    patch: int = 10  # time steps per token
    scale: float = 5.0  # newtons -> model units


def read_tact(path: Path) -> np.ndarray:
    """A ``.tact`` file -> float32 ``(taxels, T)`` pressures in newtons (>= 0)."""
    table = load_csv(checked_file(path))  # (T, taxels); a header row is allowed
    if table.shape[1] != 16:
        raise DataFileError(path, f"tactile files need 16 taxel columns, got {table.shape[1]}")
    pressure = to_float32(path, table.T, "tactile")
    if pressure.min() < 0:
        raise DataFileError(path, f"pressures must be >= 0 newtons, found {pressure.min():.4g}")
    return pressure


def write_tact(path: Path, pressure: np.ndarray) -> Path:
    """``(taxels, T)`` newtons -> a ``.tact`` file (what a user's own converter would write)."""
    header = ",".join(f"taxel{i}" for i in range(pressure.shape[0]))
    np.savetxt(path, pressure.T, delimiter=",", header=header, comments="", fmt="%.5f")
    return path


@register_modality
class TactileSpec(ModalitySpec):
    name = "tactile"
    input_config = TactileInput
    readers: ClassVar[dict[str, Any]] = {".tact": read_tact}
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "trunk": {"width": 256, "depth": 4, "heads": 4, "drop_path": 0.1},
        "head": {"pool": "cls"},
        "logit_scale": {"init": 10.0, "learnable": False},
    }
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "tiny": {"input": {"length": 60}, "trunk": {"width": 128, "depth": 2, "heads": 4, "drop_path": 0.0}},
    }

    def transform(self, raw: Any, cfg: TactileInput) -> Tensor:
        return self.transform_batch(torch.as_tensor(np.asarray(raw))[None], cfg)[0]

    def transform_batch(self, raws: Any, cfg: TactileInput) -> Tensor:
        if not isinstance(raws, Tensor):
            raws = torch.stack([torch.as_tensor(np.asarray(r)) for r in raws]) if isinstance(raws, list) else raws
        x = torch.as_tensor(raws).float()
        if x.ndim != 3 or x.shape[1] != cfg.taxels:
            raise ValueError(f"tactile batch must be (B, {cfg.taxels}, T), got {tuple(x.shape)}")
        if x.shape[-1] != cfg.length:
            x = nn.functional.interpolate(x, size=cfg.length, mode="linear", align_corners=True)
        return x / cfg.scale

    def build_preprocessor(self, cfg: TactileInput, width: int) -> nn.Module:
        return SequencePatchTokenizer(cfg.taxels, cfg.length, width, cfg.patch, norm=True)

    def dummy_input(self, cfg: TactileInput, batch_size: int, generator: torch.Generator) -> Tensor:
        return torch.rand(batch_size, cfg.taxels, cfg.length, generator=generator)

    def render_synthetic(self, factors: Any, noise: Any, cfg: TactileInput) -> np.ndarray:
        """Touching the scene's object: where (x, y) on the array, how hard (size), how it vibrates
        (speed), and a press rhythm per class."""
        t = np.arange(cfg.length, dtype=np.float32) / cfg.length  # one second
        grid = (np.arange(4, dtype=np.float32) + 0.5) / 4
        gx, gy = np.meshgrid(grid, grid)  # (4, 4)
        dist2 = (gx.ravel()[None] - factors["x"][:, None]) ** 2 + (gy.ravel()[None] - factors["y"][:, None]) ** 2
        footprint = np.exp(-dist2 / 0.05)  # (B, 16)
        force = 2.0 + 8.0 * factors["size"][:, None]  # (B, 1) newtons
        rhythm = 1.0 + (factors["label"][:, None] % 4 + 1) * t[None]  # presses per second by class
        press = 0.5 + 0.5 * np.cos(2 * np.pi * rhythm * t[None])  # (B, T)
        buzz = 0.2 * np.sin(2 * np.pi * (5 + 20 * factors["speed"][:, None]) * t[None])
        pressure = force[:, :, None] * footprint[:, :, None] * (press + buzz)[:, None, :]  # (B, 16, T)
        pressure += 0.1 * np.abs(noise.normal((cfg.taxels, cfg.length)))
        return np.clip(pressure, 0.0, None).astype(np.float32)
