"""The modality gap: how far apart modalities sit in the shared space, and two ways to close it.

Contrastive training leaves every modality in its own narrow cone of the unit sphere (Liang et al.,
"Mind the Gap", NeurIPS 2022): matched pairs score higher than random pairs, but *every* text is
closer to every audio clip than to any image, say. That matters when one index holds several
modalities. Measured here per pair of modalities:

- ``centroid_distance``: ``|mean(a) - mean(b)|`` of the unit-norm embeddings (0 = no gap, 2 = opposite);
- ``matched_cosine`` / ``random_cosine``: mean cosine of paired rows and of all unpaired rows;
- ``separability``: held-out accuracy (%) of a logistic regression telling the two apart (50 = mixed),
  fitted and scored on disjoint samples, with a bootstrap interval over the scored ones.

Mitigations, both estimated on samples disjoint from the scored ones (``bindspace.evaluation.fit_split``)
and applied to new embeddings:

- centring: subtract the modality's mean, renormalise (:func:`fit_centering`, :func:`center`);
- a linear bridge from one modality onto another fitted on paired data (:func:`fit_bridge`).

Everything takes plain tensors; nothing here needs a model, a checkpoint or Hydra.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the library
    from matplotlib.figure import Figure

from bindspace.evaluation.fit_split import check_disjoint
from bindspace.evaluation.mixed import mixed_index  # noqa: F401 (re-exported: its public home since issue 12)
from bindspace.evaluation.stats import DEFAULT_BOOTSTRAP, Bootstrap, group_index

BRIDGE_METHODS = ("procrustes", "lstsq")


def _check_2d(name: str, x: Tensor, dim: int | None = None) -> Tensor:
    if x.ndim != 2 or len(x) == 0 or (dim is not None and x.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise ValueError(f"{name} must be a non-empty {want} tensor, got {tuple(x.shape)}")
    return x.detach().float()


def centroid_distance(a: Tensor, b: Tensor) -> float:
    """Euclidean distance between the means of two sets of unit-norm embeddings ``(N, D)``, ``(M, D)``."""
    a, b = _check_2d("a", a), _check_2d("b", b, a.shape[1])
    return float((a.mean(0) - b.mean(0)).norm())


def pair_cosines(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Mean cosine of matched rows ``(a[i], b[i])`` and of all unmatched rows ``(a[i], b[j]), i != j``.

    The unmatched mean is exact without the N x N matrix: the sum over all pairs is ``sum(a) . sum(b)``.
    """
    a, b = _check_2d("a", a), _check_2d("b", b, a.shape[1])
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(
            f"paired embeddings must have equal shapes with N >= 2, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    a, b = a.double(), b.double()  # the all-pairs sum cancels a large diagonal
    matched = (a * b).sum()
    n = len(a)
    unmatched = (a.sum(0) @ b.sum(0) - matched) / (n * (n - 1))
    return float(matched / n), float(unmatched)


def linear_separability(a: Tensor, b: Tensor, seed: int = 0, c: float = 1.0, groups: Any = None) -> float:
    """Held-out accuracy (%) of a logistic regression telling modality ``a`` from modality ``b``.

    With equal lengths, row i of ``a`` and of ``b`` is the same sample: the samples (their ``groups``
    when given, e.g. the captions of one sound) are shuffled with ``seed`` and cut in halves, the
    classifier fits both modalities of the first half and is scored on both of the second. No sample is
    on both sides: a scored row whose own partner was fitted on would carry its label across, and the gap
    would look smaller than it is. Sets of unequal length are unpaired and each is halved on its own.

    The classifier is :func:`~bindspace.evaluation.probe.probe_modality`'s (scikit-learn, L-BFGS, ``c``
    the inverse regularisation) on features standardised with the fitted rows' means and scales: on raw
    unit-norm embeddings, whose per-dimension scales are tiny, a fixed penalty shrank the first release's
    probe to the class-mean direction, which scored pairs a probe separates perfectly at 64-90%, and
    centred pairs below chance even on the rows it was fitted on. The score weights each class equally; a
    logit of exactly 0 counts as half right (ties by expectation). Chance is 50.
    """
    return float(_separability(a, b, seed, c, groups)[0].mean())


def _separability(a: Tensor, b: Tensor, seed: int, c: float, groups: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The scored units' accuracies in % (for paired sets one per scored sample: the mean of its ``a``
    and ``b`` rows being classified right), and each unit's group (None: one row per group)."""
    a, b = _check_2d("a", a).double().numpy(), _check_2d("b", b, a.shape[1]).double().numpy()
    if len(a) < 4 or len(b) < 4:
        raise ValueError(f"need at least 4 embeddings per modality to split in halves, got {len(a)} and {len(b)}")
    g = torch.Generator().manual_seed(seed)
    if len(a) != len(b):  # unpaired
        if groups is not None:
            raise ValueError(f"groups name the samples of paired sets; got {len(a)} and {len(b)} rows")
        (a_fit, a_test), (b_fit, b_test) = (
            np.array_split(x[torch.randperm(len(x), generator=g).numpy()], 2) for x in (a, b)
        )
        right_a, right_b = _probe_scores(a_fit, b_fit, a_test, b_test, c, seed)
        return np.array([50.0 * (right_a.mean() + right_b.mean())]), None
    index = group_index(groups, len(a))
    unit = index if index is not None else np.arange(len(a))
    n_units = int(unit.max()) + 1
    if n_units < 2:
        raise ValueError("need at least 2 samples (groups) to split in halves")
    fitted = np.zeros(n_units, dtype=bool)
    fitted[torch.randperm(n_units, generator=g)[: n_units // 2].numpy()] = True
    fit_rows, test_rows = fitted[unit], ~fitted[unit]
    check_disjoint(np.unique(unit[fit_rows]).tolist(), np.unique(unit[test_rows]).tolist())
    right_a, right_b = _probe_scores(a[fit_rows], b[fit_rows], a[test_rows], b[test_rows], c, seed)
    scored_groups = None if index is None else index[test_rows]
    return 50.0 * (right_a + right_b), scored_groups  # row by row: their mean is the class-balanced accuracy


def _probe_scores(
    a_fit: np.ndarray, b_fit: np.ndarray, a_test: np.ndarray, b_test: np.ndarray, c: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each scored row of ``a`` and of ``b`` is classified right (1, 0, or 0.5 for a tie)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([a_fit, b_fit])
    y = np.r_[np.zeros(len(a_fit)), np.ones(len(b_fit))]
    scaler = StandardScaler().fit(x)
    probe = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(scaler.transform(x), y)
    # A logit of exactly 0 is a tie between the two classes: half right in expectation (the tie rule of every
    # bindspace metric), so identical modalities score chance (50), not 0.
    logits_a = probe.decision_function(scaler.transform(a_test))
    logits_b = probe.decision_function(scaler.transform(b_test))
    return (logits_a < 0) + 0.5 * (logits_a == 0), (logits_b > 0) + 0.5 * (logits_b == 0)


def modality_gap(
    a: Tensor, b: Tensor, seed: int = 0, groups: Any = None, bootstrap: Bootstrap = DEFAULT_BOOTSTRAP
) -> dict[str, Any]:
    """Every gap measure for one pair of modalities; row i of ``a`` and of ``b`` is the same sample
    (``groups``: rows that are copies of one sample, kept on one side of the separability split).

    Returns:
        {"centroid_distance", "matched_cosine", "random_cosine", "separability" (%, chance 50),
        "separability_ci" ([low, high], ``bootstrap`` over the scored samples or their groups)}. With fewer
        than 4 samples (or groups) the probe has nothing to be scored on: ``separability`` and its interval
        are None and ``separability_skipped`` says why.
    """
    matched, unmatched = pair_cosines(a, b)
    out = {"centroid_distance": centroid_distance(a, b), "matched_cosine": matched, "random_cosine": unmatched}
    too_few = _too_few_to_split(a, b, groups)
    if too_few:  # a tiny held-out set: the other measures stand, separability is not made up
        return {**out, "separability": None, "separability_ci": None, "separability_skipped": too_few}
    scores, scored_groups = _separability(a, b, seed, 1.0, groups)
    low, high = bootstrap.intervals(scores, scored_groups)
    return {**out, "separability": float(scores.mean()), "separability_ci": [float(low), float(high)]}


def _too_few_to_split(a: Tensor, b: Tensor, groups: Any) -> str | None:
    """Why the separability probe cannot be fitted on half of the samples and scored on the rest, or None."""
    if min(len(a), len(b)) < 4:
        return f"needs at least 4 embeddings per modality to fit on half and score the rest; got {len(a)} and {len(b)}"
    if groups is not None and len(a) == len(b):
        index = group_index(groups, len(a))
        if index is not None and int(index.max()) + 1 < 4:
            return f"needs at least 4 samples (groups) to fit on half and score the rest; got {int(index.max()) + 1}"
    return None


def gap_table(
    embeddings: Mapping[str, Tensor],
    pairs: Sequence[tuple[str, str]] | None = None,
    seed: int = 0,
    groups: Any = None,
) -> dict[str, dict[str, Any]]:
    """:func:`modality_gap` for every unordered pair (default) or the given pairs, keyed ``"a|b"``; the
    modalities' rows are the same samples (``groups``: the rows' group labels, see :func:`modality_gap`)."""
    pairs = list(pairs) if pairs is not None else list(itertools.combinations(embeddings, 2))
    for pair in pairs:
        missing = [m for m in pair if m not in embeddings]
        if missing:
            raise ValueError(f"gap pair {pair}: no embeddings for {missing}; have {list(embeddings)}")
    return {f"{a}|{b}": modality_gap(embeddings[a], embeddings[b], seed=seed, groups=groups) for a, b in pairs}


# ---- mitigation 1: per-modality centring --------------------------------------------------------
def fit_centering(embeddings: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per-modality mean ``(D,)`` of reference embeddings, to subtract before renormalising."""
    return {m: _check_2d(f"embeddings[{m!r}]", e).mean(0) for m, e in embeddings.items()}


def center(embeddings: Tensor, mean: Tensor) -> Tensor:
    """Subtract a modality's mean and project back onto the unit sphere: ``(N, D) -> (N, D)``."""
    if mean.shape != embeddings.shape[-1:]:
        raise ValueError(f"centring mean must be ({embeddings.shape[-1]},), got {tuple(mean.shape)}")
    return F.normalize(embeddings.float() - mean.to(embeddings.device, torch.float32), dim=-1)


def center_all(embeddings: Mapping[str, Tensor], means: Mapping[str, Tensor]) -> dict[str, Tensor]:
    missing = [m for m in embeddings if m not in means]
    if missing:
        raise ValueError(f"no centring mean for {missing}; have {sorted(means)}")
    return {m: center(e, means[m]) for m, e in embeddings.items()}


# ---- mitigation 2: a linear bridge between two modalities ---------------------------------------
@dataclass
class Bridge:
    """A linear map ``source -> target`` of the shared space, then renormalisation.

    ``procrustes`` is the rotation that best aligns paired embeddings (the space's geometry is kept);
    ``lstsq`` is the unconstrained least-squares map (more freedom, more to fit).
    """

    source: str
    target: str
    weight: Tensor  # (D, D): mapped = normalize(x @ weight)
    method: str = "procrustes"

    def __call__(self, embeddings: Tensor) -> Tensor:
        return F.normalize(embeddings.float() @ self.weight.to(embeddings.device, torch.float32), dim=-1)

    @property
    def key(self) -> str:
        return f"{self.source}->{self.target}"

    def to_dict(self) -> dict:
        """Plain lists, for ``checkpoint["bindspace"]["bridges"]``."""
        return {"source": self.source, "target": self.target, "method": self.method, "weight": self.weight.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping) -> Bridge:
        return cls(data["source"], data["target"], torch.tensor(data["weight"], dtype=torch.float32), data["method"])


def fit_bridge(
    source: Tensor, target: Tensor, method: str = "procrustes", names: tuple[str, str] = ("a", "b")
) -> Bridge:
    """Fit ``source @ W ~ target`` on paired rows (row i of each is the same sample).

    Args:
        source: (N, D) embeddings of the modality to map.
        target: (N, D) embeddings of the modality to map onto.
        method: "procrustes" (W orthogonal: ``U V^T`` from the SVD of ``source^T target``) or "lstsq".
        names: (source, target) modality names stored with the bridge.
    """
    source, target = _check_2d("source", source), _check_2d("target", target, source.shape[1])
    if source.shape != target.shape:
        raise ValueError(f"bridge needs paired rows, got {tuple(source.shape)} and {tuple(target.shape)}")
    if method == "procrustes":
        u, _, vh = torch.linalg.svd(source.double().T @ target.double())
        weight = u @ vh
    elif method == "lstsq":
        weight = torch.linalg.lstsq(source.double(), target.double()).solution
    else:
        raise ValueError(f"bridge method must be one of {BRIDGE_METHODS}, got {method!r}")
    return Bridge(names[0], names[1], weight.float(), method)


# ---- several modalities in one index: bindspace.evaluation.mixed (re-exported here) ---------------


# ---- the picture --------------------------------------------------------------------------------
def pca_2d(x: Tensor) -> Tensor:
    """(N, D) -> (N, 2): the two leading principal components of the rows."""
    x = x.double() - x.double().mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return (x @ vh[:2].T).float()


def _projection_panel(ax, embeddings: Mapping[str, Tensor], max_points: int, title: str) -> None:
    parts = {m: e[:max_points].detach().float().cpu() for m, e in embeddings.items()}
    xy = pca_2d(torch.cat(list(parts.values()))).split([len(p) for p in parts.values()])
    import matplotlib

    colors = matplotlib.colormaps["tab10"]
    for i, (m, points) in enumerate(zip(parts, xy, strict=True)):
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, color=colors(i % 10), label=m, gid=f"points-{m}")
        centre = points.mean(0)
        ax.scatter(
            [centre[0]], [centre[1]], s=160, marker="X", color=colors(i % 10), edgecolor="black", gid=f"centroid-{m}"
        )
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_aspect("equal", adjustable="datalim")


def gap_projection_figure(
    embeddings: Mapping[str, Tensor], centered: Mapping[str, Tensor] | None = None, max_points: int = 500
) -> Figure:
    """2-D PCA of the embeddings coloured by modality (centroids as large crosses).

    Args:
        embeddings: modality -> (N_m, D) unit-norm embeddings; the first ``max_points`` of each are drawn.
        centered: the same after a mitigation; when given, a second panel shows them (own PCA).
        max_points: points drawn per modality.

    Returns:
        The figure (matplotlib object API with an Agg canvas, no pyplot state): one axes per panel,
        each with a "points-<m>" and a "centroid-<m>" collection per modality.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = {"raw embeddings": embeddings} if centered is None else {"raw": embeddings, "centred": centered}
    fig = Figure(figsize=(5.5 * len(panels), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, embs) in zip(axes, panels.items(), strict=True):
        _projection_panel(ax, embs, max_points, f"modality gap: {title} (PCA)")
    axes[0].legend(fontsize="small", markerscale=2)
    return fig
