"""Zero-shot classification of any modality against text prompts (CLIP's recipe, as ImageBind uses it).

Each class gets a text embedding: every template filled with the class name, embedded, and the
normalised mean of those (CLIP's prompt ensembling). A sample's predicted classes are the nearest
class embeddings by cosine. Prompt sets live in ``configs/prompts/<name>.yaml``::

    templates: ["a photo of a {}.", "the sound of a {}."]
    classes: [dog, cat]        # optional: names by label index; or a mapping that renames the
                               # data's own label names ({"7": seven}); null: the data's names

Works with a :class:`bindspace.BindSpace`, a bare :class:`~bindspace.models.model.BindSpaceModel`,
or any function from a list of strings to ``(N, D)`` embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bindspace.errors import ConfigError
from bindspace.evaluation.stats import DEFAULT_BOOTSTRAP, Bootstrap, percent_intervals, uninformative
from bindspace.evaluation.ties import Ranks, exact_scores
from bindspace.modalities import get_modality

log = logging.getLogger(__name__)

TextEmbedFn = Callable[[list[str]], Tensor]


@dataclass
class Prompts:
    """Templates with one ``{}`` each for the class name, and optionally class names or renamings."""

    templates: list[str]
    classes: list[str] | dict[str, str] | None = None

    def class_names(self, data_names: Sequence[str] | None = None) -> list[str]:
        """The names that go into the templates, by label index.

        Args:
            data_names: the data source's class names by label index, if it has any.

        Raises:
            ConfigError: no names from either side, or a list whose length differs from the data's.
        """
        if isinstance(self.classes, Mapping):
            if not data_names:
                raise ConfigError("prompts.classes renames the data's class names, but the data names none")
            return [self.classes.get(n, n) for n in data_names]
        if self.classes is not None:
            if data_names and len(data_names) != len(self.classes):
                raise ConfigError(
                    f"prompts.classes lists {len(self.classes)} classes but the data has {len(data_names)}"
                )
            return list(self.classes)
        if not data_names:
            raise ConfigError("zero-shot needs class names: the data source names none and prompts.classes is null")
        return list(data_names)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "prompts") -> Prompts:
        unknown = sorted(set(data) - {"templates", "classes"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected templates and optionally classes")
        templates = list(data.get("templates") or [])
        if not templates:
            raise ConfigError(f"{where}.templates: need at least one template, got {data.get('templates')!r}")
        for t in templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise ConfigError(
                    f"{where}.templates: each template needs exactly one '{{}}' for the class name, got {t!r}"
                )
        classes = data.get("classes")
        if isinstance(classes, Mapping):
            classes = {str(k): v for k, v in classes.items()}  # YAML reads a bare 7 as an int
            values = list(classes.values())
        else:
            values = classes = None if classes is None else list(classes)
        if values is not None and (not values or not all(isinstance(c, str) for c in values)):
            raise ConfigError(
                f"{where}.classes: must be a non-empty list or mapping of strings, or null; got {classes!r}"
            )
        return cls(templates, classes)


def load_prompts(source: str | Path | Mapping[str, Any]) -> Prompts:
    """A prompt set: a mapping, a YAML file, or the name of a shipped set (``"synthetic"``).

    Raises:
        ConfigError: unknown name, unreadable file or malformed content, naming which.
    """
    if isinstance(source, Mapping):
        return Prompts.from_dict(source)
    import yaml  # PyYAML ships with omegaconf; imported here so the module stays light

    path = Path(source)
    if path.suffix not in (".yaml", ".yml"):
        shipped = resources.files("bindspace.configs").joinpath("prompts", f"{source}.yaml")
        if not shipped.is_file():
            names = sorted(
                p.name.removesuffix(".yaml") for p in resources.files("bindspace.configs").joinpath("prompts").iterdir()
            )
            raise ConfigError(
                f"prompts: no shipped prompt set {str(source)!r}; shipped: {names} (or give a .yaml path)"
            )
        text = shipped.read_text()
    elif path.is_file():
        text = path.read_text()
    else:
        raise ConfigError(f"prompts: no file at {path}")
    data = yaml.safe_load(text)
    if not isinstance(data, Mapping):
        raise ConfigError(f"prompts {source}: expected a mapping with 'templates', got {type(data).__name__}")
    return Prompts.from_dict(data, where=f"prompts {source}")


def text_embed_fn(model_or_embed_fn: Any) -> TextEmbedFn:
    """A BindSpace, a BindSpaceModel or a callable -> ``list[str] -> (N, D)`` unit-norm embeddings."""
    if hasattr(model_or_embed_fn, "embed"):  # bindspace.BindSpace
        return lambda texts: model_or_embed_fn.embed("text", texts)
    if hasattr(model_or_embed_fn, "encode") and hasattr(model_or_embed_fn, "configs"):  # BindSpaceModel
        model = model_or_embed_fn
        if "text" not in model.configs:
            raise ValueError(f"zero-shot needs a text encoder; the model has {model.modalities}")
        device = next(model.parameters()).device

        @torch.no_grad()
        def embed(texts: list[str]) -> Tensor:
            x = get_modality("text").transform_batch(texts, model.configs["text"].input)
            was_training = model.training
            model.eval()  # no dropout in the prompts' embeddings
            try:
                return model.encode("text", {k: v.to(device) for k, v in x.items()}).float().cpu()
            finally:
                model.train(was_training)

        return embed
    if callable(model_or_embed_fn):
        return model_or_embed_fn
    raise TypeError(f"expected a BindSpace, a BindSpaceModel or a callable, got {type(model_or_embed_fn).__name__}")


def class_embeddings(model_or_embed_fn: Any, class_names: Sequence[str], templates: Sequence[str]) -> Tensor:
    """``(C, D)`` class embeddings: the normalised mean over templates of the normalised prompt embeddings."""
    if not class_names or not templates:
        raise ValueError(f"need class names and templates, got {len(class_names)} and {len(templates)}")
    embed = text_embed_fn(model_or_embed_fn)
    prompts = [t.format(c) for c in class_names for t in templates]  # class-major: (C * T,)
    emb = F.normalize(embed(prompts).float(), dim=-1)
    if emb.shape[0] != len(prompts):
        raise ValueError(f"text embedder returned {emb.shape[0]} rows for {len(prompts)} prompts")
    return F.normalize(emb.view(len(class_names), len(templates), -1).mean(1), dim=-1)


def zero_shot(
    model_or_embed_fn: Any,
    embeddings: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    templates: Sequence[str],
    ks: Sequence[int] = (1, 5),
    bootstrap: Bootstrap | None = DEFAULT_BOOTSTRAP,
    groups: Tensor | None = None,
) -> dict[str, float | list[float]]:
    """Top-k zero-shot accuracy (%) of samples of any modality against text prompts, tie-aware.

    Args:
        model_or_embed_fn: embeds the prompts (see :func:`text_embed_fn`).
        embeddings: (N, D) unit-norm embeddings of the samples.
        labels: (N,) integer labels indexing ``class_names``.
        class_names: the classes' names as they go into the templates.
        templates: prompt templates with one ``{}`` each.
        ks: cut-offs; k above the number of classes counts every class (100%).
        bootstrap: 95% intervals over samples; None leaves them out.
        groups: optional (N,) group labels of the samples: rows sharing one (copies of one source) are
            resampled together (:meth:`~bindspace.evaluation.stats.Bootstrap.intervals`).

    Returns:
        {"top1": %, "top5": %, "top1_ci": [low, high] %, "top5_ci": ...} (per k).
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"embeddings must be (N, D) and labels (N,), got {tuple(embeddings.shape)}, {tuple(labels.shape)}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"labels must index the {len(class_names)} class names, got range [{labels.min()}, {labels.max()}]"
        )
    classes = class_embeddings(model_or_embed_fn, class_names, templates)
    return zero_shot_from_classes(embeddings, labels, classes, ks, bootstrap, groups)


def _scores_and_labels(embeddings: Tensor, labels: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    if embeddings.ndim != 2 or classes.ndim != 2 or len(embeddings) == 0 or embeddings.shape[1] != classes.shape[1]:
        raise ValueError(
            f"need (N>0, D) embeddings matching (C, D) classes, got {tuple(embeddings.shape)}, {tuple(classes.shape)}"
        )
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must be ({len(embeddings)},), one per embedding, got {tuple(labels.shape)}")
    labels = labels.long().cpu()
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"labels must index the {len(classes)} classes, got range [{labels.min()}, {labels.max()}]")
    if not (torch.isfinite(embeddings).all() and torch.isfinite(classes).all()):
        raise ValueError("embeddings or classes contain NaN or inf")
    return exact_scores(embeddings.detach().float().cpu(), classes.detach().float().cpu()), labels  # (N, C)


def zero_shot_per_query(
    embeddings: Tensor, labels: Tensor, classes: Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, Tensor]:
    """Each sample's expected top-k correctness over random orders of classes tied with its true class.

    Args:
        embeddings: (N, D) unit-norm sample embeddings.
        labels: (N,) true class indices into ``classes``.
        classes: (C, D) class embeddings (:func:`class_embeddings`).
        ks: cut-offs; k at or above C is always correct.

    Returns:
        {"top<k>": (N,) float64 in [0, 1]}: with h classes scoring strictly above the true one and
        t classes (itself included) tied with it, min(1, max(0, (k - h) / t)).
    """
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be non-empty positive ints, got {ks!r}")
    scores, labels = _scores_and_labels(embeddings, labels, classes)
    true = scores.gather(1, labels[:, None])  # (N, 1)
    ranks = Ranks((scores > true).sum(1), (scores == true).sum(1), torch.ones(len(labels), dtype=torch.long))
    return {f"top{k}": ranks.hit_probability(k) for k in ks}


def zero_shot_chance(num_classes: int, ks: Sequence[int] = (1, 5)) -> dict[str, float | int]:
    """A random guess over ``num_classes`` classes: {"num_classes": C, "top<k>": 100 min(k, C) / C}."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return {"num_classes": num_classes, **{f"top{k}": 100.0 * min(k, num_classes) / num_classes for k in ks}}


def zero_shot_from_classes(
    embeddings: Tensor,
    labels: Tensor,
    classes: Tensor,
    ks: Sequence[int] = (1, 5),
    bootstrap: Bootstrap | None = DEFAULT_BOOTSTRAP,
    groups: Tensor | None = None,
) -> dict[str, float | list[float]]:
    """As :func:`zero_shot`, with the ``(C, D)`` class embeddings already computed (reuse across modalities).

    Ties are scored by their expected value (:func:`zero_shot_per_query`), so a collapsed model scores
    exactly chance, 100 k / C.

    Returns:
        {"top1": %, "top5": %, "top1_ci": [low, high] %, "top5_ci": ...}; the intervals (seeded
        percentile bootstrap over samples, over ``groups`` when samples share one) are left out with
        bootstrap=None.
    """
    return _accuracies(zero_shot_per_query(embeddings, labels, classes, ks), bootstrap, groups)


def _accuracies(
    per_sample: dict[str, Tensor], bootstrap: Bootstrap | None, groups: Tensor | None = None
) -> dict[str, float | list[float]]:
    n = len(next(iter(per_sample.values())))
    # A float64 sum of 0/1 values is an exact integer: 45.4, not 45.39999961853027, without ties.
    out: dict[str, float | list[float]] = {name: 100.0 * float(v.sum()) / n for name, v in per_sample.items()}
    if bootstrap is not None:
        bounds = percent_intervals(bootstrap, {name: v.numpy() for name, v in per_sample.items()}, groups)
        out.update({f"{name}_ci": interval for name, interval in bounds.items()})
    return out


@dataclass
class ZeroShotResult:
    """:func:`evaluate_zero_shot`'s output.

    Attributes:
        table: modality -> :func:`zero_shot_from_classes` (with intervals).
        per_query: "zero_shot/<m>/top<k>" -> (N,) float32 expected correctness (``per_query.npz``).
        chance: :func:`zero_shot_chance` of the number of classes.
    """

    table: dict[str, dict[str, float | list[float]]]
    per_query: dict[str, np.ndarray]
    chance: dict[str, float | int]


def evaluate_zero_shot(
    embeddings: Mapping[str, Tensor],
    labels: Tensor,
    classes: Tensor,
    ks: Sequence[int] = (1, 5),
    bootstrap: Bootstrap | None = DEFAULT_BOOTSTRAP,
    groups: Tensor | None = None,
) -> ZeroShotResult:
    """Zero-shot of several modalities against one set of class embeddings, with per-sample values.

    Args:
        embeddings: modality -> (N, D) unit-norm embeddings of the same labelled samples.
        labels: (N,) class indices into ``classes``.
        classes: (C, D) class embeddings.
        ks: cut-offs.
        bootstrap: intervals over samples (the same resampled rows for every modality), or None.
        groups: optional (N,) group labels: samples sharing one are resampled together.

    Returns:
        A :class:`ZeroShotResult`. Logs a warning for a cut-off whose chance is above 10% (too few
        classes for it to say much).
    """
    table, per_query = {}, {}
    for m, emb in embeddings.items():
        if "/" in m:
            raise ValueError(f"modality name {m!r} must not contain '/'")
        per_sample = zero_shot_per_query(emb, labels, classes, ks)
        table[m] = _accuracies(per_sample, bootstrap, groups)
        per_query.update({f"zero_shot/{m}/{name}": v.float().numpy() for name, v in per_sample.items()})
    chance = zero_shot_chance(len(classes), ks)
    small = uninformative({k: v for k, v in chance.items() if k != "num_classes"})
    if small and embeddings:
        log.warning(
            "zero-shot over %d classes: %s already score above 10%% by chance (%s)",
            len(classes), ", ".join(small), ", ".join(f"{k} {chance[k]:.1f}%" for k in small),
        )  # fmt: skip
    return ZeroShotResult(table, per_query, chance)
