"""Data sources: each ``data=<name>`` config names a LightningDataModule class registered here.

A datamodule takes the modality configs, the graph's edges and the seed plus its own keys, and
provides ``provided_modalities(**keys)`` (a classmethod: what the data holds, read cheaply before
the model is built), ``edges``, ``stage_edges`` (set by the curriculum), ``set_stage(i)``,
``steps_per_epoch(world_size)``, and step-indexed ``train_dataloader`` (see ``steps.py``),
``val_dataloader`` and ``test_dataloader`` whose batches hold every evaluated modality plus ``id``
(and ``label`` when known).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from bindspace.errors import ConfigError
from bindspace.modalities import ModalityConfig

DATAMODULES: dict[str, str] = {
    "synthetic": "bindspace.data.datamodule:SyntheticDataModule",
    "spoken_digits": "bindspace.data.spoken_digits_datamodule:SpokenDigitsDataModule",
    "manifest": "bindspace.data.manifest_datamodule:ManifestDataModule",
    "shards": "bindspace.data.shard_datamodule:ShardDataModule",
}


def datamodule_class(data: Mapping[str, Any]) -> type:
    """The datamodule class ``data["name"]`` names (imported on first use)."""
    name = data.get("name", "synthetic")
    if name not in DATAMODULES:
        raise ConfigError(f"data={name!r} is not a known data source; known: {sorted(DATAMODULES)}")
    module, cls_name = DATAMODULES[name].split(":")
    return getattr(importlib.import_module(module), cls_name)


def data_modalities(data: Mapping[str, Any]) -> list[str]:
    """The modalities a data config provides, in registry order: what ``graph.modalities: null`` trains.

    A manifest's (or shard set's) modality columns, the modalities spoken digits holds, every
    registered modality the synthetic benchmark can render. Reads manifest text at most, no data file.
    """
    kwargs = {k: v for k, v in data.items() if k != "name"}
    return list(datamodule_class(data).provided_modalities(**kwargs))


def build_datamodule(
    data: Mapping[str, Any], configs: Mapping[str, ModalityConfig], edges: Sequence[tuple[str, str]], seed: int
):
    """Instantiate the datamodule named by ``data["name"]`` with the remaining keys as arguments."""
    kwargs = dict(data)
    name = kwargs.pop("name", "synthetic")
    cls = datamodule_class(data)
    accepted = set(inspect.signature(cls).parameters) - {"configs", "edges", "seed"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"data={name}: unknown key(s) {unknown}; expected some of {sorted(accepted)}")
    return cls(configs, edges, seed=seed, **kwargs)
