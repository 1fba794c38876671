"""One run per run folder, and nothing left in it by a run that never started.

:class:`RunFolder` is what ``bindspace-train`` and ``bindspace-eval`` do with their output folder once
the config is valid:

* **Lock.** The launching process (global rank 0) takes an exclusive ``fcntl`` lock on
  ``<run>/.lock`` and writes its host, pid and start time into it. A second launch into a live folder
  stops with one line naming the holder. The kernel drops the lock when its process dies, however it
  dies (SIGKILL, OOM, node failure with NFS lock recovery), so a lock file left behind by a dead
  process is taken over with a warning naming it; no pid guessing across hosts.
* **Record.** The composed config goes to ``<run>/.hydra/`` (``config.yaml``, ``hydra.yaml``,
  ``overrides.yaml``, Hydra's own layout; in a folder that holds a run already, once this launch has
  :meth:`started <RunFolder.started>`) and the log to ``<run>/<job name>.log``, only now: Hydra's
  own writing of both is switched off in ``configs/hydra/default.yaml``, so a config error writes
  nothing. The other ranks of a distributed run log to their own file (``train_ddp_process_<k>.log``
  under Lightning's launcher) and show only errors on the console, so each line is printed once.
* **Clean.** Temporary files of atomic writes (``.<name>.<random>.tmp``) that a killed process left
  behind anywhere in the folder (checkpoints, results, the frozen-feature cache) are removed at the next
  start in that folder.
* **Undo.** An error before the run :meth:`starts <RunFolder.started>` (a bad data file, a checkpoint
  that does not fit the model) removes what this launch wrote into a folder that was empty before it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from bindspace.errors import ConfigError
from bindspace.utils.io import atomic_write_text

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
RECORD_DIR = ".hydra"


class RunFolderBusy(ConfigError):
    """Another live process holds the run folder."""


def is_launch_rank() -> bool:
    """True in the process that owns the run folder: global rank 0 (every launcher's rank variables say 0).

    Lightning's subprocess launcher gives the other local ranks ``LOCAL_RANK``; multi-node launches
    give ``NODE_RANK``; torchrun ``RANK``; SLURM ``SLURM_PROCID``.
    """
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


# Where a run writes atomically: the results, .hydra/ (its recorded config), checkpoints/, and the
# frozen-feature cache's tables (the default cache.dir, <run>/feature_cache/<encoder hash>/). Named, not
# the whole tree: a run folder may be any folder.
WRITTEN_FOLDERS = (".", ".hydra", "checkpoints", "feature_cache/*")


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files of :func:`~bindspace.utils.io.atomic_write` in the folders of ``folder`` a run writes to."""
    found: set[Path] = set()
    for pattern in WRITTEN_FOLDERS:
        found.update(p for p in folder.glob(f"{pattern}/.*.tmp") if p.is_file() and not p.is_symlink())
    return sorted(found)


class RunFolder:
    """Own a run folder for the duration of a ``with`` block (see the module docstring).

    Args:
        path: the run folder (created if missing).
        owner: whether this process owns the folder (default: :func:`is_launch_rank`); other ranks
            only get their log file.
    """

    def __init__(self, path: str | Path, owner: bool | None = None) -> None:
        self.path = Path(path)
        self.owner = is_launch_rank() if owner is None else owner
        self._lock_fd: int | None = None
        self._created: list[Path] = []
        self._fresh = False
        self._started = False
        self._log_handler: logging.Handler | None = None
        self._record: dict[str, str] = {}  # .hydra/'s files, written at once (fresh folder) or at started()
        self._console_levels: list[tuple[logging.Handler, int]] = []

    def __enter__(self) -> RunFolder:
        self._fresh = not self.path.exists() or not any(self.path.iterdir())
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self._created.append(self.path)
        if self.owner:
            self._acquire()
            for tmp in stale_temporaries(self.path):
                log.warning("removing %s, a temporary file an interrupted run left behind", tmp)
                tmp.unlink(missing_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for handler, level in self._console_levels:
            handler.setLevel(level)
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
        if exc_type is not None and not self._started and self._fresh:
            self._undo()
        self._release()

    def started(self) -> None:
        """From here on the folder holds a run's results: an error no longer removes anything."""
        self._started = True
        self._write_record()

    def _write_record(self) -> None:
        if not self._record:
            return
        record = self.path / RECORD_DIR
        if not record.exists():
            self._created.append(record)
        record.mkdir(exist_ok=True)
        # Each file whole or not at all (a kill mid-write must not leave a truncated config.yaml, which
        # bindspace-eval and BindSpace.from_checkpoint read for checkpoints without metadata).
        for name, text in self._record.items():
            atomic_write_text(record / name, text)
        self._record = {}

    def record(self, task_config: Any, job_name: str = "train") -> None:
        """Write ``.hydra/`` (owner only) as Hydra would, and start ``<job name>.log`` in the folder."""
        from omegaconf import OmegaConf

        hydra_cfg, overrides = _hydra_runtime()
        if self.owner:
            self._record = {"config.yaml": OmegaConf.to_yaml(task_config)}
            if hydra_cfg is not None:
                self._record["hydra.yaml"] = OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg}))
                self._record["overrides.yaml"] = OmegaConf.to_yaml(OmegaConf.create(overrides))
            if self._fresh:
                self._write_record()
            # else at started(): a relaunch into a used folder that fails its checks (a bad data file, a
            # checkpoint that does not fit) leaves the record of the run whose results are there.
        name = hydra_cfg.job.name if hydra_cfg is not None else job_name
        logfile = self.path / f"{name}.log"
        if not logfile.exists():
            self._created.append(logfile)
        handler = logging.FileHandler(logfile)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(handler)
        self._log_handler = handler
        if not self.owner:
            self._quiet_console()

    def _quiet_console(self) -> None:
        """Another rank's console shows its errors only: its info and warnings repeat rank 0's, once per
        process (8 GPUs: 8 copies of every line). They stay in its own log file, ``<job name>.log``."""
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and handler.level < logging.ERROR:
                self._console_levels.append((handler, handler.level))
                handler.setLevel(logging.ERROR)

    # ---- the lock -----------------------------------------------------------------------------------
    def _acquire(self) -> None:
        lock = self.path / LOCK_NAME
        existed = lock.exists()
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise ConfigError(f"{lock}: cannot lock the run folder ({err.strerror})") from None
            holder = _describe(_read_holder(lock))
            raise RunFolderBusy(
                f"run folder {self.path} is in use by {holder}; give this run its own hydra.run.dir "
                "(or wait for that run to end)"
            ) from None
        previous = _read_holder(lock) if existed else None
        if previous:
            log.warning(
                "run folder %s: taking over the lock of %s, which ended without releasing it", self.path,
                _describe(previous),
            )  # fmt: skip
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._lock_fd = fd
        if not existed:
            self._created.append(lock)

    def _release(self) -> None:
        if self._lock_fd is None:
            return
        lock = self.path / LOCK_NAME
        try:
            lock.unlink(missing_ok=True)  # before unlocking: a waiting launcher then finds no holder to report
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _undo(self) -> None:
        """Remove what this launch created in a folder that was empty before it (deepest first)."""
        for path in reversed(self._created):
            if path == self.path:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.name != LOCK_NAME:  # the lock goes in _release, while still held
                path.unlink(missing_ok=True)
        self._release()
        with contextlib.suppress(OSError):
            self.path.rmdir()  # only if nothing else is in it


def remove_if_empty(path: str | Path | None = None) -> None:
    """Remove a run folder (default: Hydra's output folder) created for a run that stopped before writing into it.

    Its parents below the working directory go too while they are empty (the ``runs/train`` that the first
    launch in a fresh clone makes); nothing with a file in it is touched, nor anything outside the
    working directory.
    """
    if path is None:
        hydra_cfg, _ = _hydra_runtime()
        path = hydra_cfg.runtime.output_dir if hydra_cfg is not None else None
    if not path:
        return
    folder, cwd = Path(path).absolute(), Path.cwd().absolute()
    parents = [p for p in folder.parents if cwd in p.parents]  # strictly below the working directory
    for candidate in [folder, *parents]:
        try:
            candidate.rmdir()  # fails (and stops the walk) unless the folder is empty
        except OSError:
            break


def link_latest(run_dir: str | Path, name: str = "latest") -> Path | None:
    """Point ``<run_dir>/../latest`` at ``run_dir`` (a relative symlink, replaced atomically).

    Gives the newest finished run of a task a stable path (``runs/train/latest/checkpoints/last.ckpt``)
    for notebooks and scripts. Returns the link, or None where symlinks are not possible.
    """
    run_dir = Path(run_dir).resolve()
    link = run_dir.parent / name
    if link == run_dir or (link.exists() and not link.is_symlink()):
        return None  # never replace a real folder that happens to be called "latest"
    if link.is_symlink() and not _links_a_run(link):
        # A run folder can sit anywhere (hydra.run.dir=~/exp1): a "latest" link beside it that is not
        # bindspace's (the user's own ~/latest) is left alone.
        return None
    tmp = run_dir.parent / f".{name}.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return link


def _links_a_run(link: Path) -> bool:
    """Whether ``link`` is one :func:`link_latest` made: a relative link to a sibling run folder (``.hydra/``),
    or to a sibling name that no longer exists (a deleted run)."""
    target = os.readlink(link)
    sibling = link.parent / target
    return os.sep not in target.rstrip(os.sep) and ((sibling / ".hydra").is_dir() or not os.path.lexists(sibling))


def _read_holder(lock: Path) -> dict[str, Any] | None:
    try:
        text = lock.read_text(encoding="utf-8").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')})"


def _hydra_runtime():
    """(Hydra's own config, the task overrides) when running under ``@hydra.main``, else (None, [])."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, []
    hydra_cfg = HydraConfig.get()
    return hydra_cfg, list(hydra_cfg.overrides.task)
