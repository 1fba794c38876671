"""The world size a run plans for (strategy, epoch-long stages) is the one its Trainer runs."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from bindspace.config import check_trainer
from bindspace.curriculum import Curriculum
from bindspace.errors import ConfigError
from bindspace.training.distributed import strategy_for, trainer_world_size

GPUS = 4  # what the mocked machine has


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: GPUS)


def lightning_world_size(trainer: dict) -> int:
    """The reference: the world size of the Trainer Lightning builds from the same arguments."""
    return L.Trainer(**trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False).world_size


@pytest.mark.parametrize(
    ("devices", "num_nodes", "expected"),
    [(2, 1, 2), ("2", 1, 2), ("auto", 1, 1), (3, 2, 6)],
)
def test_cpu_devices_count_as_lightning_counts_them(devices, num_nodes, expected):
    trainer = {"accelerator": "cpu", "devices": devices, "num_nodes": num_nodes}
    assert trainer_world_size(trainer) == lightning_world_size(trainer) == expected


@pytest.mark.parametrize(
    ("accelerator", "devices", "num_nodes", "expected"),
    [
        ("gpu", 2, 1, 2),
        ("gpu", [0, 1], 1, 2),
        ("gpu", "0,1", 1, 2),
        ("gpu", [0, 1, 2, 3], 1, 4),
        ("gpu", -1, 1, GPUS),
        ("gpu", "-1", 1, GPUS),
        ("gpu", "auto", 1, GPUS),
        ("auto", "auto", 1, GPUS),
        ("cuda", [1, 3], 2, 4),
    ],
)
def test_gpu_devices_count_as_lightning_counts_them(four_gpus, accelerator, devices, num_nodes, expected):
    trainer = {"accelerator": accelerator, "devices": devices, "num_nodes": num_nodes}
    assert trainer_world_size(trainer) == lightning_world_size(trainer) == expected


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ({"accelerator": "cpu", "devices": -1}, "trainer.devices=-1 on cpu: `devices` selected with `CPUAccelerator`"),
        ({"accelerator": "cpu", "devices": [0, 1]}, "trainer.devices=[0, 1] on cpu: "),
        ({"accelerator": "gpu", "devices": [3, 4]}, "trainer.devices=[3, 4] on cuda: You requested gpu: [3, 4]"),
        ({"accelerator": "xpu", "devices": 1}, "trainer.accelerator must be one of auto, gpu, cpu, cuda, mps, tpu"),
    ],
)
def test_devices_lightning_would_refuse_are_a_config_error(four_gpus, trainer, message):
    with pytest.raises(ConfigError) as info:
        trainer_world_size(trainer)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_gpus_on_a_machine_without_them_are_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError) as info:
        trainer_world_size({"accelerator": "gpu", "devices": 8})
    assert str(info.value) == "trainer.accelerator=gpu: no cuda device on this machine"


def test_a_curriculum_on_a_device_list_gets_the_strategy_of_as_many_devices(four_gpus):
    """``devices=[0,1]`` counted as one process left ``auto``, and Lightning's plain ``ddp`` then failed on the
    parameters a stage leaves unused."""
    edges = [("image", "text"), ("image", "audio")]
    stages = {"stages": [{"edges": [["image", "text"]], "steps": 2}, {"edges": "all"}]}
    curriculum = Curriculum.from_config(stages, edges, ["image"])
    chosen = [
        strategy_for("auto", trainer_world_size({"accelerator": "gpu", "devices": d}), curriculum) for d in ([0, 1], 2)
    ]
    assert chosen == ["ddp_find_unused_parameters_true"] * 2


@pytest.mark.parametrize("devices", [2, "2", -1, "-1", "0,1", "1,", " 0, 1 ", [0, 1], "auto"])
def test_the_config_check_takes_every_spelling_lightning_takes(devices):
    check_trainer({"max_steps": 5, "devices": devices})


@pytest.mark.parametrize("devices", ["x", "0;1", 0, -2, "1.5", True])
def test_the_config_check_refuses_what_lightning_refuses_in_one_line(devices):
    with pytest.raises(ConfigError, match=r"trainer\.devices must be .* got "):
        check_trainer({"max_steps": 5, "devices": devices})
