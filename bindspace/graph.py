"""The alignment graph: which pairs of modalities are trained together (the edges).

``anchors=["image"]`` gives ImageBind's star (every other modality paired with image);
``anchors=["text"]`` gives LanguageBind's; several anchors align every other modality to each
anchor and the anchors to each other. An explicit edge list overrides the anchors. Edges are ordered
``(anchor side, other side)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bindspace.errors import ConfigError

Edge = tuple[str, str]


def edge_key(edge: Edge) -> str:
    """Edges are named ``"anchor|other"`` in configs, logs and checkpoints."""
    return f"{edge[0]}|{edge[1]}"


def _check_known(names: Iterable[str], modalities: Sequence[str], what: str) -> None:
    from bindspace.modalities.base import list_modalities, unknown_modality  # the registry is above the graph

    registered = set(list_modalities())
    for name in names:
        if name not in registered:
            raise ConfigError(f"{what}: {unknown_modality(name)}")
        if name not in modalities:
            raise ConfigError(f"{what}: {name!r} is not among the configured modalities {list(modalities)}")


def build_edges(
    modalities: Sequence[str],
    anchors: Sequence[str],
    edges: Sequence[Sequence[str]] | None = None,
) -> list[Edge]:
    """The trained edges, validated.

    Args:
        modalities: the configured modalities, in canonical order.
        anchors: anchor modalities (ignored when ``edges`` is given, except for validation).
        edges: explicit ``[[a, b], ...]``; each pair becomes ``(a, b)``.

    Returns:
        Deduplicated edges in a stable order.

    Raises:
        ConfigError: naming the unknown modality, the anchor that is not configured, a self-edge, etc.
    """
    _check_known(anchors, modalities, "anchor")
    if edges:
        out: list[Edge] = []
        for e in edges:
            if len(e) != 2:
                raise ConfigError(f"graph.edges: each edge must name two modalities, got {list(e)}")
            _check_known(e, modalities, f"graph.edges {list(e)}")
            if e[0] == e[1]:
                raise ConfigError(f"graph.edges: self-edge {list(e)}")
            if (e[0], e[1]) not in out and (e[1], e[0]) not in out:
                out.append((e[0], e[1]))
        return out
    if not anchors:
        raise ConfigError("anchor: at least one anchor modality (or graph.edges) is required")
    out = []
    for i, a in enumerate(anchors):
        for b in anchors[i + 1 :]:
            out.append((a, b))
        out.extend((a, m) for m in modalities if m not in anchors)
    if not out:
        raise ConfigError(f"anchor {list(anchors)} leaves no edge among modalities {list(modalities)}")
    return out


def graph_modalities(edges: Sequence[Edge], order: Sequence[str]) -> list[str]:
    """Modalities touched by the edges, in canonical order."""
    used = {m for e in edges for m in e}
    return [m for m in order if m in used]
