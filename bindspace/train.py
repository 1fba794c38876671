"""``bindspace-train``: compose the config, validate it, train, evaluate on held-out data.

bindspace-train model=tiny anchor=text seed=3 trainer.max_steps=1000
bindspace-train -m seed=0,1,2 anchor=image,text

This module is the command line only: it imports Hydra and the config checks, not Lightning or timm,
so that a typo, an unknown key or a bad value is answered in one line in a few seconds (docs/benchmarks.md
(h)). The pipeline (:func:`bindspace.training.pipeline.run`) is imported once
the command line has passed those checks; its names are importable from here as before.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bindspace.cli import resolved_before_launch, run_hydra_command
from bindspace.config import build_run_spec, check_train_config, package_dir  # noqa: F401  (package_dir: old import)
from bindspace.errors import ConfigError


def check_composed_config(cfg: DictConfig) -> None:
    """The run checks :func:`bindspace.training.pipeline.run` starts with, on a config composed from the
    command line before Hydra launches: bindspace-train's own keys (:func:`check_train_config`), then, with
    the graph as the data gives it, every section (:func:`build_run_spec`).

    A run that binds a new modality (``init_from`` with ``new_modality``) takes its graph from the
    checkpoint, so only its keys are checked here; a config whose interpolations need the launched job
    (``${hydra:...}`` beyond the run folder) is left to the run's own checks, which are the same.

    Raises:
        ConfigError: the first config error, in one line.
    """
    plain = resolved_before_launch(cfg)  # values as the run sees them: interpolations resolved
    if plain is None:
        return
    check_train_config(plain)
    from bindspace.data import check_data_paths, data_modalities

    check_data_paths(plain["data"])
    if plain.get("init_from") and plain.get("new_modality"):
        return
    if plain["graph"].get("modalities") is None:
        plain["graph"]["modalities"] = data_modalities(plain["data"])
    build_run_spec(plain)


def main() -> None:
    """``bindspace-train``: the command line checked in one line (:func:`bindspace.cli.check_hydra_overrides`
    and :func:`check_composed_config`), then Hydra and the pipeline."""
    run_hydra_command("train", "bindspace-train: config error", hydra_main, check=check_composed_config)


@hydra.main(version_base="1.3", config_path="pkg://bindspace.configs", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from bindspace.training.pipeline import run
    from bindspace.training.reliability import NonFiniteError, Preempted
    from bindspace.utils.run_folder import is_launch_rank, link_latest, remove_if_empty

    try:
        metrics = run(cfg)
    except ConfigError as err:
        # A user error: one clear line, no stack-trace wall, non-zero exit, no empty run folder.
        remove_if_empty()
        print(f"bindspace-train: config error: {err}", file=sys.stderr)
        sys.exit(2)
    except Preempted as stop:
        print(f"bindspace-train: preempted: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except NonFiniteError as err:
        print(f"bindspace-train: non-finite training: {err}", file=sys.stderr)
        sys.exit(3)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" ({err.filename})" if err.filename and str(err.filename) not in str(err.strerror) else ""
        print(
            f"bindspace-train: disk full: {err.strerror}{where}; the newest complete checkpoint is intact: free "
            "space and relaunch with the same hydra.run.dir to resume",
            file=sys.stderr,
        )
        sys.exit(2)
    if is_launch_rank() and HydraConfig.get().mode == RunMode.RUN:  # sweeps have their own folder layout
        link_latest(cfg.paths.output_dir)  # runs/train/latest: the newest finished run, for notebooks and scripts
    summary = metrics.get("summary", {})
    return summary.get("emergent/R@1", summary.get("trained/R@1"))  # the value a sweeper optimises


def __getattr__(name: str) -> Any:
    """The pipeline's names (``run``, ``plain_config``, ...), as ``from bindspace.train import run`` found them
    before the command line and the pipeline were two modules: importing one imports the pipeline."""
    if name.startswith("__"):
        raise AttributeError(name)
    from bindspace.training import pipeline

    try:
        return getattr(pipeline, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


if __name__ == "__main__":
    main()
