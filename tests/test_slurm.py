"""SLURM sweeps: ``hydra/launcher=submitit_slurm`` selects bindspace's defaults and writes the intended sbatch script.

Nothing is submitted. The launcher is built by Hydra's own plugin machinery and its ``launch`` runs for real
(the plugin's mapping of Hydra keys to submitit parameters, submitit's pickling of each job and its sbatch
text); only the ``sbatch`` call, the check that ``srun`` exists and the wait for results are replaced.
"""

from __future__ import annotations

from importlib.resources import files

import pytest

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher",
    reason="hydra-submitit-launcher is not installed (pip install 'bindspace[slurm]' or '.[dev]')",
)

import submitit
from hydra import compose, initialize_config_module
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.types import HydraContext
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf
from submitit.slurm.slurm import SlurmExecutor, SlurmJob

# Our file shares its name with the plugin's ConfigStore entry; Hydra merges the two and says so.
pytestmark = pytest.mark.filterwarnings(r"ignore:(?s).*validated against ConfigStore schema:UserWarning")

SLURM = [
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.nodes=2",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.timeout_min=4320",
    "hydra.launcher.account=myproject",
]
FAKE_JOB_ID = "4242"


def qualname(obj) -> str:
    """Hydra's plugin discovery imports plugin modules afresh, so classes are compared by name, not identity."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def compose_with_hydra(overrides: list[str]):
    """The real ``train`` config with its ``hydra`` node, plus the context a multirun hands its launcher."""
    with initialize_config_module("bindspace.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        context = HydraContext(config_loader=GlobalHydra.instance().hydra.config_loader, callbacks=Callbacks(cfg))
    return cfg, context


def test_launcher_config_has_bindspace_defaults_and_takes_overrides():
    cfg, _ = compose_with_hydra([*SLURM, "hydra.launcher.gpus_per_node=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == qualname(SlurmLauncher)
    assert (launcher.nodes, launcher.partition, launcher.timeout_min, launcher.account) == (2, "gpu", 4320, "myproject")
    assert launcher.gpus_per_node == 4
    assert launcher.tasks_per_node == 4, "one task per GPU: tasks_per_node must follow gpus_per_node"
    # bindspace's values, not the plugin's (whose defaults are max_num_timeout=0, gpus_per_node=None)
    assert launcher.max_num_timeout == 20 and launcher.cpus_per_task == 8
    assert launcher.additional_parameters.signal == f"USR1@{launcher.signal_delay_s}"


def test_launcher_file_sets_every_plugin_key():
    """Complete on its own: nothing depends on Hydra's deprecated merge with the plugin's schema."""
    ours = OmegaConf.create(files("bindspace.configs").joinpath("hydra/launcher/submitit_slurm.yaml").read_text())
    assert set(ours.keys()) == set(OmegaConf.structured(SlurmQueueConf).keys())


@pytest.fixture
def submit_without_sbatch(monkeypatch, tmp_path):
    """Runs a sweep's ``launch`` through the real plugin and submitit; returns the sbatch script and the jobs."""
    # submitit refuses to build a SLURM executor where `srun` is missing; sbatch is replaced by an echo of
    # its success message; the sweep does not wait for the (never started) jobs.
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    monkeypatch.setattr(SlurmExecutor, "_make_submission_command", lambda self, path: ["echo", f"job {FAKE_JOB_ID}"])
    monkeypatch.setattr(SlurmJob, "results", lambda self: [None])

    def submit(overrides: list[str], job_overrides: list[list[str]]):
        sweep_dir = tmp_path / "sweep"
        cfg, context = compose_with_hydra([*overrides, f"hydra.sweep.dir={sweep_dir}"])
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=context, task_function=lambda c: None, config=cfg
        )
        assert qualname(launcher) == qualname(SlurmLauncher)
        launcher.launch(job_overrides, initial_job_idx=0)
        scripts = list((sweep_dir / ".submitit").rglob(f"{FAKE_JOB_ID}_submission.sh"))
        assert len(scripts) == 1, scripts
        pickles = sorted((sweep_dir / ".submitit").rglob("*_submitted.pkl"))
        jobs = [submitit.helpers.DelayedSubmission.load(p) for p in pickles]
        return scripts[0].read_text(), jobs

    return submit


def test_sbatch_script_books_the_requested_nodes_and_signals_usr1(submit_without_sbatch):
    script, jobs = submit_without_sbatch(SLURM, [["seed=0"], ["seed=1"]])
    sbatch = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    for flag in [
        "--nodes=2",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--cpus-per-task=8",
        "--partition=gpu",
        "--account=myproject",
        "--time=4320",
        "--mem=0GB",
        "--signal=USR1@120",
        "--requeue",
        "--array=0-1%2",  # the two sweep points as one job array
    ]:
        assert f"#SBATCH {flag}" in sbatch, f"{flag} missing from:\n{script}"
    assert not any("USR2" in line for line in sbatch), "submitit's own USR2 signal must be replaced by USR1"
    assert "srun --unbuffered" in script and "-m submitit.core._submit" in script
    # Each array task carries the launcher and its own sweep point.
    assert sorted(job.args[0] for job in jobs) == [["seed=0"], ["seed=1"]]
    assert all(qualname(job.function) == qualname(SlurmLauncher) for job in jobs)


def test_signal_delay_override_reaches_the_sbatch_flag(submit_without_sbatch):
    script, _ = submit_without_sbatch([*SLURM, "hydra.launcher.signal_delay_s=300"], [["seed=0"]])
    assert "#SBATCH --signal=USR1@300" in script.splitlines()
