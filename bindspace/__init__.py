"""bindspace: multimodal alignment in one shared embedding space."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Loaded on first use, so `import bindspace` stays light (no torch until a model is needed).
_LAZY = {"BindSpace": "bindspace.inference", "combine": "bindspace.inference"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bindspace' has no attribute {name!r}")


__all__ = ["BindSpace", "combine"]
