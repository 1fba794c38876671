"""``bindspace-eval``: evaluate a checkpoint: retrieval, zero-shot, the modality gap and its mitigations.

    bindspace-eval ckpt_path=runs/train/<time>/checkpoints/last.ckpt
    bindspace-eval ckpt_path=... data.test_size=2000 prompts=synthetic eval.save_to_checkpoint=true

With ``probe=true`` a logistic-regression probe per modality is fitted on the reference split's frozen
embeddings and scored on the evaluated split (``linear_probe``, beside ``zero_shot``; same id rule).

Writes ``metrics.json`` (``retrieval``, ``retrieval_class``, ``zero_shot``, ``linear_probe``, ``modality_gap``,
``mixed_index``, ``fit_split``, ...), ``retrieval.txt`` and the plots ``retrieval_R@1.png`` and
``modality_gap.png`` to the run folder (``runs/eval/<time>/``). Centring means and bridges are fitted on
the reference split (``eval.reference_split``, default val) and scored on the evaluated split (default
test), never on a common sample: when the two share sample ids (a manifest without ``data.test``
scores its validation set), the shared ids are halved by id hash (``bindspace.evaluation.fit_split``),
every metric is scored on the score half, and ``metrics.json["fit_split"]`` says so;
``eval.fit_split=reference`` refuses instead. The model comes from the checkpoint; the data, the seed
and the prompts from this config.
"""

from __future__ import annotations

import itertools
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from bindspace.cli import resolved_before_launch, run_hydra_command
from bindspace.config import build_run_spec, check_checkpoint_file
from bindspace.data import build_datamodule, check_data_paths
from bindspace.data.checks import small_heldout_message
from bindspace.data.manifest import sample_keys
from bindspace.errors import ConfigError
from bindspace.evaluation.embed import HeldOut, embed_batches, relevance_keys
from bindspace.evaluation.fit_split import FitScoreSplit, check_disjoint, split_fit_and_score
from bindspace.evaluation.gap import (
    BRIDGE_METHODS,
    Bridge,
    center_all,
    fit_bridge,
    fit_centering,
    gap_projection_figure,
    gap_table,
    mixed_index,
)
from bindspace.evaluation.plots import retrieval_heatmap, save_figure
from bindspace.evaluation.probe import linear_probe
from bindspace.evaluation.retrieval import evaluate_retrieval
from bindspace.evaluation.stats import write_per_query
from bindspace.evaluation.suite import METRICS_FORMAT, evaluate_split
from bindspace.evaluation.tables import format_interval, format_metrics_report, format_summary, summarize
from bindspace.evaluation.zero_shot import (
    Prompts,
    class_embeddings,
    zero_shot_from_classes,
)
from bindspace.inference import (
    BindSpace,
    CheckpointError,
    load_checkpoint,
    read_run_config,
    run_config_spec,
    save_mitigations,
)
from bindspace.utils.environment import describe_environment
from bindspace.utils.io import atomic_write_json, atomic_write_text
from bindspace.utils.run_folder import RunFolder, remove_if_empty
from bindspace.utils.typed import from_mapping

log = logging.getLogger("bindspace.eval")
SPLITS = ("val", "test")
FIT_SPLIT_MODES = ("auto", "reference")


@dataclass
class EvalOptions:
    """The ``eval:`` section of ``configs/eval.yaml``."""

    split: str = "test"
    reference_split: str = "val"  # mitigations are fitted here, never on the evaluated split
    fit_split: str = "auto"  # auto: halve shared sample ids by id hash | reference: refuse shared ids
    zero_shot_modalities: list[str] | None = None  # default: every modality but text
    zero_shot_ks: list[int] = field(default_factory=lambda: [1, 5])
    mixed_index: list[dict[str, Any]] | None = None  # default: text queries, the model's next two (none below 3)
    mixed_k: int = 10
    bridge_method: str = "procrustes"
    gap_seed: int = 0
    max_points: int = 500  # per modality in the projection plot
    save_to_checkpoint: bool = False
    plots: bool = True
    probe_c: float = 1.0  # the linear probe's inverse regularisation (probe=true), on standardised embeddings

    def check(self, modalities: list[str]) -> None:
        """Raise ConfigError naming the first bad key (modality names are checked against the model)."""
        for key in ("split", "reference_split"):
            if getattr(self, key) not in SPLITS:
                raise ConfigError(f"eval.{key} must be one of {SPLITS}, got {getattr(self, key)!r}")
        if self.split == self.reference_split:
            raise ConfigError(
                f"eval.reference_split must differ from eval.split ({self.split!r}): fit on one, score on the other"
            )
        if self.fit_split not in FIT_SPLIT_MODES:
            raise ConfigError(f"eval.fit_split must be one of {FIT_SPLIT_MODES}, got {self.fit_split!r}")
        if not isinstance(self.probe_c, int | float) or not 0 < self.probe_c < float("inf"):
            raise ConfigError(f"eval.probe_c must be a number > 0, got {self.probe_c!r}")
        if self.bridge_method not in BRIDGE_METHODS:
            raise ConfigError(f"eval.bridge_method must be one of {BRIDGE_METHODS}, got {self.bridge_method!r}")
        if self.mixed_index is None:  # a model of two modalities has no mixed index to search
            queries = "text" if "text" in modalities else modalities[0]
            gallery = [m for m in modalities if m != queries][:2]
            self.mixed_index = [{"queries": queries, "gallery": gallery}] if len(gallery) == 2 else []
        named = list(self.zero_shot_modalities or [])
        for i, entry in enumerate(self.mixed_index):
            if set(entry) != {"queries", "gallery"} or len(entry["gallery"]) < 2:
                raise ConfigError(f"eval.mixed_index[{i}] needs queries: <m> and gallery: [<m>, <m>, ...], got {entry}")
            named += [entry["queries"], *entry["gallery"]]
        for m in named:
            if m not in modalities:
                raise ConfigError(f"eval: modality {m!r} is not in the checkpoint's model {modalities}")


def load_model(plain: dict[str, Any]) -> BindSpace:
    """The checkpoint's own metadata, or (older checkpoints) the model described by this config."""
    path = plain["ckpt_path"]  # given: check_eval_config
    ckpt = load_checkpoint(path)
    device = plain.get("device") or "cpu"
    if "bindspace" in ckpt or run_config_spec(Path(path)) is not None:  # metadata, or the run's own config
        return BindSpace.from_state(ckpt, device, where=str(path))
    log.warning("%s has no 'bindspace' metadata nor run config: rebuilding its model from this config", path)
    spec = build_run_spec(plain)
    return BindSpace.from_state(ckpt, device, spec.modalities, spec.embed_dim, spec.edges, where=str(path))


def training_data_differences(plain: dict[str, Any]) -> list[str]:
    """The synthetic benchmark's settings (``SCENE_SETTINGS``) in which this evaluation differs from the checkpoint's
    training run, read from the run's ``.hydra/config.yaml`` beside ``checkpoints/`` (keys renamed since are
    moved first); ``["data.synthetic.version: trained 1, evaluated 2", ...]``, empty when they agree or when
    the run's config is not there or is not a synthetic run. The scenes are a function of these keys: evaluated
    with others, the held-out scenes are not the ones the training run held out."""
    import yaml

    from bindspace.data.synthetic import scene_settings

    try:
        trained = read_run_config(plain["ckpt_path"])
    except (OSError, yaml.YAMLError, UnicodeDecodeError):  # a run folder that cannot tell: nothing to compare
        return []
    was, now = scene_settings(trained), scene_settings(plain)
    if was is None or now is None:
        return []
    return [f"{key}: trained {was[key]}, evaluated {now[key]}" for key in was if was[key] != now[key]]


def embed_split(bs: BindSpace, datamodule, split: str) -> tuple[HeldOut, list[str]]:
    """Embed every modality the split's batches hold (a manifest split may hold fewer than the model).

    Returns:
        The split, and per row its source key as a string: the sample id (a manifest's ``id``; a synthetic
        scene id), or ``group:<name>`` for a row of a manifest's group, so that fitting and scoring never
        split a group (several captions of one sound) between them.
    """
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    batches = iter(loader)
    first = next(batches, None)
    if first is None:
        raise ConfigError(f"data: the {split} split is empty")
    modalities = [m for m in bs.modalities if m in first]
    sample_ids: list[str] = []

    def recording(stream):
        for batch in stream:
            sample_ids.extend(str(s) for s in batch.get("source_key", batch.get("sample_id", batch["id"].tolist())))
            yield batch

    return embed_batches(bs.model, recording(itertools.chain([first], batches)), modalities), sample_ids


def row_keys(datamodule, split: str, held: HeldOut, sample_ids: list[str]) -> list[tuple[str, ...]]:
    """Per row of an embedded split, the keys that make rows of two splits one sample: a manifest row's
    :func:`~bindspace.data.manifest.sample_keys` (its ``id`` indexes the split's samples), else its id."""
    samples = getattr(datamodule.heldout_set(split), "samples", None)
    if samples is None:
        return [(s,) for s in sample_ids]
    return [sample_keys(samples[i]) for i in held.ids.tolist()]


def take_rows(split: HeldOut, rows: list[int]) -> HeldOut:
    """The rows ``rows`` of every tensor of a split."""
    index = torch.as_tensor(rows, dtype=torch.long)
    return HeldOut(
        {m: e[index] for m, e in split.embeddings.items()},
        split.ids[index],
        None if split.labels is None else split.labels[index],
        None if split.groups is None else split.groups[index],
    )


def fit_and_score_splits(bs: BindSpace, datamodule, opts: EvalOptions) -> tuple[HeldOut, HeldOut, FitScoreSplit]:
    """Embed the reference and scored splits and keep them disjoint by sample (module docstring).

    Returns:
        (rows to fit on, rows to score, what was done); proven disjoint by id and by file before anything
        is scored.
    """
    test, test_ids = embed_split(bs, datamodule, opts.split)
    # One dataset serving both splits (test = val) is embedded once; the sample check below decides either way.
    same = datamodule.heldout_set(opts.reference_split) is datamodule.heldout_set(opts.split)
    ref, ref_ids = (test, test_ids) if same else embed_split(bs, datamodule, opts.reference_split)
    test_keys = row_keys(datamodule, opts.split, test, test_ids)
    ref_keys = test_keys if same else row_keys(datamodule, opts.reference_split, ref, ref_ids)
    plan = split_fit_and_score(ref_ids, test_ids, opts.reference_split, opts.split, ref_keys, test_keys)
    if plan.info["shared_ids"] and opts.fit_split == "reference":
        raise ConfigError(
            f"eval.fit_split=reference: the {opts.reference_split} and {opts.split} splits share "
            f"{plan.info['shared_ids']} sample ids, so the mitigations would be fitted on scored samples; "
            "give data.test a disjoint set or use eval.fit_split=auto (halves the shared ids by id hash)"
        )
    check_disjoint([k for i in plan.fit_rows for k in ref_keys[i]], [k for i in plan.score_rows for k in test_keys[i]])
    if plan.info["shared_ids"]:
        log.warning(
            "eval: %s and %s share %d samples (an id or a file); fitting on %d, scoring %d (split by id hash, "
            "see fit_split)",
            opts.reference_split, opts.split, plan.info["shared_ids"], plan.info["fit_ids"], plan.info["score_ids"],
        )  # fmt: skip
        small = small_heldout_message(len(plan.score_rows), f"eval: the scored half of {opts.split}")
        if small:
            log.warning(small)
    return take_rows(ref, plan.fit_rows), take_rows(test, plan.score_rows), plan


def data_class_names(datamodule) -> list[str] | None:
    """The data's class names (label index -> name), None when it has no labels."""
    return list(datamodule.class_names) or None


def centred_zero_shot(
    bs: BindSpace,
    centred: dict,
    labels,
    means,
    names: list[str],
    prompts: Prompts,
    opts: EvalOptions,
    groups: torch.Tensor | None = None,
) -> dict:
    """``{modality: {"top1": %, ...}}`` with centring (the prompts centred as text), each with its interval
    (over ``groups``, the rows' relevance keys, when rows share one: as :func:`evaluate_split` does)."""
    wanted = opts.zero_shot_modalities or [m for m in centred if m != "text"]
    classes = center_all({"text": class_embeddings(bs, names, prompts.templates)}, means)["text"]
    return {m: zero_shot_from_classes(centred[m], labels, classes, opts.zero_shot_ks, groups=groups) for m in wanted}


def fit_mitigations(ref: HeldOut, opts: EvalOptions) -> tuple[dict[str, torch.Tensor], dict[str, Bridge]]:
    """Centring means of every modality and a bridge from each mixed-index gallery modality to its queries."""
    embs = ref[0]
    bridges = {}
    for entry in opts.mixed_index:
        q = entry["queries"]
        for g in entry["gallery"]:
            bridges[f"{g}->{q}"] = fit_bridge(embs[g], embs[q], opts.bridge_method, (g, q))
    return fit_centering(embs), bridges


def mixed_index_table(test: HeldOut, means: dict, bridges: dict[str, Bridge], opts: EvalOptions) -> dict:
    """Each query modality against one index of several gallery modalities: none / center / bridge."""
    embs, ids = test.embeddings, relevance_keys(test)
    out: dict[str, Any] = {}
    for entry in opts.mixed_index:
        q, gallery = entry["queries"], list(entry["gallery"])
        keys = {g: ids for g in gallery}
        centred = center_all({m: embs[m] for m in [q, *gallery]}, means)
        bridged = {g: bridges[f"{g}->{q}"](embs[g]) for g in gallery}
        out[f"{q}->{'+'.join(gallery)}"] = {
            "none": mixed_index(embs[q], ids, {g: embs[g] for g in gallery}, keys, opts.mixed_k),
            "center": mixed_index(centred[q], ids, {g: centred[g] for g in gallery}, keys, opts.mixed_k),
            "bridge": mixed_index(embs[q], ids, bridged, keys, opts.mixed_k),
        }
    return out


def evaluate(
    bs: BindSpace, test: HeldOut, mitigations: tuple, names: list[str] | None, prompts: Prompts, opts: EvalOptions
) -> tuple[dict, dict]:
    """Every metric of ``metrics.json`` from the embedded split and the mitigations (from :func:`fit_mitigations`),
    and the per-query values of ``per_query.npz``."""
    embs, ids, labels = test.embeddings, relevance_keys(test), test.labels
    means, bridges = mitigations
    found = evaluate_split(
        bs, test, bs.edges, class_names=names, prompts=prompts, zero_shot_ks=opts.zero_shot_ks,
        zero_shot_modalities=opts.zero_shot_modalities, gap_seed=opts.gap_seed,
    )  # fmt: skip  # the suite training and the stage ends use; the corrected scores below add to it
    metrics, per_query = found.metrics, found.per_query
    centred = center_all(embs, means)
    centred_found = evaluate_retrieval(centred, ids, bs.edges)
    metrics["summary_centered"] = summarize(centred_found.instance)
    metrics["summary_centered_ci"] = centred_found.summary_ci
    if metrics["zero_shot"]:
        metrics["zero_shot_centered"] = centred_zero_shot(
            bs, centred, labels, means, prompts.class_names(names), prompts, opts, groups=ids
        )
    metrics["modality_gap_centered"] = gap_table(centred, seed=opts.gap_seed, groups=ids)
    metrics["mixed_index"] = mixed_index_table(test, means, bridges, opts)
    return metrics, per_query


def probe_table(ref: HeldOut, test: HeldOut, plan: FitScoreSplit, opts: EvalOptions, seed: int) -> dict[str, Any]:
    """``metrics.json["linear_probe"]``: a probe per modality fitted on the fit rows, scored on the scored rows."""
    if ref[2] is None or test[2] is None:
        raise ConfigError("probe=true needs a labelled dataset (class labels on the reference and scored splits)")
    return linear_probe(ref, test, plan.fit_ids, plan.score_ids, seed=seed, c=opts.probe_c)


def check_eval_config(plain: dict[str, Any]) -> tuple[EvalOptions, Prompts, bool]:
    """bindspace-eval's own keys, checked before the checkpoint is read: ``eval.*``, ``prompts``, ``probe``
    and that ``ckpt_path`` is given. Returns the eval options, the prompts and ``probe``.

    Raises:
        ConfigError: the first error, in one line.
    """
    opts = from_mapping(EvalOptions, plain.get("eval"), "eval")
    prompts = Prompts.from_dict(plain.get("prompts") or {}, "prompts")
    probe = plain.get("probe", False)
    if not isinstance(probe, bool):
        raise ConfigError(f"probe must be true or false, got {probe!r}")
    if not plain.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path is required, e.g. bindspace-eval ckpt_path=runs/train/<time>/checkpoints/last.ckpt"
        )
    check_checkpoint_file(plain["ckpt_path"], "ckpt_path")
    return opts, prompts, probe


def check_composed_config(cfg: DictConfig) -> None:
    """:func:`check_eval_config` on a config composed from the command line, before Hydra launches."""
    plain = resolved_before_launch(cfg)
    if plain is not None:
        check_eval_config(plain)
        check_data_paths(plain.get("data") or {})


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate one checkpoint; returns the metrics written to ``metrics.json``."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    opts, prompts, probe = check_eval_config(plain)
    describe_environment()  # read at launch: the commit of the code that runs, not of a checkout made during it
    bs = load_model(plain)
    opts.check(bs.modalities)
    differences = training_data_differences(plain)
    if differences:  # a deliberate shift is allowed; an accidental one is named, with the keys to repeat
        log.warning(
            "%s: scenes unlike the training run's (%s); to score the scenes that run held out, give its values "
            "on this command line",
            plain["ckpt_path"],
            "; ".join(differences),
        )
    run_dir = Path(cfg.paths.output_dir)
    with RunFolder(run_dir) as folder:  # locked; an error before the results leaves nothing in a new folder
        folder.record(cfg, "eval")
        datamodule = build_datamodule(plain["data"], bs.model.configs, bs.edges, seed=plain.get("seed", 0))
        if probe and not data_class_names(datamodule):  # before anything is embedded
            raise ConfigError("probe=true needs a labelled dataset (class labels); this data has none")
        ref, test, plan = fit_and_score_splits(bs, datamodule, opts)
        means, bridges = fit_mitigations(ref, opts)
        metrics, per_query = evaluate(bs, test, (means, bridges), data_class_names(datamodule), prompts, opts)
        if probe:
            metrics["linear_probe"] = probe_table(ref, test, plan, opts, int(plain.get("seed", 0)))
            metrics["chance"]["linear_probe"] = {m: v["chance"] for m, v in metrics["linear_probe"].items()}
        metrics = {"format": METRICS_FORMAT, "ckpt_path": str(plain["ckpt_path"]), "split": opts.split,
                   "reference_split": opts.reference_split, "fit_split": plan.info,
                   "gallery_size": int(test[1].shape[0]), "edges": [list(e) for e in bs.edges],
                   "training_data_differences": differences, **metrics,
                   "environment": describe_environment(), "checkpoint_environment": bs.environment}  # fmt: skip
        folder.started()
        write_results(run_dir, metrics, test[0], center_all(test[0], means), opts, per_query)
    if opts.save_to_checkpoint:
        save_mitigations(plain["ckpt_path"], means, bridges.values(), metadata=bs.metadata())
        print(f"stored centring means and {len(bridges)} bridge(s) in {plain['ckpt_path']}")
    return metrics


def write_results(
    run_dir: Path, metrics: dict, embs: dict, centred: dict, opts: EvalOptions, per_query: dict | None = None
) -> None:
    order, size = list(embs), metrics["gallery_size"]
    report = format_metrics_report(metrics, order)  # every matrix with chance, zero-shot, the summary
    if per_query:
        write_per_query(run_dir / "per_query.npz", per_query)
    atomic_write_text(run_dir / "retrieval.txt", report + "\n")
    if opts.plots:
        chance = metrics["chance"]["retrieval"]["R@1"]
        heatmap = retrieval_heatmap(metrics["retrieval"], "R@1", order, chance=chance, split=metrics["split"])
        save_figure(heatmap, run_dir / "retrieval_R@1.png")
        save_figure(gap_projection_figure(embs, centred, opts.max_points), run_dir / "modality_gap.png")
    atomic_write_json(run_dir / "metrics.json", metrics)  # last: a folder with it holds every result (as train)
    halved = " (its score half: see fit_split)" if metrics["fit_split"]["method"] == "id_hash" else ""
    print(f"\nHeld-out retrieval, {metrics['split']} split{halved} of {size}\n\n{report}")
    chance = metrics["chance"]["retrieval"]
    print("Centred: " + format_summary(metrics["summary_centered"], metrics["summary_centered_ci"], chance))
    for m, acc in metrics.get("zero_shot", {}).items():  # beside the raw table of the report above
        centred, chance = metrics["zero_shot_centered"][m], metrics["chance"]["zero_shot"]["top1"]
        print(
            f"zero-shot {m}, centred: top1={centred['top1']:.1f}{format_interval(centred, 'top1')} "
            f"(raw {acc['top1']:.1f}{format_interval(acc, 'top1')}; chance {chance:.2f})"
        )
    for m, probe in metrics.get("linear_probe", {}).items():
        low, high = probe["top1_ci"]
        print(
            f"linear probe {m}: top1={probe['top1']:.1f} [{low:.1f}, {high:.1f}] (chance {probe['chance']:.1f}; "
            f"fitted on {probe['fit_samples']}, scored {probe['scored_samples']})"
        )
    print(f"metrics: {run_dir / 'metrics.json'}")


def main() -> None:
    """``bindspace-eval``: overrides checked in one line (:func:`bindspace.cli.check_hydra_overrides`), then Hydra."""
    run_hydra_command("eval", "bindspace-eval: error", hydra_main, check=check_composed_config)


@hydra.main(version_base="1.3", config_path="pkg://bindspace.configs", config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ConfigError, CheckpointError) as err:
        # A user error: one clear line, no stack-trace wall, non-zero exit, no empty run folder.
        remove_if_empty()
        print(f"bindspace-eval: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
