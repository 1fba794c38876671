"""``new_modality``: bind one modality into a trained space without touching the space.

``bindspace-train experiment=bind_new_modality init_from=<ckpt> new_modality=<name>`` rewrites the run's
graph and curriculum before anything is built: the modalities of the checkpoint (those the data also
provides, other than the new one) are loaded by ``init_from`` and frozen whole (preprocessor, trunk and
head, for the whole run), and the only edges are ``(old, new)`` for each of them, so only the new
encoder and the new edges' temperatures train. The experiment config turns on the frozen-feature cache:
each frozen encoder's trunk runs once per sample. A ``new_modality`` the checkpoint already has gets a
new encoder (its stored one is not loaded) trained against the others.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from bindspace.errors import ConfigError

log = logging.getLogger(__name__)


def bind_new_modality(plain: dict[str, Any], checkpoint_modalities: Sequence[str], where: str) -> list[str]:
    """Rewrite ``plain`` (the resolved train config, ``graph.modalities`` filled in) in place; returns the frozen ones.

    Args:
        plain: the config; its ``graph`` and ``curriculum`` are replaced.
        checkpoint_modalities: the modalities ``init_from`` holds weights for (a resumed run: its own
            checkpoint's, minus the new one).
        where: the checkpoint's path, for messages.

    Raises:
        ConfigError: the new modality not in the data, a graph given by hand, or nothing to bind to.
    """
    new = plain["new_modality"]
    graph = dict(plain.get("graph") or {})
    wanted = list(graph.get("modalities") or [])
    if graph.get("edges"):
        raise ConfigError(
            f"graph.edges: new_modality={new} makes the graph itself (an edge from each of {where}'s modalities "
            f"to {new}); leave graph.edges unset, and restrict the modalities with graph.modalities"
        )
    if new not in wanted:
        raise ConfigError(f"new_modality={new}: not among the modalities the data provides {wanted} (graph.modalities)")
    old = [m for m in wanted if m in checkpoint_modalities and m != new]
    if not old:
        raise ConfigError(
            f"new_modality={new}: init_from {where} holds {list(checkpoint_modalities)}, none of which is among "
            f"graph.modalities {wanted} besides {new}: nothing to bind it to"
        )
    plain["graph"] = {**graph, "modalities": [*old, new], "anchors": None, "edges": [[m, new] for m in old]}
    curriculum = {k: v for k, v in (plain.get("curriculum") or {}).items() if k in ("schedule", "continual")}
    stage = {"name": f"+{new}", "edges": "all", "freeze": old}  # freeze_parts: the whole encoder
    plain["curriculum"] = {**curriculum, "name": "bind_new_modality", "stages": [stage]}
    log.info("new_modality: training %s against %s (frozen, from %s)", new, ", ".join(old), where)
    return old


def own_checkpoint_modalities(path: str, new: str) -> list[str]:
    """The modalities a resumed bind run froze: its own checkpoint's, minus the new one (init_from is not read)."""
    from bindspace.inference import load_checkpoint

    meta = load_checkpoint(path).get("bindspace")
    modalities = meta.get("modalities") if isinstance(meta, Mapping) else None
    if not isinstance(modalities, Mapping):
        raise ConfigError(f"{path}: no bindspace metadata naming its modalities; cannot resume a new_modality run")
    return [m for m in modalities if m != new]
