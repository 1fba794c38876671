"""Issue 14, part 5: training from plain Python, with the command line's config, checks and results."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_OVERRIDES

from bindspace.errors import ConfigError
from bindspace.training.fit import compose_config, fit
from bindspace.utils.environment import describe_environment

QUICK = [
    *(o for o in TINY_OVERRIDES if not o.startswith("trainer.max_steps")),
    "trainer.max_steps=2",
    "eval.final=false",
]


def test_a_misspelled_key_is_one_line_naming_the_closest_one():
    with pytest.raises(ConfigError, match="did you mean 'anchor'") as err:
        compose_config(["+anchr=text"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"optim\.lr must be in"):
        fit([*QUICK, "optim.lr=-1"], run_dir="/nonexistent/never/written")


def test_fit_from_overrides_and_from_an_edited_mapping(tmp_path):
    metrics = fit(QUICK, run_dir=tmp_path / "a")
    assert metrics["steps"] == 2 and json.loads((tmp_path / "a" / "metrics.json").read_text())["steps"] == 2
    assert metrics["environment"] == describe_environment()  # what the numbers depend on besides the config
    config = compose_config(QUICK)
    assert config["graph"]["modalities"] is None and config["modalities"]["image"]["input"]["size"] == 32
    config["trainer"]["max_steps"] = 3
    assert fit(config, run_dir=tmp_path / "b")["steps"] == 3
    assert (tmp_path / "b" / ".hydra" / "config.yaml").is_file()  # recorded as a command-line run is
