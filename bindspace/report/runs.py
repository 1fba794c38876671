"""Reading the job folders of a multirun and grouping them by what varies (everything but the seed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from bindspace.evaluation.suite import metrics_version
from bindspace.utils.config_migration import RENAMED_KEYS, migrate_config

DEFAULT_METRICS = ("R@1", "R@5", "R@10", "mAP")
KINDS = ("trained", "emergent")
_ANCHOR_KEYS = {"anchor", "graph.anchors"}  # override keys shown as the "anchor" column
_ORDER_KEYS = {"curriculum.order"}  # override keys shown as the "order" column
GroupKey = tuple[tuple[str, str], ...]  # ((column, value), ...)
PER_QUERY_FILE = "per_query.npz"  # written by training next to metrics.json; absent in older runs


class ReportError(ValueError):
    """A user error (no such directory, no runs, unknown metric); the CLI prints it as one line."""


@dataclass
class RunRecord:
    """One job of a multirun.

    Attributes:
        path: the job folder.
        overrides: command-line overrides of the job, key -> raw value ("anchor" -> "[image,text]").
        anchor: anchor modalities joined by "+", in graph.modalities order ("image+text").
        order: curriculum order joined by ">" ("imu>audio>depth"), else the curriculum name.
        seed: the job's seed, None if neither config nor overrides say.
        metrics: the parsed metrics.json, None when the job failed.
        failed: no usable metrics.json.
        reason: why the job counts as failed.
        tags: the config's tags.
        config: the job's composed config (``.hydra/config.yaml``), empty when missing.
    """

    path: Path
    overrides: dict[str, str]
    anchor: str
    order: str
    seed: int | None
    metrics: dict[str, Any] | None
    failed: bool
    reason: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    _per_query: dict[str, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def per_query(self) -> dict[str, np.ndarray] | None:
        """The job's ``per_query.npz`` arrays (read once), or None when the job has none (older runs)."""
        if self._per_query is None and not self.failed and (self.path / PER_QUERY_FILE).is_file():
            self._per_query = load_per_query(self.path / PER_QUERY_FILE)
        return self._per_query


class StagePoint(NamedTuple):
    """One curriculum stage of a group: step and metric means over pairs, then over seeds."""

    step: float
    trained: float
    emergent: float


# ---------------------------------------------------------------- reading job folders


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _names(value: Any) -> list[str]:
    """Modality names from a flag mapping {image: true}, a list, or an override string "[a,b]" / "{a:true}"."""
    if isinstance(value, dict):
        return [str(k) for k, on in value.items() if on]
    if isinstance(value, list | tuple):  # a nested list is a group of modalities sharing one stage
        return ["+".join(map(str, v)) if isinstance(v, list | tuple) else str(v) for v in value]
    if not isinstance(value, str):
        return []
    try:  # override values use YAML flow syntax: "[imu,[audio,depth]]"
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, list):
        return _names(parsed)
    names = []
    for item in value.strip().strip("[]{}").split(","):
        name, _, flag = item.partition(":")
        if name.strip() and flag.strip().lower() not in ("false", "0", "null"):
            names.append(name.strip().strip("'\""))
    return names


def _anchor(config: dict, metrics: dict | None, overrides: dict[str, str]) -> str:
    graph = config.get("graph") if isinstance(config.get("graph"), dict) else {}
    names = (
        _names(graph.get("anchors"))
        or _names((metrics or {}).get("anchor"))
        or _names(overrides.get("anchor") or overrides.get("graph.anchors"))
    )
    known = [str(m) for m in graph.get("modalities") or []]
    # A canonical order, so anchor=[text,image] and anchor=[image,text] land in one group.
    names = sorted(set(names), key=lambda m: (known.index(m) if m in known else len(known), m))
    return "+".join(names) or "?"


def _order(config: dict, overrides: dict[str, str]) -> str:
    curriculum = config.get("curriculum") if isinstance(config.get("curriculum"), dict) else {}
    order = _names(curriculum.get("order")) or _names(overrides.get("curriculum.order"))
    return ">".join(order) if order else str(curriculum.get("name") or overrides.get("curriculum") or "")


def _seed(config: dict, overrides: dict[str, str]) -> int | None:
    for raw in (config.get("seed"), overrides.get("seed")):
        try:
            return int(raw)
        except (TypeError, ValueError):
            continue
    return None


def _load_metrics(job: Path) -> tuple[dict | None, str]:
    path = job / "metrics.json"
    if not path.is_file():
        return None, "no metrics.json (the job did not finish)"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"unreadable metrics.json: {err}"
    if not isinstance(metrics, dict) or not any(isinstance(metrics.get(k), dict) for k in ("retrieval", "summary")):
        return None, "metrics.json has neither a retrieval table nor a summary"
    try:
        metrics_version(metrics)  # version 1 (no "format") and 2 read alike; a newer layout is refused
    except ValueError as err:
        return None, f"metrics.json: {err}"
    return metrics, ""


def load_per_query(path: Path) -> dict[str, np.ndarray]:
    """Reads a ``per_query.npz`` and checks its layout: ``ids`` (N,) int and every other array (N,).

    Raises:
        ReportError: unreadable file, no ``ids``, or an array whose shape is not (N,), naming file and key.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: unreadable per-query file: {err}") from err
    ids = arrays.get("ids")
    if ids is None or ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ReportError(f"{path}: key 'ids' must be a 1-D integer array of sample ids")
    if len(np.unique(ids)) != len(ids):
        raise ReportError(f"{path}: key 'ids' holds duplicate sample ids; queries cannot be matched across runs")
    for key, values in arrays.items():
        if values.shape != ids.shape:
            raise ReportError(f"{path}: key {key!r} has shape {values.shape}, expected {ids.shape} like 'ids'")
    return arrays


def _job_dirs(multirun_dir: Path) -> list[Path]:
    if (multirun_dir / "metrics.json").is_file() or (multirun_dir / ".hydra").is_dir():
        return [multirun_dir]  # a single run's folder: a report of one job
    here = multirun_dir.resolve()
    jobs = [
        p
        for p in multirun_dir.iterdir()
        # Not a link to a run of this same folder (the `latest` link bindspace-train keeps beside single
        # runs repeats one of them); a link to a run elsewhere counts (how sweeps are combined in one report).
        if p.is_dir()
        and not (p.is_symlink() and p.resolve().parent == here)
        and (p.name.isdigit() or (p / ".hydra").is_dir() or (p / "metrics.json").is_file())
    ]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def collect_runs(multirun_dir: str | Path) -> list[RunRecord]:
    """Reads every job folder (``0/``, ``1/``, ... or any folder with ``.hydra/``) of a multirun.

    Args:
        multirun_dir: the sweep folder; a single run's folder also works (one record).

    Returns:
        One record per job, in job-number order; empty if the folder holds no jobs.

    Raises:
        ReportError: if `multirun_dir` is not a directory.
    """
    multirun_dir = Path(multirun_dir)
    if not multirun_dir.is_dir():
        raise ReportError(f"{'not a directory' if multirun_dir.exists() else 'no such directory'}: {multirun_dir}")
    runs = []
    for job in _job_dirs(multirun_dir):
        config = _read_yaml(job / ".hydra" / "config.yaml")
        config = migrate_config(config) if isinstance(config, dict) else {}
        raw_overrides = _read_yaml(job / ".hydra" / "overrides.yaml")
        overrides = {}
        for line in raw_overrides if isinstance(raw_overrides, list) else []:
            key, sep, value = str(line).partition("=")
            if sep:  # "~key" deletions carry no value; a renamed key groups with its name today
                key = key.lstrip("+~")
                overrides[RENAMED_KEYS.get(key, key)] = value.strip()
        metrics, reason = _load_metrics(job)
        tags = config.get("tags") if isinstance(config.get("tags"), list) else []
        runs.append(
            RunRecord(
                path=job, overrides=overrides, anchor=_anchor(config, metrics, overrides),
                order=_order(config, overrides), seed=_seed(config, overrides), metrics=metrics,
                failed=metrics is None, reason=reason, tags=[str(t) for t in tags], config=config,
            )
        )  # fmt: skip
    return runs


# ---------------------------------------------------------------- grouping


def varying_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Override keys whose value differs between jobs (a key missing from some jobs counts), minus seed."""
    keys = dict.fromkeys(k for run in runs for k in run.overrides)
    return [
        k
        for k in keys
        if k != "seed" and not k.startswith("hydra.") and len({run.overrides.get(k) for run in runs}) > 1
    ]


def _config_value(config: dict[str, Any], key: str) -> str:
    """A dotted key's scalar value in a stored config, spelled as on a command line (``true``, ``null``, ``2``);
    "" when the config has no such scalar (a config group's name, a mapping, a list)."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return ""
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value) if isinstance(value, (int, float, str)) else ""


def group_key(run: RunRecord, keys: Sequence[str]) -> GroupKey:
    """The run's values of the varying `keys` as ((column, value), ...).

    Anchor keys become one "anchor" column holding `run.anchor` and ``curriculum.order`` an "order"
    column holding `run.order` (both canonical, read from the config); other keys keep their name
    and raw override value, or, for a job that left the key at its default, the value its stored config
    holds (jobs of a sweep beside runs of the default job are labelled ``data.synthetic.version=2``, not
    ``data.synthetic.version=``).
    """
    values: dict[str, str] = {}
    for key in keys:
        column = "anchor" if key in _ANCHOR_KEYS else "order" if key in _ORDER_KEYS else key
        given = run.overrides.get(key)
        given = _config_value(run.config, key) if given is None else given
        values[column] = {"anchor": run.anchor, "order": run.order}.get(column, given)
    return tuple(values.items())


def group_label(key: GroupKey) -> str:
    return ", ".join(f"{column}={value}" for column, value in key) or "all runs"


def group_runs(runs: Sequence[RunRecord]) -> dict[GroupKey, list[RunRecord]]:
    """Runs by group, groups in order of first appearance (the sweep's own order)."""
    keys = varying_keys(runs)
    groups: dict[GroupKey, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(group_key(run, keys), []).append(run)
    return groups
