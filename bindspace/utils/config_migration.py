"""Config keys renamed since a run folder could have been written, and the move of a stored config to today's names.

Kept apart from :mod:`bindspace.config` (which imports the model's building blocks) so that reading a run
folder's YAML, as ``bindspace-report`` does, costs nothing.
"""

from __future__ import annotations

from typing import Any

RENAMED_KEYS = {"data.scene.version": "data.synthetic.version"}  # old -> new (2026-12-04): the CLI names the new one
# The synthetic renderer's version in a stored config that names none: runs written before the key existed (until
# 2026-12-03) rendered version 1, the only one then. Without this they would read as today's default (2).
UNVERSIONED_RENDERER = 1


def migrate_config(raw: Any) -> Any:
    """A stored run config (``.hydra/config.yaml``) with keys renamed since it was written (``RENAMED_KEYS``)
    moved to their names today, in place; returned. The values are kept: a run folder of 2026-12-03 that
    trained on ``data.scene.version: 1`` still rebuilds, and says it rendered version 1. A synthetic data config
    (one with ``data.scene``) that names no renderer version gets ``data.synthetic.version: 1``
    (``UNVERSIONED_RENDERER``), the renderer it was trained on."""
    for old, new in RENAMED_KEYS.items():
        *old_path, old_leaf = old.split(".")
        *new_path, new_leaf = new.split(".")
        parent = raw
        for part in old_path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        target = raw
        for part in new_path:
            target = target.setdefault(part, {}) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target.setdefault(new_leaf, value)
    data = raw.get("data") if isinstance(raw, dict) else None
    if isinstance(data, dict) and isinstance(data.get("scene"), dict):
        renderer = data.setdefault("synthetic", {})
        if isinstance(renderer, dict):
            renderer.setdefault("version", UNVERSIONED_RENDERER)
    return raw
