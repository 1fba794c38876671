"""Which Lightning strategy a run needs: DDP learns that a curriculum changes what trains.

DDP's reducer expects a gradient for every parameter it wrapped, at every step. A curriculum breaks
that on purpose: encoders of modalities that have not joined yet, frozen encoders and frozen
temperatures produce no gradient. Under plain ``ddp`` that is Lightning's "parameters that were not
used in producing the loss" error at the first step. With ``find_unused_parameters=True`` the reducer
walks the autograd graph after each forward, marks what was not reached as ready, and leaves the
gradient of a parameter unused on every rank at None, so AdamW skips it exactly as on one process.
The walk costs time every step (measured in docs/scaling.md), so it is switched on only for curricula
that need it: more than one stage, or any freezing.

DDP registers (and all-reduces) only the parameters that require a gradient when it wraps the model; one
unlocked later would train on each rank's own gradient, and the ranks' weights drift apart. So before the
wrap, :func:`unlock_every_stage` leaves trainable every parameter some stage trains (blocks a stage's
``unlocked_layers`` opens beyond ``trunk.unlocked_layers`` or an adapter); the curriculum freezes what the
current stage does not train at ``on_train_start``, after the wrap, so unfreezing in a later stage is
synchronised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bindspace.curriculum import Curriculum
from bindspace.errors import ConfigError

if TYPE_CHECKING:
    from bindspace.models.model import BindSpaceModel

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


def trainer_world_size(trainer: Mapping[str, Any]) -> int:
    """The processes a Trainer of the ``trainer`` config runs: devices per node x ``num_nodes``.

    Counted by Lightning's own parsing, before the Trainer exists (the strategy depends on it): ``devices`` is
    an int, a numeric string, a list of device ids or a comma-separated string of them; -1 (every visible GPU)
    and ``auto`` (every device of the accelerator, one on CPU) depend on the machine. An accelerator this
    machine lacks, or devices it rejects (a device list on CPU, GPU ids beyond the machine's), is a
    :class:`ConfigError`.
    """
    from lightning.fabric.utilities.device_parser import _select_auto_accelerator
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.fabric.utilities.imports import _IS_INTERACTIVE
    from lightning.pytorch.accelerators import Accelerator, AcceleratorRegistry, CUDAAccelerator, MPSAccelerator

    # As lightning.pytorch.trainer.connectors.accelerator_connector resolves the accelerator, then its devices.
    accelerator, devices = trainer.get("accelerator", "auto"), trainer.get("devices", "auto")
    if accelerator == "auto":
        accelerator = _select_auto_accelerator()
    elif accelerator == "gpu":
        accelerator = "mps" if MPSAccelerator.is_available() else "cuda"
    if isinstance(accelerator, Accelerator):
        cls = type(accelerator)
    elif accelerator in AcceleratorRegistry:
        cls = AcceleratorRegistry[accelerator]["accelerator"]
    else:
        names = ", ".join(["auto", "gpu", *sorted(AcceleratorRegistry)])
        raise ConfigError(f"trainer.accelerator must be one of {names}, got {accelerator!r}")
    if not cls.is_available():
        raise ConfigError(f"trainer.accelerator={trainer.get('accelerator')}: no {cls.name()} device on this machine")
    if devices == "auto":  # in a notebook Lightning runs one of several GPUs
        devices = 1 if _IS_INTERACTIVE and issubclass(cls, CUDAAccelerator) else cls.auto_device_count()
    try:
        per_node = len(cls.get_parallel_devices(cls.parse_devices(devices)))
    except (TypeError, ValueError, MisconfigurationException) as e:
        reason = " ".join(str(e).split())
        raise ConfigError(f"trainer.devices={trainer.get('devices')!r} on {cls.name()}: {reason}") from None
    return per_node * int(trainer.get("num_nodes", 1) or 1)


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


def unlock_every_stage(model: BindSpaceModel, curriculum: Curriculum) -> None:
    """Leave trainable exactly the parameters some stage of ``curriculum`` trains: what DDP must register.

    Stage freezing (``freeze``) is left out, as the wrap always saw it: a frozen encoder trains in other stages.
    A parameter no stage trains (a block every stage keeps locked) is frozen, so plain ``ddp`` runs a single
    stage that locks blocks.
    """
    trained: set[str] = set()
    for stage in curriculum.stages:
        for m in model.modalities:
            model.set_frozen(m, (), stage.unlocked_layers.get(m))
        trained |= {name for name, p in model.named_parameters() if p.requires_grad}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
