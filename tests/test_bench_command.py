"""A benchmark section quotes the command that produced it: ``make bench`` only when it ran with make's settings."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_bench_is_claimed_only_at_the_defaults():
    command_line = load("command").command_line
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    shown = ("steps", "repeats")
    at_defaults = command_line(parser, parser.parse_args([]), "benchmarks.bench_data", shown)
    assert at_defaults == "`make bench` (`python -m benchmarks.bench_data --steps 20 --repeats 7`)"
    # Another output file changes no number; fewer rounds do, and the line says so by not naming make.
    moved = command_line(parser, parser.parse_args(["--out", "x.md"]), "benchmarks.bench_data", shown)
    assert moved == at_defaults
    fewer = command_line(parser, parser.parse_args(["--repeats", "3"]), "benchmarks.bench_data", ())
    assert fewer == "`python -m benchmarks.bench_data --repeats 3`"


def test_documented_commands_are_what_they_claim():
    """Every section of docs/benchmarks.md that says `make bench` quotes the module's defaults."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    claims = [line for line in text.splitlines() if "Command: `make bench`" in line]
    assert claims
    for line in claims:
        quoted = line.split("(`python -m benchmarks.", 1)[1].split("`)", 1)[0].split()
        module, options = quoted[0], quoted[1:]
        source = (ROOT / "benchmarks" / f"{module}.py").read_text()
        for flag, value in zip(options[::2], options[1::2], strict=True):
            default = re.search(rf'add_argument\("{flag}", type=int, default=([0-9_]+)', source)
            assert default and int(default.group(1)) == int(value), f"{module}: {flag} {value} is not its default"


def test_a_retitled_section_replaces_the_old_one(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # bench_data imports benchmarks.command
    merge = load("bench_data").merge_section
    page = merge("", "## (h) Time to an error\n\nold numbers\n")
    page = merge(page, "## (d) Synthetic data\n\nd numbers\n")
    page = merge(page, "## (h) Time to an error, and to --help\n\nnew numbers\n")
    assert "old numbers" not in page and "new numbers" in page and "d numbers" in page
    assert page.index("## (d)") < page.index("## (h)")
    assert page.count("## (h)") == 1


def test_the_benchmarks_page_holds_each_section_once():
    titles = [line for line in (ROOT / "docs" / "benchmarks.md").read_text().splitlines() if line.startswith("## ")]
    labels = [re.match(r"## \([a-z]+\)", title).group(0) for title in titles]
    assert len(labels) == len(set(labels)), f"a section is on the page twice: {titles}"


def test_the_ddp_benchmark_hooks_where_the_pipeline_builds_its_trainer(monkeypatch):
    """bench_ddp times steps with a callback added where the training pipeline builds its Trainer; after a
    refactor moved that call, the benchmark trained without its clock and failed at the end (2026-12-04)."""
    import inspect

    import bindspace.training.pipeline as pipeline

    monkeypatch.syspath_prepend(str(ROOT))
    module, name = load("bench_ddp").HOOK.rsplit(".", 1)
    assert module == pipeline.__name__ and callable(getattr(pipeline, name))
    assert f"{name}(" in inspect.getsource(pipeline.train_and_evaluate)  # looked up at call time, by name
