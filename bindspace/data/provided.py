"""What each built-in data source provides (``graph.modalities: null`` trains it), answered without
importing its datamodule: the datamodules import Lightning (about 5 s here), and the command lines check
a config, the graph included, before that. Each datamodule's ``provided_modalities`` is the function of
the same name here; a source registered by a plugin is asked through its class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bindspace.errors import ConfigError

SPOKEN_DIGITS = ("image", "text", "audio")
SPOKEN_LETTERS = ("image", "text", "audio", "imu")


def synthetic(**_: Any) -> list[str]:
    """Every registered modality the synthetic benchmark can render: the six built-ins and plugins that render."""
    from bindspace.data.synthetic import renderable_modalities

    return renderable_modalities()


def spoken_digits(**_: Any) -> list[str]:
    return list(SPOKEN_DIGITS)


def spoken_letters(**_: Any) -> list[str]:
    return list(SPOKEN_LETTERS)


def manifest(train: str | None = None, sources: Sequence[Any] | None = None, **_: Any) -> list[str]:
    """The modality columns of the training manifest(s), in registry order (only their text is read)."""
    from bindspace.data.manifest import canonical, load_manifest, parse_sources

    manifests = [load_manifest(path) for path, _ in parse_sources(train, sources)]
    return canonical(m for found in manifests for m in found.modality_counts())


def shards(train: str | None = None, **_: Any) -> list[str]:
    """The modalities the shard set's ``index.json`` counts, in registry order (no shard is opened)."""
    from bindspace.data.manifest import canonical, existing_path
    from bindspace.data.shards import load_index

    if train is None:
        raise ConfigError("data=shards needs data.train=SHARD_FOLDER and data.val=MANIFEST_OR_SHARD_FOLDER")
    _, index = load_index(existing_path(train, "data.train"))
    return canonical(m for m, n in index["modalities"].items() if n)
