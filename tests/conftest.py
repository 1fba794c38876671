"""Shared fixtures: the real Hydra configs, composed and shrunk to CPU-test size."""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf, open_dict

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One intra-op thread, here and in every subprocess the tests launch (children read OMP_NUM_THREADS). The
# test models are tiny, so a second thread gains nothing on two cores; but with any other process on the
# machine, two OpenMP threads wait on each other at every op: an in-process 12-step run then takes 75-105 s
# instead of 5 s. DDP ranks already run one thread each (Lightning sets it when the variable is unset).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# A shrunken model and run: every modality, every stage of the pipeline, seconds not minutes.
TINY_OVERRIDES = [
    "logger=none",
    "model=tiny",
    "trainer.max_steps=8",
    "trainer.val_check_interval=4",
    "trainer.enable_progress_bar=false",
    "data.batch_size=8",
    "data.val_size=32",
    "data.test_size=48",
    "checkpoint.every_n_train_steps=4",
    "optim.warmup_steps=2",
    "modalities.image.input.size=32",
    "modalities.depth.input.size=32",
    "modalities.thermal.input.size=32",
    "modalities.audio.input.target_frames=48",
    "modalities.audio.input.patch_stride=16",
    "modalities.audio.input.clip_seconds=0.5",
    "modalities.audio.input.num_mel_bins=32",
    "modalities.imu.input.length=60",
    "modalities.text.input.context_length=48",
]


def compose_config(
    overrides: list[str] | None = None, run_dir: str | None = None, synthetic: bool = True
) -> DictConfig:
    """The real ``train`` config with test overrides, with Hydra's runtime paths filled in.

    ``synthetic=False`` leaves out the overrides of the synthetic data's own keys (other data sources
    reject unknown keys).
    """
    tiny = [o for o in TINY_OVERRIDES if synthetic or not o.startswith("data.")]
    with initialize_config_module("bindspace.configs", version_base="1.3"):
        cfg = compose("train", overrides=[*tiny, *(overrides or [])], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = run_dir or "."
        cfg.hydra.runtime.output_dir = run_dir or "."
    # Drop the hydra node once its interpolations are not needed, as @hydra.main does.
    OmegaConf.resolve(cfg.paths)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path) -> DictConfig:
    return compose_config(run_dir=str(tmp_path))


@pytest.fixture(scope="module")
def bindspace_cache(tmp_path_factory):
    """A private ``$BINDSPACE_CACHE`` for a test module (built datasets, eSpeak library copies)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("bindspace_cache")
        mp.setenv("BINDSPACE_CACHE", str(path))
        yield path


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


# The longest test files, longest first (worker seconds per file in `pytest -n 2 --dist loadfile --durations=0` of
# the whole suite, 2026-12-03, command-line runs forked from the fork server: test_reliability 196,
# test_seventh_modality 159, test_sweeps 143, test_hardening_cli 138, test_curriculum_training 137, test_ddp 131,
# ...). pytest-xdist's loadfile hands files to whichever worker is free in collection order, so a long
# file collected last runs alone at the end while the other worker idles; collected first, the short files
# fill in around them.
LONGEST_FIRST = (
    "test_reliability.py", "test_seventh_modality.py", "test_sweeps.py", "test_hardening_cli.py",
    "test_curriculum_training.py", "test_ddp.py", "test_spoken_digits_training.py", "test_early_stopping.py",
    "test_sigkill_ddp.py", "test_cli_convention.py", "test_sigkill.py", "test_wandb.py", "test_train.py",
    "test_connect.py", "test_fit_split.py", "test_init_from.py", "test_losses_distributed.py",
    "test_data_hardening.py", "test_gather_once.py", "test_small_data.py", "test_shards_curriculum.py",
    "test_speed.py", "test_curriculum_resume.py", "test_ablate_finetune.py", "test_notebook.py",
)  # fmt: skip


def pytest_collection_modifyitems(session, config, items) -> None:
    """The files of :data:`LONGEST_FIRST` first, in that order; every other file after them, as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


# ---- command-line runs through the fork server (tests/forkserver) -------------------------------------------
FORKSERVER = Path(__file__).parent / "forkserver"
# What the server imports once: what every bindspace command's run needs (not the commands' own modules).
# wandb (imported by timm) is left to each run: the media temp dir it makes at import is per process.
FORKSERVER_PRELOAD = ("torch", "numpy", "lightning", "hydra", "omegaconf", "bindspace.training.pipeline", "!wandb")
_forkserver: dict[str, Any] = {}
_START_ENV = dict(os.environ)  # the server's: a test's monkeypatched PYTHONPATH must not become every run's
# The socket's path is known from the start (set in the environment here, each pytest process its own), so that
# an environment a test copied before its first python_m() call already names it; the server starts at that call.
_FORKSERVER_OFF = os.environ.get("BINDSPACE_TEST_FORKSERVER") == "0"
_FORKSERVER_DIR = Path(tempfile.gettempdir()) / f"bindspace-forkserver-{os.getpid()}-{secrets.token_hex(4)}"
if not _FORKSERVER_OFF:
    os.environ["BINDSPACE_TEST_FORKSERVER"] = str(_FORKSERVER_DIR / "socket")


def _start_forkserver() -> None:
    """This process's fork server, started once; stopped when the process exits."""
    if _forkserver or _FORKSERVER_OFF:
        return
    _forkserver["tried"] = True  # once: without a server, clients start fresh interpreters
    folder = _FORKSERVER_DIR
    folder.mkdir(mode=0o700)
    path = folder / "socket"
    proc = subprocess.Popen(
        [sys.executable, str(FORKSERVER / "server.py"), str(path), *FORKSERVER_PRELOAD], env=_START_ENV
    )
    deadline = time.monotonic() + 60
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # it binds first, then imports: clients wait in its backlog
    if not path.exists():
        proc.kill()
        return  # clients without a server start fresh interpreters

    def stop() -> None:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    _forkserver.update(proc=proc, path=str(path))


def python_m(module: str) -> list[str]:
    """The argv prefix that runs ``python -m <module>`` in a process of its own, forked by this test process's
    fork server from an interpreter that has torch, Lightning and Hydra imported already (8-20 s here each time
    otherwise). The process is the command's: its exit code, streams, signals and files are the run's; the DDP
    ranks Lightning starts from it are forked the same way (tests/forkserver/server.py says what differs from a
    fresh interpreter). ``BINDSPACE_TEST_FORKSERVER=0`` makes every such run
    a fresh interpreter (``python -m``), as a user starts it. Tests of what happens while an interpreter starts
    (start-up noise, what a config error imports) use ``[sys.executable, "-m", module]`` themselves.
    """
    _start_forkserver()
    if "path" not in _forkserver:
        return [sys.executable, "-m", module]
    return [sys.executable, str(FORKSERVER / "client.py"), module]


def run_main_in_process(main: Callable[[], None], prog: str, *argv: str) -> subprocess.CompletedProcess:
    """A Hydra command's ``main()`` (what its console script calls) run in this process on ``argv``.

    Returns what ``subprocess.run(..., capture_output=True, text=True)`` of the installed command would: the
    exit code (``SystemExit``'s; 1 and the traceback on stderr for an uncaught exception), stdout and stderr.
    A fresh interpreter costs 8-15 s of imports here, several times a config check; the tests that check the
    process itself (start-up noise, the console script, signals) still launch one.

    Hydra's logging set-up is switched off (``root=null``): its ``dictConfig`` closes every logging handler of
    the process, pytest's own among them. Hydra's global state and the root logger are restored afterwards.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level, saved_argv = root.handlers[:], root.level, sys.argv
    sys.argv = [prog, *argv, "hydra.job_logging.root=null", "hydra.hydra_logging.root=null"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    return subprocess.CompletedProcess([prog, *argv], code, out.getvalue(), err.getvalue())


def bindspace_train(*argv: str, fresh_interpreter: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """``bindspace-train`` on ``argv``: ``python -m bindspace.train`` in a process of its own (:func:`python_m`), or
    its ``main()`` in this process (:func:`run_main_in_process`: the same code from the command line on, in the
    test's own process)."""
    if fresh_interpreter:
        cmd = [*python_m("bindspace.train"), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    from bindspace.train import main

    return run_main_in_process(main, "bindspace-train", *argv)
