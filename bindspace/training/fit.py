"""Training from plain Python: a notebook or script trains without Hydra's entry point or its compose recipe.

    from bindspace.training.fit import fit

    metrics = fit(["model=tiny", "trainer.max_steps=200", "anchor=text"], run_dir="runs/notebook")
    metrics = fit(config, run_dir="runs/again")  # a config mapping: compose_config(...) or a run's .hydra/config.yaml

The configuration is the same as ``bindspace-train``'s (the same groups, keys and checks, every error
before any compute), so a run started here and one started from the command line are the same run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bindspace.errors import ConfigError


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> dict[str, Any]:
    """``bindspace-train``'s config with command-line style ``overrides``, as plain data.

    Modalities registered in this process (plugins, or a ``@register_modality`` class defined in a
    notebook) are included. Output paths that Hydra would fill in at launch are left for :func:`fit`.

    Raises:
        ConfigError: an override that does not compose, in one line naming the key.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from bindspace.cli import check_hydra_overrides, resolved_before_launch
    from bindspace.config import check_train_config, register_hydra_configs

    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}")
    register_hydra_configs()
    check_hydra_overrides(config_name, list(overrides))  # one-line errors naming the key, as on the command line
    try:
        with initialize_config_module("bindspace.configs", version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides))
    except HydraException as err:  # pragma: no cover - check_hydra_overrides reports these first
        raise ConfigError(" ".join(str(err).split())) from None
    config = OmegaConf.to_container(cfg, resolve=False)
    if config_name == "train":  # unknown keys added with +, types and ranges: before anything runs
        resolved = resolved_before_launch(cfg)  # values as the run sees them (max_steps=${...} too)
        check_train_config(config if resolved is None else resolved)
    return config


def fit(config: Mapping[str, Any] | Sequence[str] | None = None, run_dir: str | Path = "runs/fit") -> dict[str, Any]:
    """Train and evaluate one run into ``run_dir``; returns what ``metrics.json`` holds.

    Args:
        config: ``bindspace-train`` overrides (``["model=tiny", "seed=3"]``), or a full config mapping
            (from :func:`compose_config`, possibly edited, or a run folder's ``.hydra/config.yaml``).
        run_dir: the run folder (checkpoints, metrics.json, logs); relaunching into the same folder resumes.

    Raises:
        ConfigError: a config error, named in one line, before any compute.
    """
    from omegaconf import OmegaConf

    from bindspace.training.pipeline import run

    if OmegaConf.is_config(config):  # e.g. OmegaConf.load(".../.hydra/config.yaml")
        config = OmegaConf.to_container(config, resolve=False)
    if config is None or (isinstance(config, Sequence) and not isinstance(config, str)):
        config = compose_config(list(config or ()))
    elif not isinstance(config, Mapping):
        raise ConfigError(f"config must be a list of overrides or a config mapping, got {type(config).__name__}")
    config = copy.deepcopy(dict(config))
    paths = dict(config.get("paths") or {})
    paths["output_dir"] = str(Path(run_dir).absolute())
    config["paths"] = paths
    return run(config)  # plain data: checked whole, resolved, recorded in run_dir/.hydra/config.yaml
