"""The one evaluation: what training's final evaluation, curriculum stage ends and ``bindspace-eval`` score.

Every number of a ``metrics.json`` comes from :func:`evaluate_split` on an embedded held-out split:
tie-aware retrieval for every ordered modality pair (instance level, and class level when the split is
labelled) with bootstrap intervals and chance; zero-shot classification against text prompts of the
class names when there are labels, prompts and a text encoder; and the modality gap. Stage ends ask
for retrieval only. ``bindspace-eval`` adds what needs a fitted correction (centring, bridges: fitted
on other samples, ``bindspace.eval``) on top of the same keys.

``metrics.json`` carries ``"format": METRICS_FORMAT``. Version 2 is this layout; files without the key
are version 1 (earlier releases), whose keys are a subset of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bindspace.evaluation.embed import HeldOut, embed_batches, relevance_keys
from bindspace.evaluation.gap import gap_table
from bindspace.evaluation.retrieval import evaluate_retrieval
from bindspace.evaluation.stats import group_index
from bindspace.evaluation.tables import summarize
from bindspace.evaluation.zero_shot import Prompts, class_embeddings, evaluate_zero_shot
from bindspace.graph import Edge

METRICS_FORMAT = "bindspace-metrics/2"
METRICS_VERSION = 2

Split = HeldOut  # embeddings by modality, ids, labels (or None), groups (or None)


@dataclass
class Evaluation:
    """What :func:`evaluate_split` found: the ``metrics.json`` keys, the per-query values of
    ``per_query.npz`` (for paired comparisons across runs), and the embedded split itself."""

    metrics: dict[str, Any]
    per_query: dict[str, Any]
    split: Split


def embed_split(model: Any, batches: Iterable[dict]) -> Split:
    """Embed every modality of the model that every batch holds (a held-out set may hold fewer)."""
    batches = list(batches)
    present = [m for m in model.modalities if all(m in b for b in batches)]
    return embed_batches(model, batches, present)


def evaluate_split(
    model: Any,
    split: Split,
    trained_edges: Sequence[Edge],
    *,
    class_names: Sequence[str] | None = None,
    prompts: Prompts | None = None,
    zero_shot_ks: Sequence[int] = (1, 5),
    zero_shot_modalities: Sequence[str] | None = None,
    gap: bool = True,
    gap_seed: int = 0,
) -> Evaluation:
    """Score one embedded held-out split.

    Args:
        model: embeds the prompts (a ``BindSpaceModel``, a ``BindSpace`` or a text-embedding function).
        split: ``(embeddings, ids, labels[, groups])`` (:func:`embed_split`); with groups, the rows of one
            group are each other's matches at instance level (``instance_relevance: "group"``).
        trained_edges: the pairs flagged as trained; every other pair is emergent.
        class_names, prompts: zero-shot needs both, labels and a text encoder; otherwise ``zero_shot`` is ``{}``.
        zero_shot_ks, zero_shot_modalities: cut-offs and the modalities classified (default: all but text).
        gap: add ``modality_gap`` (centroid distance, pair cosines, linear separability per pair).
        gap_seed: seed of the separability probe.

    Returns:
        The keys ``retrieval``, ``retrieval_class`` (labelled splits), ``gallery_size``,
        ``instance_relevance`` (``"id"`` or ``"group"``), ``summary``,
        ``summary_ci``, ``chance``, ``bootstrap``, ``zero_shot`` and (``gap``) ``modality_gap``.
    """
    split = HeldOut(*split)
    embs, ids, labels = split.embeddings, split.ids, split.labels
    # Instance level: a query's matches are its own row, and with a group column every row of its group.
    keys = relevance_keys(split)
    found = evaluate_retrieval(embs, keys, [tuple(e) for e in trained_edges], class_labels=labels)
    metrics: dict[str, Any] = {"retrieval": found.instance, "gallery_size": int(ids.shape[0])}
    metrics["instance_relevance"] = "id" if split.groups is None else "group"
    if found.class_level is not None:
        metrics["retrieval_class"] = found.class_level
    metrics.update(summary=summarize(found.instance), summary_ci=found.summary_ci, chance=dict(found.chance))
    # Rows sharing a key (a group) are one source: every interval resamples groups (a cluster bootstrap),
    # and per_query.npz keeps the groups so that bindspace-report resamples them too.
    shared = group_index(keys, len(keys))
    metrics["bootstrap"] = found.bootstrap.as_dict(grouped=shared is not None)
    per_query: dict[str, Any] = {"ids": ids, **({} if labels is None else {"labels": labels}), **found.per_query}
    if shared is not None:
        per_query["groups"] = shared
    metrics["zero_shot"] = {}
    if labels is not None and class_names is not None and prompts is not None and "text" in embs:
        wanted = list(zero_shot_modalities or [m for m in embs if m != "text"])
        classes = class_embeddings(model, prompts.class_names(list(class_names)), prompts.templates)
        zero_shot = evaluate_zero_shot({m: embs[m] for m in wanted}, labels, classes, zero_shot_ks, groups=keys)
        metrics["zero_shot"], metrics["chance"]["zero_shot"] = zero_shot.table, zero_shot.chance
        per_query.update(zero_shot.per_query)
    if gap:
        metrics["modality_gap"] = gap_table(embs, seed=gap_seed, groups=keys)
    return Evaluation(metrics, per_query, split)


def versioned(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with ``"format"`` first, as every ``metrics.json`` is written."""
    return {"format": METRICS_FORMAT, **{k: v for k, v in metrics.items() if k != "format"}}


def metrics_version(metrics: dict[str, Any]) -> int:
    """The layout version of a parsed ``metrics.json`` (1 for files written before the ``format`` key).

    Raises:
        ValueError: a ``format`` that is not bindspace's, or a newer version than this release reads.
    """
    fmt = metrics.get("format")
    if fmt is None:
        return 1
    name, _, version = str(fmt).partition("/")
    if name != "bindspace-metrics" or not version.isdigit():
        raise ValueError(f"format {fmt!r} is not a bindspace metrics file")
    if int(version) > METRICS_VERSION:
        raise ValueError(f"format {fmt!r} is newer than this bindspace reads ({METRICS_FORMAT}); upgrade bindspace")
    return int(version)
