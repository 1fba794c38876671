"""AdamW with linear warmup and cosine decay; no weight decay on norms, biases, tokens and temperatures."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NO_DECAY_NAMES = ("cls_token", "reg_token", "pos_embed", "log_scale", "token_embedding")


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # final lr as a fraction of ``lr`` at the end of the cosine
    fused: bool | None = None  # fused AdamW kernel; None = on when every parameter is on a GPU


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into decayed matrices and undecayed everything else.

    Frozen parameters (``requires_grad=False``) are left out, so they get no optimizer state.
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(n in name for n in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base lr at ``step``: linear 0 -> 1 over ``warmup``, cosine 1 -> ``min_ratio`` after."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class StagedSchedule:
    """lr multiplier at a step, for a run made of curriculum stages.

    ``mode="per_stage"``: every stage warms up and decays (cosine) over its own length, scaled by
    its own lr; a modality that joins late trains under the same schedule as one that joins first.
    ``mode="global"``: one warmup + cosine over the whole run, each stage only re-warming on top of it
    and rescaling it. With a single stage starting at 0 the two are the same function.

    A callable object (not a lambda) so ``LambdaLR`` saves and restores its attributes with the
    checkpoint: a run resumed inside a curriculum stage continues with that stage's lr.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float, mode: str = "global") -> None:
        self.warmup, self.total, self.min_ratio, self.mode = warmup, total, min_ratio, mode
        self.stage_start, self.stage_warmup, self.stage_scale = 0, None, 1.0
        self.stage_length: int | None = None

    def set_stage(self, start: int, warmup: int | None, scale: float, length: int | None = None) -> None:
        """The stage starting at step ``start``: its warmup (None: the run's), lr scale and schedule length."""
        self.stage_start, self.stage_warmup, self.stage_scale, self.stage_length = start, warmup, scale, length

    def __call__(self, step: int) -> float:
        into = step - self.stage_start
        if self.mode == "per_stage":
            warmup = self.warmup if self.stage_warmup is None else self.stage_warmup
            length = self.stage_length or max(1, self.total - self.stage_start)
            return warmup_cosine(into, warmup, length, self.min_ratio) * self.stage_scale
        base = warmup_cosine(step, self.warmup, self.total, self.min_ratio)
        rewarm_steps = self.stage_warmup or 0
        rewarm = (into + 1) / rewarm_steps if 0 <= into < rewarm_steps else 1.0
        return base * rewarm * self.stage_scale


def build_optimizer(module: nn.Module, cfg: OptimConfig, total_steps: int):
    """AdamW over the trainable parameters, with a :class:`StagedSchedule` stepped every step."""
    groups = param_groups(module, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("nothing to train: every parameter is frozen")
    fused = cfg.fused
    if fused is None:  # the fused kernel (one launch for all parameters) wherever torch has it: CUDA
        fused = all(p.is_cuda for g in groups for p in g["params"])
    kwargs = {"fused": True} if fused else {}
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kwargs)
    schedule = StagedSchedule(cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)
