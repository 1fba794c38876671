"""Linear probes: how much class information a frozen embedding holds, next to zero-shot.

A logistic-regression classifier per modality (scikit-learn, L-BFGS, multinomial) is fitted on the
frozen embeddings of one split and scored on another that shares no sample id with it (the caller
passes splits made disjoint by :mod:`bindspace.evaluation.fit_split`; :func:`linear_probe` checks it
again by id). The features are standardised with means and scales of the fitted rows alone: unit-norm
embeddings have tiny per-dimension scales, which would make any fixed ``C`` a different regulariser
for every model. Accuracy comes with a seeded percentile bootstrap interval over the scored samples
(:mod:`bindspace.evaluation.stats`) and its chance level: the majority-class rate of the scored
samples, the best any classifier that ignores the embedding can score on them. It is at least ``100 / C``
(a uniform guess) and at least what a probe of a collapsed model scores (the fitted samples' majority
class for every sample), so an accuracy is never shown against a chance level it beats for free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from bindspace.evaluation.fit_split import check_disjoint
from bindspace.evaluation.stats import DEFAULT_BOOTSTRAP, Bootstrap, percent_intervals


def probe_chance(score_labels: np.ndarray) -> float:
    """The majority-class rate of the scored labels in percent: the best accuracy of any constant prediction."""
    _, counts = np.unique(score_labels, return_counts=True)
    return 100.0 * float(counts.max()) / len(score_labels)


def probe_modality(
    fit: np.ndarray,
    fit_labels: np.ndarray,
    score: np.ndarray,
    score_labels: np.ndarray,
    seed: int = 0,
    c: float = 1.0,
    bootstrap: Bootstrap | None = DEFAULT_BOOTSTRAP,
    score_groups: Any = None,
) -> dict[str, Any]:
    """Fit a logistic regression on ``fit`` rows and score it on ``score`` rows of one modality.

    Args:
        fit, score: ``(N, D)`` embeddings.
        fit_labels, score_labels: ``(N,)`` integer class labels.
        seed: the classifier's ``random_state`` (L-BFGS itself is deterministic).
        c: inverse regularisation strength (scikit-learn's ``C``) on the standardised features.
        bootstrap: the interval's bootstrap; None leaves the interval out.
        score_groups: optional ``(N,)`` group labels of the ``score`` rows: rows sharing one (copies of one
            source) are resampled together.

    Returns:
        ``{"top1": %, "top1_ci": [low, high], "chance": %, "classes": C, "fit_samples": n, "scored_samples": m}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(fit_labels)) < 2:
        raise ValueError(
            f"a linear probe needs at least 2 classes among the fitted samples, got {np.unique(fit_labels)}"
        )
    scaler = StandardScaler().fit(fit)
    classifier = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    classifier.fit(scaler.transform(fit), fit_labels)
    correct = (classifier.predict(scaler.transform(score)) == score_labels).astype(np.float64)
    out: dict[str, Any] = {"top1": 100.0 * float(correct.sum()) / len(correct)}
    if bootstrap is not None:
        out["top1_ci"] = percent_intervals(bootstrap, {"top1": correct}, score_groups)["top1"]
    out.update(
        chance=probe_chance(score_labels),
        classes=len(np.unique(np.concatenate([fit_labels, score_labels]))),
        fit_samples=len(fit_labels),
        scored_samples=len(score_labels),
    )
    return out


def linear_probe(
    fit: tuple[dict[str, Tensor], Tensor, Tensor | None],
    score: tuple[dict[str, Tensor], Tensor, Tensor | None],
    fit_ids: Sequence[str],
    score_ids: Sequence[str],
    modalities: Sequence[str] | None = None,
    seed: int = 0,
    c: float = 1.0,
    bootstrap: Bootstrap | None = DEFAULT_BOOTSTRAP,
) -> dict[str, dict[str, Any]]:
    """A linear probe per modality: fitted on ``fit``, scored on ``score`` (``metrics.json["linear_probe"]``).

    Args:
        fit, score: ``(embeddings, ids, labels[, groups])`` of two splits (:func:`bindspace.eval.take_rows`);
            the scored split's groups, when its rows share them, make the interval resample groups.
        fit_ids, score_ids: per row, its sample id (a manifest's ``id``, a scene id): no id may be on both sides.
        modalities: which to probe (default: every modality both splits hold).
        seed, c, bootstrap: see :func:`probe_modality`.

    Raises:
        ValueError: unlabelled splits, or a sample id on both sides.
    """
    (fit_embs, _, fit_labels), (score_embs, _, score_labels) = fit[:3], score[:3]
    if fit_labels is None or score_labels is None:
        raise ValueError("a linear probe needs class labels on the fitted and the scored split")
    if len(fit_ids) != len(fit_labels) or len(score_ids) != len(score_labels):
        raise ValueError("one sample id per row is needed on both sides")
    check_disjoint([str(i) for i in fit_ids], [str(i) for i in score_ids])
    names = list(modalities or [m for m in fit_embs if m in score_embs])
    y_fit, y_score = fit_labels.cpu().numpy(), score_labels.cpu().numpy()
    score_groups = score[3] if len(score) > 3 else None  # the rows' groups, as retrieval and zero-shot use
    return {
        m: probe_modality(
            fit_embs[m].float().cpu().numpy(),
            y_fit,
            score_embs[m].float().cpu().numpy(),
            y_score,
            seed,
            c,
            bootstrap,
            score_groups,
        )
        for m in names
    }
