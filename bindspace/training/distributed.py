"""Which Lightning strategy a run needs: DDP learns that a curriculum changes what trains.

DDP's reducer expects a gradient for every parameter it wrapped, at every step. A curriculum breaks
that on purpose: encoders of modalities that have not joined yet, frozen encoders and frozen
temperatures produce no gradient. Under plain ``ddp`` that is Lightning's "parameters that were not
used in producing the loss" error at the first step. With ``find_unused_parameters=True`` the reducer
walks the autograd graph after each forward, marks what was not reached as ready, and leaves the
gradient of a parameter unused on every rank at None, so AdamW skips it exactly as on one process.
The walk costs time every step (measured in docs/scaling.md), so it is switched on only for curricula
that need it: more than one stage, or any freezing. Parameters frozen by a stage were trainable when
DDP wrapped the model (curriculum freezing starts at ``on_train_start``), so unfreezing them in a later
stage is synchronised as well.
"""

from __future__ import annotations

from typing import Any

from bindspace.curriculum import Curriculum
from bindspace.errors import ConfigError

# Lightning's DDP flavours; each has a registered "<name>_find_unused_parameters_true" variant.
DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
UNUSED_SUFFIX = "_find_unused_parameters_true"


def curriculum_changes_trainable(curriculum: Curriculum) -> bool:
    """True when some step leaves a wrapped parameter without a gradient (stages or freezing)."""
    return len(curriculum.stages) > 1 or any(curriculum.frozen(i) for i in range(len(curriculum.stages)))


def _stage_that_needs_it(curriculum: Curriculum) -> str:
    frozen = [s.name for i, s in enumerate(curriculum.stages) if curriculum.frozen(i)]
    if len(curriculum.stages) > 1:
        return f"stage {curriculum.stages[1].name!r} adds edges whose encoders are idle before it"
    return f"stage {frozen[0]!r} freezes encoders"


def strategy_for(strategy: Any, world_size: int, curriculum: Curriculum) -> Any:
    """``trainer.strategy`` adjusted to the curriculum, or a :class:`ConfigError` if it cannot run it.

    Args:
        strategy: the configured ``trainer.strategy`` (a name, or a strategy object: left alone).
        world_size: devices x nodes.
        curriculum: the run's curriculum.
    """
    if not isinstance(strategy, str) or not curriculum_changes_trainable(curriculum):
        return strategy
    name = strategy
    if name == "auto":
        if world_size <= 1:
            return strategy
        name = "ddp"  # what Lightning's "auto" picks for several devices
    if name in ("single_device",) or name.endswith(UNUSED_SUFFIX):
        return name
    if name in DDP_STRATEGIES:
        return name + UNUSED_SUFFIX
    raise ConfigError(
        f"trainer.strategy={strategy}: the curriculum changes which parameters train "
        f"({_stage_that_needs_it(curriculum)}), which {strategy} cannot follow; use trainer.strategy=ddp "
        f"(bindspace then enables DDP's unused-parameter detection) or curriculum=all_at_once"
    )
