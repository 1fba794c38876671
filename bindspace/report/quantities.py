"""What a report row measures, read three ways: the run's value, its own interval, and per query.

A quantity is named by a key:

- ``"trained/R@1"``, ``"emergent/mAP"``: the mean over the run's trained (emergent) pairs, as in
  ``metrics.json["summary"]``;
- ``"pair/image->text/R@1"``: one ordered pair;
- ``"zero_shot/audio/top1"``: zero-shot accuracy of one modality.

``metrics.json`` holds percents; ``per_query.npz`` holds per-query expected values in [0, 1]
(``retrieval/<q>-><g>/R@1|R@5|R@10|AP``, ``zero_shot/<m>/top1|top5``), scaled here to percent so
that both agree: the mean of a run's per-query vector is its ``metrics.json`` value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bindspace.report.runs import KINDS
from bindspace.report.tables import kind_means

PER_QUERY_NAME = {"mAP": "AP"}  # metrics.json name -> per_query.npz name; the mean of per-query AP is mAP


def parse_key(key: str) -> tuple[str, str, str]:
    """("kind", kind, metric), ("pair", "q->g", metric) or ("zero_shot", modality, metric).

    Raises:
        ValueError: a key of none of the three forms.
    """
    parts = key.split("/")
    if len(parts) == 2 and parts[0] in KINDS:
        return "kind", parts[0], parts[1]
    if len(parts) == 3 and parts[0] in ("pair", "zero_shot"):
        return parts[0], parts[1], parts[2]
    raise ValueError(
        f"unknown quantity {key!r}: expected <trained|emergent>/<metric>, pair/<q>-><g>/<m>, zero_shot/<m>/<k>"
    )


def _pairs(metrics: Mapping[str, Any], kind: str) -> list[str]:
    table = metrics.get("retrieval") or {}
    return [p for p, e in table.items() if bool(e.get("trained")) == (kind == "trained")]


def run_value(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    """The run's value of `key` in percent (None when the run does not have it)."""
    form, name, metric = parse_key(key)
    metrics = metrics or {}
    if form == "kind":
        return kind_means(dict(metrics), metric).get(name)
    entry = (metrics.get("retrieval") if form == "pair" else metrics.get("zero_shot") or {}) or {}
    value = (entry.get(name) or {}).get(metric)
    return None if value is None else float(value)


def run_interval(metrics: Mapping[str, Any] | None, key: str) -> tuple[float, float] | None:
    """The run's own 95% interval of `key` from ``metrics.json`` (a bootstrap over its queries, or
    their groups), if recorded."""
    form, name, metric = parse_key(key)
    metrics = metrics or {}
    if form == "kind":
        ci = (metrics.get("summary_ci") or {}).get(f"{name}/{metric}")
    else:
        entry = (metrics.get("retrieval") if form == "pair" else metrics.get("zero_shot") or {}) or {}
        ci = (entry.get(name) or {}).get(f"{metric}_ci")
    if not isinstance(ci, list | tuple) or len(ci) != 2 or any(v is None for v in ci):
        return None
    return float(ci[0]), float(ci[1])


def query_values(
    arrays: Mapping[str, np.ndarray] | None, metrics: Mapping[str, Any] | None, key: str
) -> np.ndarray | None:
    """Per-query values of `key` in percent, (N,) in the order of ``arrays["ids"]``; None if any part is missing.

    A kind key averages its pairs query by query, which equals averaging the pairs' means because every
    pair scores the same N queries (one per held-out sample).
    """
    if arrays is None:
        return None
    form, name, metric = parse_key(key)
    stored = PER_QUERY_NAME.get(metric, metric)
    if form == "zero_shot":
        names = [f"zero_shot/{name}/{stored}"]
    else:
        pairs = _pairs(metrics or {}, name) if form == "kind" else [name]
        names = [f"retrieval/{pair}/{stored}" for pair in pairs]
    if not names or any(n not in arrays for n in names):
        return None
    return 100.0 * np.mean([arrays[n].astype(np.float64) for n in names], axis=0)
