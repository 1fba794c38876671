"""Cross-modal retrieval of every ordered pair of modalities: tie-aware metrics, intervals and chance.

The metrics of one query set against one gallery live in :mod:`bindspace.evaluation.ranking` and are
re-exported here (``retrieval_metrics``, ``rank_of_matches``, ``average_precision``, ``recall_at_k``),
as is ``topk_chunked``. Every number is the expected value over random orders of tied items (see
:mod:`bindspace.evaluation.ties`), so a collapsed model scores chance.
"""

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from bindspace.evaluation.ranking import (
    aggregate,
    average_precision,
    chance_levels,
    check_ks,
    per_query_values,
    rank_of_matches,
    recall_at_k,
    retrieval_metrics,
    retrieval_per_query,
    scan,
)
from bindspace.evaluation.stats import DEFAULT_BOOTSTRAP, Bootstrap, percent_intervals, uninformative
from bindspace.evaluation.ties import Ranks
from bindspace.evaluation.topk import topk_chunked

__all__ = [
    "MetricTable",
    "Ranks",
    "RetrievalResult",
    "average_precision",
    "chance_levels",
    "evaluate_retrieval",
    "rank_of_matches",
    "recall_at_k",
    "retrieval_matrix",
    "retrieval_metrics",
    "retrieval_per_query",
    "topk_chunked",
]

log = logging.getLogger(__name__)

# "<query>-><gallery>" -> {"R@1": ..., "R@1_ci": [lo, hi], "median_rank": ..., "mAP": ..., "trained": bool}
MetricTable = dict[str, dict[str, float | bool | list[float]]]


def _as_edges(
    trained_pairs: Iterable[tuple[str, str]] | set[frozenset[str]],
) -> set[frozenset[str]]:
    edges = set()
    for pair in trained_pairs:
        edge = frozenset() if isinstance(pair, str) else frozenset(pair)  # not a set of letters
        if len(edge) != 2:
            raise ValueError(f"trained pair {pair!r} must name two different modalities")
        edges.add(edge)
    return edges


@dataclass
class RetrievalResult:
    """Everything `evaluate_retrieval` measures.

    Attributes:
        instance: "<q>-><g>" -> `retrieval_metrics`, "<metric>_ci" intervals (when bootstrapped) and
            "trained".
        class_level: the same with class labels as relevance, or None without labels.
        per_query: "retrieval/<q>-><g>/R@k" and ".../AP" (and "retrieval_class/...") -> (N,) float32
            expected values in [0, 1], the layout of ``per_query.npz``.
        chance: {"retrieval": `chance_levels`, "retrieval_class": ...} of this gallery.
        summary_ci: "trained/R@1", "emergent/mAP", ... -> [low, high] % of the mean over the group's
            pairs (the same resampled queries in every pair).
        bootstrap: the bootstrap used, or None.
    """

    instance: MetricTable
    class_level: MetricTable | None
    per_query: dict[str, np.ndarray] = field(default_factory=dict)
    chance: dict[str, dict[str, float]] = field(default_factory=dict)
    summary_ci: dict[str, list[float]] = field(default_factory=dict)
    bootstrap: Bootstrap | None = None


def _check_inputs(embeddings: dict[str, Tensor], keys: Tensor, class_labels: Tensor | None) -> None:
    if len(embeddings) < 2:
        raise ValueError(f"need at least two modalities, got {list(embeddings)}")
    for name, emb in embeddings.items():
        if "->" in name or "/" in name:
            raise ValueError(f"modality name {name!r} must not contain '->' or '/' (used in pair names)")
        if emb.shape[:1] != keys.shape or emb.ndim != 2:
            raise ValueError(
                f"embeddings[{name!r}] must be (N, D) with N = len(keys) = {len(keys)}, got {tuple(emb.shape)}"
            )
    dims = {name: emb.shape[1] for name, emb in embeddings.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"all modalities must share one embedding dim, got {dims}")
    if class_labels is not None and class_labels.shape != keys.shape:
        raise ValueError(f"class_labels must match keys {tuple(keys.shape)}, got {tuple(class_labels.shape)}")


_warned: set[tuple[int, tuple[str, ...]]] = set()


def _warn_if_small(chance: dict[str, float], gallery_size: int, ks: Sequence[int]) -> None:
    small = [m for m in uninformative(chance) if m != "median_rank"]
    if small and (gallery_size, tuple(small)) not in _warned:
        _warned.add((gallery_size, tuple(small)))  # once per gallery size, not at every validation
        log.warning(
            "held-out gallery of %d items is too small for %s: a random ranking already scores above 10%% "
            "(%s); use at least %d held-out samples",
            gallery_size, ", ".join(small), ", ".join(f"{m} {chance[m]:.1f}%" for m in small), 10 * max(ks),
        )  # fmt: skip


def evaluate_retrieval(
    embeddings: dict[str, Tensor],
    keys: Tensor,
    trained_pairs: Iterable[tuple[str, str]] | set[frozenset[str]],
    class_labels: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
    bootstrap: Bootstrap | None = DEFAULT_BOOTSTRAP,
) -> RetrievalResult:
    """Retrieval of every ordered pair of modalities with intervals, per-query values and chance.

    Args:
        embeddings: modality -> (N, D) unit-norm embeddings; row i of every modality is sample i.
        keys: (N,) sample ids; instance-level relevance is "same id". Rows sharing a key (a group:
            several captions of one sound) are one source, so the intervals resample keys, not rows.
        trained_pairs: unordered edges trained together, as (a, b) tuples or frozensets. Names
            missing from `embeddings` are allowed and never match.
        class_labels: optional (N,) labels for class-level relevance ("same label"; the query's
            own sample counts as relevant too).
        ks: recall cut-offs.
        chunk_size: at most this many queries are scored at once.
        bootstrap: intervals over queries (over keys when rows share one); None leaves out every "_ci"
            and summary_ci.

    Returns:
        A :class:`RetrievalResult`. Logs a warning when the gallery is too small for a metric at
        instance level (chance above :data:`~bindspace.evaluation.stats.CHANCE_LIMIT` percent).
    """
    edges = _as_edges(trained_pairs)
    check_ks(ks)
    _check_inputs(embeddings, keys, class_labels)
    levels = {"retrieval": keys} | ({} if class_labels is None else {"retrieval_class": class_labels})
    per_query: dict[str, dict[str, Tensor]] = {}
    tables: dict[str, MetricTable] = {level: {} for level in levels}
    for q, g in itertools.permutations(embeddings, 2):
        # Both levels are scored from the same similarity blocks: one matmul per pair.
        scanned = scan(embeddings[q], embeddings[g], [(k, k) for k in levels.values()], chunk_size, with_ap=True)
        for level, (ranks, ap) in zip(levels, scanned, strict=True):
            values = per_query[f"{level}/{q}->{g}"] = per_query_values(ranks, ap, ks)
            tables[level][f"{q}->{g}"] = {**aggregate(values, ks), "trained": frozenset((q, g)) in edges}
    chance = {level: chance_levels(k, k, ks) for level, k in levels.items()}
    _warn_if_small(chance["retrieval"], len(keys), ks)
    metrics = [*(f"R@{k}" for k in ks), "AP"]
    result = RetrievalResult(
        tables["retrieval"],
        tables.get("retrieval_class"),
        per_query={f"{name}/{m}": v[m].float().cpu().numpy() for name, v in per_query.items() for m in metrics},
        chance=chance,
        bootstrap=bootstrap,
    )
    if bootstrap is not None:
        _add_intervals(result, per_query, ks, bootstrap, keys)
    return result


def _summary_columns(table: MetricTable, per_query: dict[str, dict[str, Tensor]], ks: Sequence[int]) -> dict:
    """Per-query means over each group's pairs: the columns whose means are `summarize`'s numbers."""
    columns = {}
    for group in ("trained", "emergent"):
        pairs = [p for p, e in table.items() if bool(e["trained"]) == (group == "trained")]
        if not pairs:
            continue
        for metric, source in (*((f"R@{k}", f"R@{k}") for k in ks), ("mAP", "AP")):
            stacked = torch.stack([per_query[f"retrieval/{p}"][source] for p in pairs])
            columns[f"{group}/{metric}"] = stacked.mean(0).cpu().numpy()
    return columns


def _add_intervals(
    result: RetrievalResult,
    per_query: dict[str, dict[str, Tensor]],
    ks: Sequence[int],
    bootstrap: Bootstrap,
    keys: Tensor,
) -> None:
    """ "<metric>_ci" in every entry and summary_ci, from one bootstrap pass over all columns (over the
    distinct keys when rows share one)."""
    columns = {
        (name, f"{metric}_ci"): values[source].cpu().numpy()
        for name, values in per_query.items()
        for metric, source in (*((f"R@{k}", f"R@{k}") for k in ks), ("mAP", "AP"))
    }
    summary = {("summary", name): v for name, v in _summary_columns(result.instance, per_query, ks).items()}
    bounds = percent_intervals(bootstrap, {**columns, **summary}, groups=keys)
    for (where, name), interval in bounds.items():
        if where == "summary":
            result.summary_ci[name] = interval
            continue
        level, pair = where.split("/")
        (result.instance if level == "retrieval" else result.class_level)[pair][name] = interval


def retrieval_matrix(
    embeddings: dict[str, Tensor],
    keys: Tensor,
    trained_pairs: Iterable[tuple[str, str]] | set[frozenset[str]],
    class_labels: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
    bootstrap: Bootstrap | None = DEFAULT_BOOTSTRAP,
) -> tuple[MetricTable, MetricTable | None]:
    """Retrieval metrics for every ordered pair of modalities, flagged trained or emergent.

    Args are as in `evaluate_retrieval`.

    Returns:
        (instance, class_level): each maps "<q>-><g>", for every ordered pair of distinct
        modalities, to `retrieval_metrics` plus "R@k_ci" and "mAP_ci" (95% bootstrap intervals in
        percent; left out with bootstrap=None) and "trained" (is {q, g} a trained edge).
        class_level is None without class_labels.
    """
    result = evaluate_retrieval(embeddings, keys, trained_pairs, class_labels, ks, chunk_size, bootstrap)
    return result.instance, result.class_level
