"""The notebook runs top to bottom (tiny path) and is committed without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_embedding_space.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_and_centring_closes_the_gap(monkeypatch, tmp_path):
    monkeypatch.setenv("BINDSPACE_NOTEBOOK_TINY", "1")  # train a tiny model instead of loading make train's
    monkeypatch.setenv("BINDSPACE_ROOT", str(tmp_path))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the kernel's temporary run folder goes with tmp_path
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the heatmap and the gap projection
    summary = json.loads(nb.cells[-1].outputs[-1].text)
    assert summary["checkpoint"].startswith(str(tmp_path / "tmp"))  # the tiny run went to a temporary folder
    for raw, centred in summary["centroid_distance"].values():
        assert centred < 0.5 * raw
    assert sum(summary["share_none"].values()) == pytest.approx(100.0)
