"""Data sources: each ``data=<name>`` config names a datamodule class registered here.

Every datamodule is a :class:`bindspace.data.base.PairedDataModule` (the protocol training, the
curriculum and evaluation rely on, owned by that base class). It takes the modality configs, the
graph's edges and the seed plus its own keys (``data.<key>``). Layout of the package, by concern:

- ``base.py`` (the protocol), ``steps.py`` (step-indexed batches), ``checks.py`` (data checks);
- sources: ``datamodule.py`` (synthetic), ``manifest_datamodule.py``, ``shard_datamodule.py``,
  ``spoken_digits_datamodule.py`` and ``spoken_letters_datamodule.py`` (both on ``built_datamodule.py``);
- formats and decoding: ``manifest.py``, ``shards.py``, ``readers.py``, ``resample.py``;
- the synthetic renderer: ``synthetic.py``, ``scene_rng.py``;
- benchmark builders live in :mod:`bindspace.datasets`.
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
    "spoken_letters": "bindspace.data.spoken_letters_datamodule:SpokenLettersDataModule",
    "manifest": "bindspace.data.manifest_datamodule:ManifestDataModule",
    "shards": "bindspace.data.shard_datamodule:ShardDataModule",
}

# The built-in datamodules' provided_modalities, as light functions (bindspace/data/provided.py).
PROVIDED: dict[str, str] = {
    "bindspace.data.datamodule:SyntheticDataModule": "bindspace.data.provided:synthetic",
    "bindspace.data.spoken_digits_datamodule:SpokenDigitsDataModule": "bindspace.data.provided:spoken_digits",
    "bindspace.data.spoken_letters_datamodule:SpokenLettersDataModule": "bindspace.data.provided:spoken_letters",
    "bindspace.data.manifest_datamodule:ManifestDataModule": "bindspace.data.provided:manifest",
    "bindspace.data.shard_datamodule:ShardDataModule": "bindspace.data.provided:shards",
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

    A manifest's (or shard set's) modality columns, the modalities spoken digits (letters) holds, every
    registered modality the synthetic benchmark can render. Reads manifest text at most, no data file.
    """
    kwargs = {k: v for k, v in data.items() if k != "name"}
    cls = DATAMODULES.get(str(data.get("name", "synthetic")))
    if cls in PROVIDED:  # a built-in source: answered without importing its datamodule (Lightning)
        module, name = PROVIDED[cls].split(":")
        return list(getattr(importlib.import_module(module), name)(**kwargs))
    return list(datamodule_class(data).provided_modalities(**kwargs))


def check_data_paths(data: Mapping[str, Any]) -> None:
    """Every file or folder a built-in manifest or shard source names exists (ConfigError naming the key):
    checked for each job of a sweep before the first one starts, not when its job builds its data."""
    cls = DATAMODULES.get(str(data.get("name", "synthetic")))
    if cls not in (DATAMODULES["manifest"], DATAMODULES["shards"]):
        return
    from bindspace.data.manifest import existing_path, parse_sources

    if cls == DATAMODULES["manifest"]:
        parse_sources(data.get("train"), data.get("sources"))
    elif data.get("train") is not None:
        existing_path(data["train"], "data.train")
    for key in ("val", "test"):
        if data.get(key) is not None:
            existing_path(data[key], f"data.{key}")


def build_datamodule(
    data: Mapping[str, Any], configs: Mapping[str, ModalityConfig], edges: Sequence[tuple[str, str]], seed: int
):
    """Instantiate the datamodule named by ``data["name"]`` with the remaining keys as arguments."""
    kwargs = dict(data)
    name = kwargs.pop("name", "synthetic")
    cls = datamodule_class(data)
    from bindspace.data.base import PairedDataModule  # lightning: imported when data is built

    if not (isinstance(cls, type) and issubclass(cls, PairedDataModule)):
        raise ConfigError(f"data={name}: {cls!r} is not a bindspace.data.base.PairedDataModule")
    accepted = set(inspect.signature(cls).parameters) - {"configs", "edges", "seed"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"data={name}: unknown key(s) {unknown}; expected some of {sorted(accepted)}")
    return cls(configs, edges, seed=seed, **kwargs)
