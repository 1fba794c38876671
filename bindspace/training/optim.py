"""AdamW with linear warmup and cosine decay; no weight decay on norms, biases, tokens and temperatures.

Learning rates per parameter group: ``optim.layer_decay`` (BEiT, open_clip's ``--layer-decay``) scales
block ``i`` of a trunk of ``L`` blocks by ``decay ** (L - i)``, its embeddings by ``decay ** (L + 1)``
and its final norm and head by 1; ``modalities.<m>.lr_scale`` (LanguageBind's ``--coef-lr``) scales the
whole encoder of ``m``. Both multiply the lr the schedule sets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bindspace.config import OptimConfig
from bindspace.nn.adapters import trunk_layout

if TYPE_CHECKING:  # the model imports timm: the config checks read OptimConfig without it
    from bindspace.models.model import BindSpaceModel

NO_DECAY_NAMES = ("cls_token", "reg_token", "pos_embed", "log_scale", "token_embedding")


def _find_model(module: nn.Module) -> BindSpaceModel | None:
    from bindspace.models.model import BindSpaceModel

    if isinstance(module, BindSpaceModel):
        return module
    found = getattr(module, "model", None)
    return found if isinstance(found, BindSpaceModel) else None


def lr_scales(model: BindSpaceModel, layer_decay: float = 1.0, prefix: str = "") -> dict[str, tuple[float, str]]:
    """Parameter name (with ``prefix``) -> (lr multiplier, group label) for every parameter of the encoders.

    The label is the modality, and with layer decay its layer: ``audio.embed`` (tokenizer and whatever
    precedes the first block), ``audio.block3``, ``audio.head`` (final norm, head).
    """
    out: dict[str, tuple[float, str]] = {}
    for m, cfg in model.configs.items():
        if layer_decay == 1.0:
            for stage in ("preprocessors", "trunks", "heads"):
                out.update(
                    {
                        f"{prefix}{stage}.{m}.{n}": (cfg.lr_scale, m)
                        for n, _ in getattr(model, stage)[m].named_parameters()
                    }
                )
            continue
        layout = trunk_layout(model.trunks[m])
        top = layout.depth + 1  # the final norm's and the head's layer
        layers = {f"preprocessors.{m}.{n}": 0 for n, _ in model.preprocessors[m].named_parameters()}
        layers |= {f"trunks.{m}.{n}": layout.layer_id(n) for n, _ in model.trunks[m].named_parameters()}
        layers |= {f"heads.{m}.{n}": top for n, _ in model.heads[m].named_parameters()}
        for name, layer in layers.items():
            label = "embed" if layer == 0 else "head" if layer == top else f"block{layer - 1}"
            out[prefix + name] = (cfg.lr_scale * layer_decay ** (top - layer), f"{m}.{label}")
    return out


def param_groups(
    module: nn.Module, weight_decay: float, layer_decay: float = 1.0, lockable: Iterable[nn.Parameter] = ()
) -> list[dict]:
    """Split trainable parameters into decayed matrices and undecayed everything else, by lr multiplier.

    Frozen parameters (``requires_grad=False``) are left out, so they get no optimizer state, except
    ``lockable`` ones (frozen by partial unlocking or an adapter, which a curriculum stage may unlock):
    they join their group and get state only once they train.

    With every lr multiplier 1 (no ``layer_decay``, no ``lr_scale``) there are two groups, as always;
    otherwise one per (modality or layer, decay), each named (``audio.block3/decay``, what Lightning's
    ``LearningRateMonitor`` logs) and carrying its ``lr_scale``. Parameters outside the encoders
    (the edges' temperatures) keep multiplier 1 (group ``loss``).
    """
    model = _find_model(module)
    prefix = "model." if model is not None and model is not module else ""
    scales = lr_scales(model, layer_decay, prefix) if model is not None else {}
    lockable_ids = {id(p) for p in lockable}
    found = []  # (parameter, decayed, lr multiplier, label) in module order
    for name, p in module.named_parameters():
        if not p.requires_grad and id(p) not in lockable_ids:
            continue
        decayed = not (p.ndim < 2 or any(n in name for n in NO_DECAY_NAMES))
        found.append((p, decayed, *scales.get(name, (1.0, "loss"))))
    if all(scale == 1.0 for _, _, scale, _ in found):  # the two groups of a plain run, unnamed as ever
        return [
            {"params": [p for p, d, _, _ in found if d == decayed], "weight_decay": wd}
            for decayed, wd in ((True, weight_decay), (False, 0.0))
        ]
    groups: dict[tuple[str, bool], dict] = {}
    for p, decayed, scale, label in found:
        name = f"{label}/{'decay' if decayed else 'no_decay'}"
        group = groups.setdefault(
            (label, decayed),
            {"params": [], "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale, "name": name},
        )
        group["params"].append(p)
    return list(groups.values())


def describe_groups(groups: list[dict], base_lr: float) -> list[str]:
    """One line per parameter group: name, parameters training now (of those held), lr and weight decay."""
    lines = []
    for i, g in enumerate(groups):
        held = sum(p.numel() for p in g["params"])
        training = sum(p.numel() for p in g["params"] if p.requires_grad)
        lr = base_lr * g.get("lr_scale", 1.0)
        name = g.get("name", f"pg{i + 1}")
        lines.append(
            f"{name}: {training} of {held} parameters training, lr {lr:.4g}, weight decay {g['weight_decay']:g}"
        )
    return lines


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

    A callable object (not a lambda) so ``LambdaLR`` saves its attributes with the checkpoint;
    :class:`StagedLR` restores only the stage's (``STATE``): a run resumed inside a curriculum stage
    continues with that stage's lr, over the length (``total``), warmup and mode this launch configures.
    """

    STATE = ("stage_start", "stage_warmup", "stage_scale", "stage_length")

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


class StagedLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` over a :class:`StagedSchedule` that restores only its stage from a checkpoint.

    ``LambdaLR`` would restore every attribute, the first launch's ``total`` included: a run relaunched
    with a larger ``trainer.max_steps`` then trained every step past the old one at the schedule's floor.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        stages = [
            None if fn is None else {k: fn[k] for k in StagedSchedule.STATE if k in fn}
            for fn in state_dict["lr_lambdas"]
        ]
        super().load_state_dict({**state_dict, "lr_lambdas": stages})


def build_optimizer(module: nn.Module, cfg: OptimConfig, total_steps: int):
    """AdamW over the trainable parameters, with a :class:`StagedSchedule` stepped every step.

    Each group's lr is ``cfg.lr`` times its ``lr_scale`` (layer decay, per-modality scale); the schedule
    multiplies every group's by the same factor.
    """
    model = _find_model(module)
    lockable = model.lockable_parameters() if model is not None else ()
    groups = param_groups(module, cfg.weight_decay, cfg.layer_decay, lockable)
    if not any(g["params"] for g in groups):
        raise ValueError("nothing to train: every parameter is frozen")
    for g in groups:
        if "lr_scale" in g:
            g["lr"] = cfg.lr * g["lr_scale"]
    fused = cfg.fused
    if fused is None:  # the fused kernel (one launch for all parameters) wherever torch has it: CUDA
        fused = all(p.is_cuda for g in groups for p in g["params"])
    kwargs = {"fused": True} if fused else {}
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kwargs)
    schedule = StagedSchedule(cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    return opt, StagedLR(opt, schedule)


def resume_conflicts(ckpt: Mapping[str, Any], model: BindSpaceModel, cfg: OptimConfig) -> list[tuple[str, Any, Any]]:
    """The optimizer settings of this config that resuming ``ckpt`` would silently replace by the checkpoint's.

    Lightning restores the optimizer whole: torch's ``Optimizer.load_state_dict`` takes every parameter group's
    lr, weight decay, betas and eps from the checkpoint, and the scheduler its base lrs (``optim.lr`` times the
    group's multiplier: ``optim.layer_decay``, ``modalities.<m>.lr_scale``). The schedule's shape is not
    restored (:class:`StagedLR`): ``optim.warmup_steps``, ``optim.min_lr_ratio`` and ``trainer.max_steps`` are
    this launch's, and are not listed here.

    Args:
        ckpt: a Lightning checkpoint of ``bindspace-train`` (a checkpoint without optimizer state gives nothing).
        model: this launch's model (its trunks' block counts, its modalities' ``lr_scale``).
        cfg: this launch's ``optim`` section.

    Returns:
        ``(key, the checkpoint's value, this config's value)`` for each setting that differs.
    """
    states = ckpt.get("optimizer_states")
    state = states[0] if isinstance(states, list) and states and isinstance(states[0], Mapping) else {}
    groups = state.get("param_groups")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, Mapping) for g in groups):
        return []  # nothing bindspace wrote: what Lightning makes of it is its own error
    saved = _saved_settings(groups, model)
    ours = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "betas": tuple(cfg.betas), "eps": cfg.eps}
    ours["layer_decay"] = cfg.layer_decay
    out = [(f"optim.{k}", saved[k], v) for k, v in ours.items() if k in saved and not _same(saved[k], v)]
    recorded = ckpt.get("bindspace") if isinstance(ckpt.get("bindspace"), Mapping) else {}
    modalities = recorded.get("modalities") if isinstance(recorded.get("modalities"), Mapping) else {}
    for m, mcfg in model.configs.items():
        theirs = modalities.get(m).get("lr_scale") if isinstance(modalities.get(m), Mapping) else None
        if _number(theirs) and not _same(theirs, mcfg.lr_scale):
            out.append((f"modalities.{m}.lr_scale", theirs, mcfg.lr_scale))
    return out


def _saved_settings(groups: list[Mapping[str, Any]], model: BindSpaceModel) -> dict[str, Any]:
    """``optim.*`` as a checkpoint's parameter groups hold them; a key they do not tell is left out."""
    saved: dict[str, Any] = {}
    unscaled = [g for g in groups if g.get("lr_scale", 1.0) == 1.0]  # their lr is optim.lr itself, exactly
    first = (unscaled or groups)[0]
    scale = first.get("lr_scale", 1.0)
    if _number(first.get("initial_lr")) and _number(scale) and scale > 0:
        saved["lr"] = first["initial_lr"] / scale  # initial_lr: the lr the group was built with (LambdaLR)
    decays = [g.get("weight_decay") for g in groups]
    if all(_number(d) for d in decays):
        saved["weight_decay"] = max(decays)  # the decayed groups' (the others hold 0)
    betas = first.get("betas")
    if isinstance(betas, list | tuple) and len(betas) == 2 and all(_number(b) for b in betas):
        saved["betas"] = tuple(betas)
    if _number(first.get("eps")):
        saved["eps"] = first["eps"]
    decay = _saved_layer_decay(groups, model)
    if decay is not None:
        saved["layer_decay"] = decay
    return saved


def _saved_layer_decay(groups: list[Mapping[str, Any]], model: BindSpaceModel) -> float | None:
    """The ``optim.layer_decay`` a checkpoint's groups were built with: 1 without per-layer groups, else the ratio
    of a block's multiplier to its encoder's head's (:func:`lr_scales`); None if no group tells."""
    scales = {}
    for g in groups:
        if isinstance(g.get("name"), str) and _number(g.get("lr_scale")):
            scales[g["name"].split("/")[0]] = g["lr_scale"]
    if not any(label.endswith(".head") for label in scales):
        return 1.0  # groups per modality (lr_scale), or the plain two: no layer decay
    for m in model.configs:
        head = scales.get(f"{m}.head")
        prefix = f"{m}.block"
        blocks = [
            (int(k[len(prefix) :]), s) for k, s in scales.items() if k.startswith(prefix) and k[len(prefix) :].isdigit()
        ]
        if not head or not blocks:
            continue  # frozen whole: not in the optimizer
        block, scale = max(blocks)  # block k of L is at layer_decay ** (L - k) of the head
        apart = trunk_layout(model.trunks[m]).depth - block
        if apart > 0 and scale > 0:
            return (scale / head) ** (1 / apart)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _same(a: Any, b: Any) -> bool:
    """Equal up to float rounding (a value derived from a checkpoint's groups is a product divided back)."""
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
