"""Fit and score apart: what evaluation fits (centring means, bridges) never sees a scored sample.

Evaluation fits its mitigations on a reference split and scores on another. When the two share
samples (a manifest without ``data.test`` scores its validation set; spoken digits has no test
split), the shared samples are divided *by sample id*, never by split name:

- every shared id gets a rank from ``blake2b("bindspace-fit-score:" + id)`` (salted, so the halves
  are independent of the ``id_fraction`` hash that chose the validation set in the first place);
- the lower half of the ranks (``n // 2`` ids) may only be fitted on, the upper half
  (``n - n // 2`` ids) may only be scored;
- the fit rows are the reference rows whose id is not scored, the score rows the scored split's
  rows whose id is not fitted; when both splits are one set this is a plain half / half split.

The split depends on the ids alone (not the seed, the row order or the machine), so every run and
every checkpoint scores the same samples. :func:`check_disjoint` proves the result by id.

Ids are compared as the data gives them: a manifest's ``id`` column, a synthetic scene id. A manifest
without ids numbers its rows ("0", "1", ...), so two such manifests used as val and test look like
the same samples and are split (or refused) although they differ: give held-out manifests ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SALT = "bindspace-fit-score:"
RULE = (
    "ids shared by the fit and scored splits are ranked by blake2b('bindspace-fit-score:' + id); "
    "the lower half is fitted on only, the upper half scored only"
)


def fit_rank(sample_id: str) -> tuple[int, str]:
    """A stable sort key from the id alone (the id itself breaks the, astronomically rare, hash ties)."""
    digest = hashlib.blake2b((SALT + sample_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big"), sample_id


def check_disjoint(fit_ids: Sequence[str], score_ids: Sequence[str]) -> None:
    """Raise ValueError when any id is both fitted on and scored.

    Args:
        fit_ids: ids of the samples the mitigations are fitted on.
        score_ids: ids of the samples scored.
    """
    shared = set(fit_ids) & set(score_ids)
    if shared:
        raise ValueError(
            f"{len(shared)} sample id(s) are both fitted on and scored, e.g. {sorted(shared)[:3]}; "
            "evaluation must fit and score on disjoint samples"
        )


@dataclass
class FitScoreSplit:
    """Rows of the reference split to fit on and rows of the scored split to score.

    Attributes:
        fit_rows: indices into the reference split.
        score_rows: indices into the scored split.
        info: what was done, for ``metrics.json["fit_split"]``.
        fit_ids, score_ids: the sample ids of those rows (what a later fit, e.g. a linear probe, checks again).
    """

    fit_rows: list[int]
    score_rows: list[int]
    info: dict[str, Any]
    fit_ids: list[str] = field(default_factory=list)
    score_ids: list[str] = field(default_factory=list)


def split_fit_and_score(
    fit_ids: Sequence[str], score_ids: Sequence[str], fit_name: str = "val", score_name: str = "test"
) -> FitScoreSplit:
    """Choose fit and score rows so that no sample id is on both sides.

    Args:
        fit_ids: per row of the reference split, its sample id (repeats allowed: rows of one id stay together).
        score_ids: per row of the scored split, its sample id.
        fit_name, score_name: split names, recorded in ``info``.

    Returns:
        All rows of both splits when they share no id (``info["method"] == "separate_splits"``);
        otherwise the shared ids halved as described in the module docstring (``"id_hash"``).

    Raises:
        ValueError: a split is empty, or a side is left with no rows after the split.
    """
    if not fit_ids or not score_ids:
        raise ValueError(f"need samples on both sides, got {len(fit_ids)} to fit and {len(score_ids)} to score")
    shared = sorted(set(fit_ids) & set(score_ids), key=fit_rank)
    fit_only, score_only = set(shared[: len(shared) // 2]), set(shared[len(shared) // 2 :])
    fit_rows = [i for i, s in enumerate(fit_ids) if s not in score_only]
    score_rows = [i for i, s in enumerate(score_ids) if s not in fit_only]
    if not fit_rows or not score_rows:
        raise ValueError(
            f"{fit_name} and {score_name} share {len(shared)} sample id(s); too few to fit on one part and score "
            f"the other ({len(fit_rows)} to fit, {len(score_rows)} to score)"
        )
    kept_fit, kept_score = [fit_ids[i] for i in fit_rows], [score_ids[i] for i in score_rows]
    check_disjoint(kept_fit, kept_score)
    info = {
        "method": "id_hash" if shared else "separate_splits",
        "fit_from": fit_name,
        "scored_from": score_name,
        "shared_ids": len(shared),  # before the split
        "fit_ids": len(set(kept_fit)),
        "score_ids": len(set(kept_score)),
        "overlap": len(set(kept_fit) & set(kept_score)),  # 0, proven above
    }
    if shared:
        info["rule"] = RULE
    return FitScoreSplit(fit_rows, score_rows, info, kept_fit, kept_score)
