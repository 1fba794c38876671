"""Experiment loggers: wandb (offline unless asked), CSV, or none."""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import string
import sys
from pathlib import Path
from typing import Any

from bindspace.errors import ConfigError

log = logging.getLogger(__name__)

WANDB_MODES = ("offline", "online", "disabled")
# <run>/wandb_run_id: the id of the wandb run a run folder logs to, for a relaunch that resumes to continue it.
WANDB_ID_FILE = "wandb_run_id"
WANDB_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def build_logger(cfg: dict[str, Any], run_dir: Path, tags: list[str] | None = None, resume_step: int | None = None):
    """The Lightning logger described by ``cfg["logger"]`` (``name``: wandb | csv | none).

    ``tags`` (anchor, order, seed, ...) are added to the configured ones so every run of a sweep can
    be filtered in wandb; ``logger.group`` groups the runs of one sweep. ``resume_step``: the global
    step of the checkpoint this launch resumes (None: a fresh run), for the CSV log and the wandb run
    (:func:`wandb_run_id`) to continue.
    """
    lcfg = dict(cfg.get("logger") or {"name": "none"})
    name, mode = check_logger(lcfg)
    if name == "none":
        return None
    if name == "csv":
        return _resumable_csv_logger(run_dir, resume_step)
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    if mode != "online":
        # Belt and braces: the environment wins over any stray setting, so offline never dials out.
        os.environ["WANDB_MODE"] = mode
    logger = WandbLogger(
        id=wandb_run_id(run_dir, resume_step),
        resume="allow",  # the id of a run that exists is continued (online); a new id starts a run
        project=lcfg.get("project", "bindspace"),
        entity=lcfg.get("entity"),
        group=lcfg.get("group"),
        tags=list(dict.fromkeys([*(lcfg.get("tags") or []), *(tags or [])])),
        name=lcfg.get("run_name"),
        save_dir=str(run_dir),
        mode=mode,
        log_model=False,
    )
    # Lightning always passes anonymous=None to wandb.init, which then warns that the (deprecated) setting
    # has no effect on every run; leaving the key out changes nothing else.
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


def wandb_run_id(run_dir: Path, resume_step: int | None) -> str:
    """The id of the wandb run this launch logs to.

    A launch that resumes a checkpoint (``resume_step``) continues the wandb run of its run folder, whose id the
    folder keeps in ``wandb_run_id`` (:func:`remember_wandb_run`): one training run, one wandb run, however often
    it is relaunched. A launch that starts over (no checkpoint, ``resume=never``) or whose folder holds no id
    (a ``ckpt_path`` of another folder, a folder older than the file) gets a new id. Every rank reads the same
    file; only rank 0 creates the run (Lightning) and writes the file.

    Raises:
        ConfigError: the file holds something other than a wandb run id.
    """
    path = Path(run_dir) / WANDB_ID_FILE
    if resume_step is not None and path.is_file():
        stored = path.read_text(encoding="utf-8", errors="replace").strip()
        if not WANDB_ID.fullmatch(stored):
            raise ConfigError(
                f"{path}: not a wandb run id ({stored[:40]!r}); remove the file to log this run to a new wandb run"
            )
        log.info("wandb: continuing run %s of %s (resumed at step %d)", stored, path.parent, resume_step)
        return stored
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # as wandb makes them


def remember_wandb_run(logger, run_dir: Path) -> None:
    """Keep the wandb run id in ``<run>/wandb_run_id`` (atomically), for a relaunch that resumes to continue it.

    Called on global rank 0 once the run has started (a launch stopped by a config error before that leaves
    nothing new in its folder).
    """
    if logger is None or type(logger).__name__ != "WandbLogger":
        return
    from bindspace.utils.io import atomic_write_text

    path = Path(run_dir) / WANDB_ID_FILE
    run_id = str(logger.version)
    if not path.is_file() or path.read_text(encoding="utf-8", errors="replace").strip() != run_id:
        atomic_write_text(path, run_id + "\n")


def check_logger(lcfg: dict[str, Any]) -> tuple[str, str]:
    """``logger.name`` and ``logger.mode``, checked (called by :func:`bindspace.config.check_train_config`)."""
    name = lcfg.get("name", "none")
    if name not in ("wandb", "csv", "none"):
        raise ConfigError(f"logger.name must be wandb, csv or none; got {name!r}")
    mode = lcfg.get("mode", "offline")
    if name == "wandb" and mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode must be one of {WANDB_MODES}; got {mode!r}")
    return name, mode


def close_logger(logger) -> None:
    """Always finish a wandb run, with a failure exit code when an exception is in flight.

    Without this a crashed run in a multirun keeps wandb's service alive and the sweep hangs.
    """
    if logger is None or type(logger).__name__ != "WandbLogger":
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if sys.exc_info()[0] is not None else 0)


def log_stage(logger):
    """A curriculum stage hook that logs the stage's summary metrics and its retrieval heatmap."""

    def hook(trainer, module, record: dict) -> None:
        if logger is None or not trainer.is_global_zero:
            return
        name, step = record["name"], record["step"]
        logger.log_metrics(
            {"stage": record["index"], **{f"stage/{k}": v for k, v in record["summary"].items()}}, step=step
        )
        if type(logger).__name__ == "WandbLogger":
            from bindspace.evaluation.plots import figure_to_array, retrieval_heatmap

            fig = retrieval_heatmap(record["retrieval"], "R@1", title=f"stage {record['index']}: {name} (step {step})")
            logger.log_image(key="retrieval/heatmap", images=[figure_to_array(fig)], caption=[name], step=step)

    return hook


def log_forgetting(logger, metrics: dict) -> None:
    """At the end of a curriculum run: the stage x edge table and each edge's validation R@1 over steps.

    The same table and figure ``bindspace-report`` makes for a sweep (forgetting and transfer), for one run.
    """
    if logger is None or type(logger).__name__ != "WandbLogger" or len(metrics.get("stages") or []) < 2:
        return
    from bindspace.evaluation.plots import figure_to_array
    from bindspace.report import forgetting_table, summary_rows_as_columns
    from bindspace.report.figures import forgetting_figure
    from bindspace.report.forgetting import validation_panel

    columns, data = summary_rows_as_columns(forgetting_table([metrics]))
    logger.log_table(key="curriculum/forgetting", columns=columns, data=data)
    panel = validation_panel([metrics])
    if panel is not None:
        figure = forgetting_figure({"this run": panel})
        logger.log_image(key="curriculum/validation_R@1", images=[figure_to_array(figure)])


def _resumable_csv_logger(run_dir: Path, resume_step: int | None):
    """Lightning's CSVLogger (``<run>/csv/metrics.csv``), continued across relaunches.

    Lightning's writer starts with no columns, so a relaunch into the folder rewrote the file with the
    columns of its first rows and lost the first launch's (its validation metrics, say). Here a resumed
    run keeps the rows of the steps its checkpoint holds (``step <= resume_step``; later rows were
    logged by steps it trains again) and their columns; a fresh run starts the file over.
    """
    import csv

    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.utilities import rank_zero_only

    from bindspace.utils.io import atomic_write_text

    # Defined here: importing this module (the config checks do) must not import Lightning.
    class Writer(ExperimentWriter):
        def __init__(self, log_dir: str) -> None:
            super().__init__(log_dir)
            path = Path(self.metrics_file_path)
            if not path.is_file():
                return
            if resume_step is None:
                path.unlink()  # resume=never, or no checkpoint: the run starts over, as its checkpoints do
                return
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if not r.get("step") or float(r["step"]) <= resume_step]
                self.metrics_keys = list(reader.fieldnames or [])
            out = io.StringIO(newline="")
            writer = csv.DictWriter(out, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(path, out.getvalue())

        def _check_log_dir_exists(self) -> None:  # Lightning warns that it deletes what is there; not here
            pass

    class Logger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None and rank_zero_only.rank == 0:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = Writer(log_dir=self.log_dir)
            return super().experiment

    return Logger(save_dir=str(run_dir), name="csv", version="")
