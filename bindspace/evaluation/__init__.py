"""Evaluation: tie-aware retrieval and zero-shot metrics with intervals and chance, the modality gap, figures."""

from bindspace.evaluation.retrieval import retrieval_metrics
from bindspace.evaluation.zero_shot import zero_shot_from_classes

__all__ = ["retrieval_metrics", "zero_shot_from_classes"]
