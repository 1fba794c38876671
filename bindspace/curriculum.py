"""Curricula as data: an ordered list of stages, each adding edges, freezing encoders, setting the lr.

Plain Python, testable without Lightning; :class:`bindspace.training.callbacks.CurriculumCallback`
drives it. A stage says

- which edges it adds (``edges: [[image, audio]]``, ``modalities: [audio]`` for every graph edge
  that joins ``audio`` to an already active modality, or ``all``);
- how long it lasts: ``steps``, ``epochs`` (passes over its new edges' data), or ``plateau`` (until a
  validation metric stops improving for ``patience`` validations, capped at ``max_steps``); the last
  stage may omit a length and run to ``trainer.max_steps``;
- which encoders are frozen during it (modality names, ``anchor`` for the anchors, ``aligned`` for
  every modality introduced by an earlier stage) and which parts of them (``freeze_parts``: by default the
  whole encoder, ``[preprocessor, trunk, head]``, as ImageBind froze all of CLIP; ``[preprocessor, trunk]``
  keeps the projection head trainable). An edge whose two encoders are both wholly frozen trains nothing,
  so its temperature is frozen too and the edge is left out of that stage's loss;
- ``unlocked_layers``: per modality, how many last trunk blocks train in this stage (an integer, or
  ``all``), in place of that modality's ``trunk.unlocked_layers`` (a later stage unlocking more);
- an optional learning rate and warmup of its own;
- ``replay``: the loss weight of edges from earlier stages (rehearsal against forgetting; 0 drops them).

The learning-rate schedule is per stage by default (``schedule: per_stage``): each stage warms up and
decays over its own length, so a modality that joins late trains under the same schedule as one that
joins first. ``schedule: global`` keeps one warmup + cosine over the whole run (stages only re-warm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bindspace.errors import ConfigError
from bindspace.graph import Edge, edge_key
from bindspace.modalities import ENCODER_PARTS

SCHEDULES = ("per_stage", "global")


@dataclass
class Plateau:
    metric: str = "val/mean_R@1"
    patience: int = 2  # validations without improvement before the stage ends
    min_delta: float = 0.0
    mode: str = "max"
    max_steps: int | None = None  # cap on the stage's length


CONTINUAL_METHODS = ("none", "distill")


@dataclass
class Continual:
    """``curriculum.continual``: a countermeasure against forgetting, on top of ``replay``.

    ``distill``: at each stage start the encoders that earlier stages trained, and this one keeps
    training, are copied and frozen; the stage's loss adds ``weight`` x the mean cosine distance of
    their embeddings from the copy's (:mod:`bindspace.training.continual`).
    """

    method: str = "none"
    weight: float = 1.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Continual:
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"method", "weight"}
        if unknown:
            raise ConfigError(f"curriculum.continual: unknown key(s) {sorted(unknown)}; keys are method, weight")
        out = cls(**cfg)
        if out.method not in CONTINUAL_METHODS:
            raise ConfigError(
                f"curriculum.continual.method must be one of {list(CONTINUAL_METHODS)}, got {out.method!r}"
            )
        if not isinstance(out.weight, int | float) or isinstance(out.weight, bool) or out.weight < 0:
            raise ConfigError(f"curriculum.continual.weight must be a number >= 0, got {out.weight!r}")
        return out


@dataclass
class Stage:
    name: str
    new_edges: list[Edge]
    steps: int | None = None
    epochs: float | None = None
    plateau: Plateau | None = None
    freeze: list[str] = field(default_factory=list)
    freeze_parts: tuple[str, ...] = ENCODER_PARTS  # what "frozen" covers for the modalities in ``freeze``
    lr: float | None = None
    warmup_steps: int | None = None
    replay: float = 1.0
    unlocked_layers: dict[str, int | str] = field(default_factory=dict)  # modality -> N or "all", this stage


def _unlocked_layers(entry: Mapping[str, Any], where: str) -> dict[str, int | str]:
    """A stage's ``unlocked_layers``: modality -> a block count >= 0 or ``all`` (checked against depths at build)."""
    value = entry.get("unlocked_layers") or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}.unlocked_layers must map modalities to a block count or all, got {value!r}")
    for m, n in value.items():
        if n != "all" and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise ConfigError(f"{where}.unlocked_layers.{m} must be an integer >= 0 or all, got {n!r}")
    return dict(value)


def _edges_for(entry: Mapping[str, Any], graph: Sequence[Edge], active: set[str], where: str) -> list[Edge]:
    """Resolve a stage's ``edges`` / ``modalities`` / ``all`` against the alignment graph."""
    if entry.get("edges") == "all":
        return list(graph)
    if entry.get("edges") is not None:
        out = []
        for e in entry["edges"]:
            match = [g for g in graph if set(g) == set(e)]
            if not match:
                raise ConfigError(
                    f"{where}.edges: {list(e)} is not an edge of the alignment graph {[list(g) for g in graph]}"
                )
            out.append(match[0])
        return out
    mods = entry.get("modalities")
    if not mods:
        raise ConfigError(f"{where}: a stage needs `edges` (a list or all) or `modalities`")
    known = {m for e in graph for m in e}
    for m in mods:
        if m not in known:
            raise ConfigError(f"{where}.modalities: {m!r} is in no edge of the alignment graph")
    now = active | set(mods)
    return [e for e in graph if (e[0] in mods or e[1] in mods) and e[0] in now and e[1] in now]


def _length(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    given = [k for k in ("steps", "epochs", "plateau") if entry.get(k) is not None]
    if len(given) > 1:
        raise ConfigError(f"{where}: give one of steps, epochs or plateau, not {given}")
    out: dict[str, Any] = {}
    if entry.get("steps") is not None:
        if int(entry["steps"]) < 1:
            raise ConfigError(f"{where}.steps must be >= 1, got {entry['steps']}")
        out["steps"] = int(entry["steps"])
    if entry.get("epochs") is not None:
        out["epochs"] = float(entry["epochs"])
    if entry.get("plateau") is not None:
        p = dict(entry["plateau"])
        unknown = set(p) - set(Plateau.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{where}.plateau: unknown key(s) {sorted(unknown)}")
        out["plateau"] = Plateau(**p)
    return out


def default_start(graph: Sequence[Edge], anchors: Sequence[str]) -> list[str]:
    """The first stage's modalities when ``start`` is not given: the anchors and, unless they already share
    an edge, the first modality (in graph order) paired with an anchor; with no anchors, the first edge."""
    if not anchors:
        return list(graph[0])
    start = list(anchors)
    if any(e[0] in start and e[1] in start for e in graph):
        return start
    partner = next(m for e in graph for m in e if m not in start and (e[0] in start or e[1] in start))
    return [*start, partner]


def expand_order(cfg: Mapping[str, Any], graph: Sequence[Edge], anchors: Sequence[str]) -> list[dict[str, Any]]:
    """``start`` + ``order`` (one modality or a group per stage) -> explicit stage entries.

    ``start: null`` is :func:`default_start`; ``order: null`` adds the remaining modalities one per stage,
    in graph order (``order: reverse``: in reverse graph order). So ``curriculum=progressive`` fits any graph:
    image-text, +audio, +depth, +thermal, +imu for ImageBind's star, text-image, +audio for a text-anchored
    image-audio graph.
    """
    known = [m for m in dict.fromkeys(m for e in graph for m in e)]
    start = list(cfg.get("start") or default_start(graph, anchors))
    given = cfg.get("order")
    rest = [[m] for m in known if m not in start]
    order = rest if given is None else rest[::-1] if given == "reverse" else given
    order = [[g] if isinstance(g, str) else list(g) for g in order]
    listed = start + [m for g in order for m in g]
    for m in listed:
        if m not in known:
            raise ConfigError(f"curriculum.order: {m!r} is not a modality of the alignment graph {known}")
    missing = [m for m in known if m not in listed]
    if missing:
        raise ConfigError(f"curriculum.order leaves out {missing}; list every modality of the graph")
    template = dict(cfg.get("stage") or {})
    stages = [{**template, "name": "-".join(start), "modalities": start}]
    stages += [{**template, "name": "+" + "+".join(g), "modalities": g} for g in order]
    return stages


def _freeze_parts(entry: Mapping[str, Any], where: str) -> tuple[str, ...]:
    parts = entry.get("freeze_parts")
    if parts is None:
        return ENCODER_PARTS
    if isinstance(parts, str) or not all(isinstance(p, str) for p in parts):
        raise ConfigError(f"{where}.freeze_parts must be a list drawn from {list(ENCODER_PARTS)}, got {parts!r}")
    unknown = [p for p in parts if p not in ENCODER_PARTS]
    if unknown or not parts:
        raise ConfigError(f"{where}.freeze_parts: {parts!r}; choose from {list(ENCODER_PARTS)}")
    return tuple(p for p in ENCODER_PARTS if p in parts)


class Curriculum:
    """The resolved stages and where training is in them.

    Args:
        stages: the stages in order.
        anchors: the anchor modalities (what ``freeze: [anchor]`` means).
        schedule: ``per_stage`` (each stage its own warmup and decay) or ``global`` (one over the run).
    """

    def __init__(
        self,
        stages: list[Stage],
        anchors: Sequence[str],
        schedule: str = "per_stage",
        continual: Continual | None = None,
    ) -> None:
        if not stages:
            raise ConfigError("curriculum: at least one stage is required")
        if schedule not in SCHEDULES:
            raise ConfigError(f"curriculum.schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
        self.stages, self.anchors, self.schedule = stages, list(anchors), schedule
        self.continual = continual or Continual()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], graph: Sequence[Edge], anchors: Sequence[str]) -> Curriculum:
        progressive = "order" in cfg or "start" in cfg  # the progressive form, even with both left null
        if progressive and cfg.get("stages"):
            raise ConfigError("curriculum: give either `stages` or `start`/`order`, not both")
        entries = expand_order(cfg, graph, anchors) if progressive else list(cfg.get("stages") or [])
        stages, active = [], set()
        seen: set[Edge] = set()
        for i, entry in enumerate(entries):
            where = f"curriculum.stages[{i}]"
            new = [e for e in _edges_for(entry, graph, active, where) if e not in seen]
            if not new:
                raise ConfigError(f"{where} ({entry.get('name', i)}) adds no new edge")
            seen.update(new)
            active.update(m for e in new for m in e)
            stages.append(
                Stage(
                    name=str(entry.get("name") or f"stage{i}"),
                    new_edges=new,
                    freeze=list(entry.get("freeze") or []),
                    freeze_parts=_freeze_parts(entry, where),
                    lr=entry.get("lr"),
                    warmup_steps=entry.get("warmup_steps"),
                    replay=float(entry.get("replay", 1.0)),
                    unlocked_layers=_unlocked_layers(entry, where),
                    **_length(entry, where),
                )
            )
        for i, s in enumerate(stages[:-1]):
            if s.steps is None and s.epochs is None and s.plateau is None:
                raise ConfigError(f"curriculum.stages[{i}] ({s.name}): only the last stage may omit its length")
        untrained = [e for e in graph if e not in seen]
        if untrained:
            raise ConfigError(f"curriculum never trains graph edges {[edge_key(e) for e in untrained]}")
        continual = Continual.from_config(cfg.get("continual"))
        curriculum = cls(stages, anchors, str(cfg.get("schedule", "per_stage")), continual)
        curriculum._check_own_edges_train()
        return curriculum

    def _check_own_edges_train(self) -> None:
        """A stage must be able to train each edge it adds: not both of its encoders wholly frozen."""
        for i, stage in enumerate(self.stages):
            whole = self.wholly_frozen(i)
            for e in stage.new_edges:
                if e[0] in whole and e[1] in whole:
                    raise ConfigError(
                        f"curriculum.stages[{i}] ({stage.name}).freeze={stage.freeze} freezes both encoders of its "
                        f"own edge {edge_key(e)} (freeze_parts={list(stage.freeze_parts)}): nothing of it would train"
                    )

    # ---- what a stage trains -------------------------------------------------------------------
    def edge_weights(self, index: int) -> dict[str, float]:
        """Edge key -> loss weight in stage ``index``: its own edges 1, earlier ones ``replay``.

        Earlier edges whose two encoders are both wholly frozen in this stage are left out: they have
        nothing left to train (their temperature is frozen with them).
        """
        stage, whole = self.stages[index], self.wholly_frozen(index)
        weights = {
            edge_key(e): stage.replay
            for s in self.stages[:index]
            for e in s.new_edges
            if not (e[0] in whole and e[1] in whole)
        }
        weights.update({edge_key(e): 1.0 for e in stage.new_edges})
        return {k: w for k, w in weights.items() if w > 0}

    def edges(self, index: int) -> list[Edge]:
        keys = self.edge_weights(index)
        return [e for s in self.stages[: index + 1] for e in s.new_edges if edge_key(e) in keys]

    def frozen(self, index: int) -> set[str]:
        """Modalities frozen in stage ``index`` (which of their parts: :meth:`frozen_parts`)."""
        out: set[str] = set()
        for name in self.stages[index].freeze:
            if name == "anchor":
                out.update(self.anchors)
            elif name == "aligned":
                out.update(m for s in self.stages[:index] for e in s.new_edges for m in e)
            else:
                out.add(name)
        return out

    def frozen_parts(self, index: int) -> dict[str, tuple[str, ...]]:
        """Modality -> the encoder parts frozen in stage ``index``."""
        parts = self.stages[index].freeze_parts
        return {m: parts for m in sorted(self.frozen(index))}

    def wholly_frozen(self, index: int) -> set[str]:
        """Modalities none of whose encoder parts train in stage ``index``."""
        return {m for m, parts in self.frozen_parts(index).items() if set(parts) == set(ENCODER_PARTS)}

    def distilled(self, index: int) -> list[str]:
        """Modalities held near their previous-stage copy in stage ``index`` (``continual.method=distill``).

        Those that earlier stages trained and that still train now (a wholly frozen one cannot drift).
        """
        if self.continual.method != "distill" or index == 0:
            return []
        earlier = {m for s in self.stages[:index] for e in s.new_edges for m in e}
        return sorted(earlier - self.wholly_frozen(index))

    def stage_steps(self, index: int, steps_per_epoch: int) -> int | None:
        """Fixed length of a stage in steps (plateau stages: their cap), None if unbounded."""
        s = self.stages[index]
        if s.steps is not None:
            return s.steps
        if s.epochs is not None:
            return max(1, math.ceil(s.epochs * steps_per_epoch))
        if s.plateau is not None:
            return s.plateau.max_steps
        return None

    def planned_starts(self, max_steps: int, steps_per_epoch: int) -> list[int | None]:
        """The step each stage starts at if every stage runs its full length (None: not known in advance)."""
        starts: list[int | None] = [0]
        for i in range(len(self.stages) - 1):
            length = self.stage_steps(i, steps_per_epoch)
            starts.append(None if starts[-1] is None or length is None else starts[-1] + length)
        return starts

    def fixed_starts(self, steps_per_epoch: int) -> list[int | None]:
        """The step each stage starts at where the stages before it have fixed lengths (steps or epochs);
        None from the stage after a plateau stage on, which starts when a metric stops improving."""
        starts: list[int | None] = [0]
        for i, stage in enumerate(self.stages[:-1]):
            length = None if stage.plateau is not None else self.stage_steps(i, steps_per_epoch)
            starts.append(None if starts[-1] is None or length is None else starts[-1] + length)
        return starts

    def unreached(self, max_steps: int, steps_per_epoch: int) -> list[str]:
        """Names of the stages that start at or after ``max_steps`` on their planned lengths."""
        starts = self.planned_starts(max_steps, steps_per_epoch)
        return [s.name for s, start in zip(self.stages, starts) if start is not None and start >= max_steps]

    def schedule_length(self, index: int, start: int | None, max_steps: int, steps_per_epoch: int) -> int | None:
        """Steps the per-stage schedule of stage ``index`` decays over.

        A stage's planned length (a plateau stage: its cap); the last stage, and a plateau stage without
        a cap, run to ``max_steps``. A stage cut short by ``max_steps`` keeps its planned schedule.
        """
        length = self.stage_steps(index, steps_per_epoch)
        if length is None or index == len(self.stages) - 1:
            return None if start is None else max(1, max_steps - start)
        return length

    def check_schedule(self, max_steps: int, default_warmup: int, steps_per_epoch: int | None = None) -> None:
        """With ``schedule: per_stage`` no stage that will run may be shorter than its warmup.

        Stages measured in epochs are checked only when ``steps_per_epoch`` is known. A single-stage
        curriculum is one schedule over the run whatever ``schedule`` says, and is not checked (a short
        smoke run may stop inside the warmup).
        """
        if self.schedule != "per_stage" or len(self.stages) == 1:
            return
        starts = self.planned_starts(max_steps, steps_per_epoch or 1)
        for i, stage in enumerate(self.stages):
            if stage.epochs is not None and steps_per_epoch is None:
                continue
            start = starts[i]
            if start is not None and start >= max_steps:
                continue  # never reached: warned about, not an error
            length = self.schedule_length(i, start, max_steps, steps_per_epoch or 1)
            warmup = stage.warmup_steps if stage.warmup_steps is not None else default_warmup
            key = "warmup_steps" if stage.warmup_steps is not None else "optim.warmup_steps"
            if length is not None and length < warmup:
                raise ConfigError(
                    f"curriculum.stages[{i}] ({stage.name}): {length} steps is shorter than its warmup "
                    f"({key}={warmup}) under curriculum.schedule=per_stage; shorten the warmup or lengthen the stage"
                )


@dataclass
class CurriculumState:
    """Where training is: saved in checkpoints so a resumed run continues in the same stage."""

    index: int = 0
    start_step: int = 0
    best: float | None = None
    bad_validations: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished stage
    # Optimisation steps each edge took part in: an edge is "trained" only if it has at least one.
    edge_steps: dict[str, int] = field(default_factory=dict)
    validation: list[dict[str, Any]] = field(default_factory=list)  # per-pair R@1 at every validation

    def advance(self, step: int) -> None:
        self.index += 1
        self.start_step = step
        self.best, self.bad_validations = None, 0

    def observe(self, value: float, plateau: Plateau) -> None:
        """Record one validation of the plateau metric."""
        better = self.best is None or (
            value > self.best + plateau.min_delta if plateau.mode == "max" else value < self.best - plateau.min_delta
        )
        if better:
            self.best, self.bad_validations = value, 0
        else:
            self.bad_validations += 1

    def stage_done(self, curriculum: Curriculum, step: int, steps_per_epoch: int) -> bool:
        if self.index >= len(curriculum.stages) - 1:
            return False  # the last stage runs until trainer.max_steps
        limit = curriculum.stage_steps(self.index, steps_per_epoch)
        if limit is not None and step - self.start_step >= limit:
            return True
        plateau = curriculum.stages[self.index].plateau
        return plateau is not None and self.bad_validations >= plateau.patience
