"""What a run's numbers depend on besides its config: code, hardware and numerical libraries.

The same commit and command do not give the same floats everywhere. Which kernels MKL, oneDNN,
OpenBLAS and numpy's SIMD loops pick depends on the CPU; library releases change rounding. A single
last-bit difference in one batch grows over hundreds of optimiser steps into a different model: the
``make train`` job of commit 7e32330 printed trained R@1 7.5 [6.9, 8.2] when it was committed and
7.9 [7.2, 8.6] two days later, after this machine and its virtualenv were rebuilt, with the same
code (docs/reliability.md); nothing recorded which part of the environment changed. Every
``metrics.json`` therefore records
:func:`describe_environment`, and ``bindspace-report`` says when the runs it compares differ in it
(:func:`environment_differences`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Distributions whose release can change a run's floats or its data (bindspace's own dependencies).
PACKAGES = (
    "lightning", "numpy", "scipy", "scikit-learn", "timm", "transformers", "torchaudio", "torchvision",
    "peft", "soundfile", "hydra-core", "omegaconf",
)  # fmt: skip

# Recorded, but not a reason two runs' numbers differ (the OS kernel; the core count, where the threads
# torch used, ``torch.threads``, are what matters).
_NOT_COMPARED = ("platform", "cpu.count")


def describe_environment() -> dict[str, Any]:
    """The run's code, hardware and library versions, as plain JSON data.

    ``bindspace.commit`` is the git commit of the source tree bindspace is imported from, with
    ``dirty`` true when tracked files differ from it (None for an installed wheel), as the first call in
    the process saw it: training and bindspace-eval call this at launch. ``cpu.torch`` is
    the instruction set torch's kernels dispatch to (``AVX512``, ``AVX2``, ...), ``torch.threads`` the
    intra-op threads at the time of the call (a different thread count can change a reduction's order).
    """
    import numpy as np
    import torch

    env = dict(_static())
    env["torch"] = {**env["torch"], "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    env["numpy"] = {**env["numpy"], "version": np.__version__}
    # Plain str and int only (torch.__version__ is a str subclass): checkpoints load with weights_only.
    return json.loads(json.dumps(env))


@functools.lru_cache(maxsize=1)
def _static() -> dict[str, Any]:
    import numpy as np
    import torch

    import bindspace

    return {
        "bindspace": {"version": bindspace.__version__, **_git_state(Path(bindspace.__file__).resolve().parent.parent)},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {
            "model": _cpu_model(),
            "count": os.cpu_count(),
            "torch": torch.backends.cpu.get_cpu_capability(),
        },
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "mkl": _mkl_version(torch.__config__.show()),
        },
        "numpy": {"blas": _numpy_blas(np)},
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _git_state(root: Path) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of a git checkout at ``root``; Nones elsewhere (an installed wheel)."""
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        run = functools.partial(subprocess.run, cwd=root, capture_output=True, text=True, timeout=10, check=True)
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git on the machine, a broken checkout
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mkl_version(config: str) -> str | None:
    match = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    return match.group(1) if match else None


def _numpy_blas(np) -> str | None:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (KeyError, TypeError, AttributeError):  # numpy < 1.26 has no dict mode
        return None
    return " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k)) or None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_MAX_RECORD_CHARS = 64 * 1024  # a recorded environment is a few hundred bytes; more is not one


def recorded_environment(value: Any) -> dict[str, Any] | None:
    """An environment read from a file someone else wrote (a checkpoint's metadata), kept only if it is
    plain data of the shape :func:`describe_environment` gives: nested string-keyed mappings of strings,
    numbers, booleans and None, a few KiB at most. Anything else is None (the caller says so)."""

    def plain(x: Any, depth: int) -> bool:
        if x is None or isinstance(x, str | bool | int | float):
            return True
        if isinstance(x, list | tuple):
            return depth < 4 and all(plain(v, depth + 1) for v in x)
        if isinstance(x, Mapping):
            return depth < 4 and all(isinstance(k, str) and plain(v, depth + 1) for k, v in x.items())
        return False

    if not isinstance(value, Mapping) or not plain(value, 0):
        return None
    text = json.dumps(value, allow_nan=False, default=str) if _finite(value) else None
    return json.loads(text) if text is not None and len(text) <= _MAX_RECORD_CHARS else None


MAX_EARLIER = 16  # earlier launches kept in a checkpoint (the latest ones): a requeued job may relaunch often


def earlier_environments(meta: Mapping[str, Any], step: int) -> list[dict[str, Any]]:
    """The launches before this one of a resumed run, from the checkpoint it resumes (``meta``: its
    ``bindspace`` metadata, untrusted) and the step it was saved at: ``[{"until_step", "environment"}]``,
    oldest first. The checkpoint's own ``environment`` is the launch that trained up to ``step``; its
    ``earlier_environments`` the launches before that one. Entries that are not plain data are left out,
    as is the launch of a checkpoint written before environments were recorded; only the latest
    ``MAX_EARLIER`` entries are read.
    """
    out = []
    stored = meta.get("earlier_environments")
    for entry in stored[-MAX_EARLIER:] if isinstance(stored, list) else []:
        env = recorded_environment(entry.get("environment")) if isinstance(entry, Mapping) else None
        until = entry.get("until_step") if isinstance(entry, Mapping) else None
        if env is not None and isinstance(until, int) and not isinstance(until, bool):
            out.append({"until_step": until, "environment": env})
    last = recorded_environment(meta.get("environment"))
    if last is not None:
        out.append({"until_step": int(step), "environment": last})
    return out[-MAX_EARLIER:]


def _finite(x: Any) -> bool:
    if isinstance(x, float):
        return x == x and abs(x) != float("inf")
    if isinstance(x, Mapping):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list | tuple):
        return all(_finite(v) for v in x)
    return True


def flatten(env: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"torch": {"version": "2.14.1"}}`` -> ``{"torch.version": "2.14.1"}``."""
    out: dict[str, Any] = {}
    for key, value in env.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def environment_differences(envs: Sequence[Mapping[str, Any] | None]) -> dict[str, dict[str, list[int]]]:
    """Fields in which the recorded environments differ: field -> value -> indices of ``envs`` with it.

    ``None`` entries (runs written before bindspace recorded its environment) are left out. Fields
    recorded by some runs only count as differing (the value is ``None`` for the others).
    """
    flat = {i: flatten(env) for i, env in enumerate(envs) if env is not None}
    fields = sorted({f for env in flat.values() for f in env if f not in _NOT_COMPARED})
    out: dict[str, dict[str, list[int]]] = {}
    for f in fields:
        values: dict[str, list[int]] = {}
        for i, env in flat.items():
            values.setdefault(str(env.get(f)), []).append(i)
        if len(values) > 1:
            out[f] = values
    return out


def summary(env: Mapping[str, Any]) -> str:
    """One line naming what most often changes a number: the commit, CPU, torch and numpy."""
    code = env.get("bindspace", {})
    commit = code.get("commit")
    cpu, torch_, numpy_ = env.get("cpu", {}), env.get("torch", {}), env.get("numpy", {})
    parts = [
        f"bindspace {code.get('version')}" + (f" at {commit[:7]}" + (" (modified)" if code.get("dirty") else "")
                                              if commit else ""),
        f"{cpu.get('model')} ({cpu.get('torch')})",
        f"torch {torch_.get('version')}" + (f", MKL {torch_['mkl']}" if torch_.get("mkl") else ""),
        f"numpy {numpy_.get('version')}" + (f" ({numpy_['blas']})" if numpy_.get("blas") else ""),
        f"python {env.get('python')}",
    ]  # fmt: skip
    return "; ".join(parts)


if __name__ == "__main__":  # python -m bindspace.utils.environment: what a run here would record
    json.dump(describe_environment(), sys.stdout, indent=2)
    print()
