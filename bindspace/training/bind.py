"""``new_modality``: bind one modality into a trained space without touching the space.

``bindspace-train experiment=bind_new_modality init_from=<ckpt> new_modality=<name>`` rewrites the run's
graph and curriculum before anything is built. Every modality of the checkpoint that the data also
provides (other than the new one) is loaded by ``init_from`` and frozen whole (preprocessor, trunk and
head) for the whole run. The edges join the new modality to each of them, or, with
``graph.anchors=[...]``, to those only (ImageBind's recipe: ``graph.anchors=[image]``); the others stay in
the model, frozen and in no edge, so the new modality's retrieval against them is emergent. Only the new
encoder and its edges' temperatures train; the experiment config turns on the frozen-feature cache, so
each frozen encoder's trunk runs once per sample. A ``new_modality`` the checkpoint already has gets a
new encoder (its stored one is not loaded) trained against the others.

The pairs the checkpoint had trained among the frozen modalities stay trained pairs (``inherited``):
the new checkpoint and ``metrics.json`` flag them as such, not as emergent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from bindspace.errors import ConfigError
from bindspace.graph import Edge

log = logging.getLogger(__name__)


@dataclass
class BindPlan:
    """What :func:`bind_new_modality` decided: ``partners`` train against ``new``; ``passengers`` only ride along."""

    new: str
    partners: list[str]
    passengers: list[str] = field(default_factory=list)
    inherited: list[Edge] = field(default_factory=list)  # pairs the checkpoint trained among the frozen ones

    @property
    def frozen(self) -> list[str]:
        return [*self.partners, *self.passengers]


def bind_new_modality(plain: dict[str, Any], held: Sequence[str], trained: Sequence[Edge], where: str) -> BindPlan:
    """Rewrite ``plain`` (the resolved train config, ``graph.modalities`` filled in) in place.

    Args:
        plain: the config; its ``graph`` and ``curriculum`` are replaced.
        held: the modalities the checkpoint holds weights for.
        trained: the pairs its metadata flags as trained.
        where: the checkpoint's path, for messages.

    Raises:
        ConfigError: the new modality not in the data, a graph given by hand, anchors the checkpoint
            lacks, or nothing to bind to.
    """
    new = plain["new_modality"]
    graph = dict(plain.get("graph") or {})
    wanted = list(graph.get("modalities") or [])
    if graph.get("edges"):
        raise ConfigError(
            f"graph.edges: new_modality={new} makes the graph itself (an edge from each frozen modality of "
            f"{where}, or of graph.anchors, to {new}); leave graph.edges unset"
        )
    if new not in wanted:
        from bindspace.cli import did_you_mean

        raise ConfigError(
            f"new_modality={new}{did_you_mean(str(new), wanted)}: not among the modalities the data provides "
            f"{wanted} (graph.modalities)"
        )
    old = [m for m in wanted if m in held and m != new]
    if not old:
        raise ConfigError(
            f"new_modality={new}: init_from {where} holds {list(held)}, none of which is among "
            f"graph.modalities {wanted} besides {new}: nothing to bind it to"
        )
    from bindspace.config import parse_anchors

    anchors = parse_anchors(graph.get("anchors"))
    lacking = [a for a in anchors if a not in old]
    if lacking:
        raise ConfigError(
            f"graph.anchors: {lacking} not among the frozen modalities of {where} {old}; "
            f"new_modality={new} binds to some of those (or, with graph.anchors=null, to all)"
        )
    partners = [m for m in old if m in anchors] if anchors else old
    plan = BindPlan(new, partners, [m for m in old if m not in partners])
    plan.inherited = [(a, b) for a, b in trained if a in old and b in old]
    plain["graph"] = {**graph, "modalities": [*partners, new], "anchors": None, "edges": [[m, new] for m in partners]}
    curriculum = {k: v for k, v in (plain.get("curriculum") or {}).items() if k in ("schedule", "continual")}
    stage = {"name": f"+{new}", "edges": "all", "freeze": partners}  # freeze_parts: the whole encoder
    plain["curriculum"] = {**curriculum, "name": "bind_new_modality", "stages": [stage]}
    rest = f"; {', '.join(plan.passengers)} frozen in no edge (emergent)" if plan.passengers else ""
    if rank_zero_only.rank == 0:
        log.info("new_modality: training %s against %s (frozen, from %s)%s", new, ", ".join(partners), where, rest)
    return plan


def add_passengers(spec, plain: Mapping[str, Any], plan: BindPlan) -> None:
    """Put the frozen modalities that are in no edge into the model and freeze them with the others.

    :func:`bindspace.config.build_run_spec` builds the modalities its edges use; these ride along so
    that they are loaded, evaluated and saved with the space.
    """
    from bindspace.modalities import get_modality

    configs = plain.get("modalities") or {}
    for m in plan.passengers:
        if m not in configs:
            raise ConfigError(f"modalities.{m}: no config for a modality of init_from (add modality@modalities.{m})")
        spec.modalities[m] = get_modality(m).config_from_dict(configs[m])
    for stage in spec.curriculum.stages:
        stage.freeze = [*stage.freeze, *plan.passengers]


def resumed_plan_inputs(path: str) -> tuple[list[str], list[Edge]]:
    """A resumed bind run's own checkpoint: its modalities and trained pairs (``init_from`` is not read)."""
    from bindspace.inference import load_checkpoint

    meta = load_checkpoint(path).get("bindspace")
    modalities = meta.get("modalities") if isinstance(meta, Mapping) else None
    if not isinstance(modalities, Mapping):
        raise ConfigError(f"{path}: no bindspace metadata naming its modalities; cannot resume a new_modality run")
    from bindspace.training.checkpoints import check_metadata_layout

    check_metadata_layout(meta, path)
    return list(modalities), [tuple(e) for e in meta.get("edges") or []]
