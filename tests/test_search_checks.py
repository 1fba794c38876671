"""bindspace-search checks its query against the checkpoint before embedding it: one line, exit 2.

The checkpoint is a stand-in (``load_checkpoint`` and ``BindSpace.from_state`` patched): what is checked is the
command's logic, not a model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bindspace.embed import save_embeddings
from bindspace.search import main

D = 8
PREFIX = "bindspace-search: error: "


class FakeSpace:
    """An image+audio model that must not be asked to embed a modality it lacks."""

    def __init__(self) -> None:
        self.modalities = ["image", "audio"]

    def embed(self, modality, inputs, batch_size=64):
        assert modality in self.modalities, f"embedded {modality!r}"
        return F.normalize(torch.ones(len(inputs), D), dim=1)


@pytest.fixture
def index(tmp_path, monkeypatch):
    from bindspace import inference

    monkeypatch.setattr(inference, "load_checkpoint", lambda path, key="ckpt_path": {"bindspace": {}})
    monkeypatch.setattr(inference.BindSpace, "from_state", classmethod(lambda cls, *a, **k: FakeSpace()))
    rows = F.normalize(torch.randn(3, D, generator=torch.Generator().manual_seed(0)), dim=1)
    return save_embeddings(tmp_path / "img.safetensors", rows, ["a", "b", "c"], "image")


def search(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("query", "says"),
    [
        (["query=a red square"], "query='a red square' (text): ckpt_path=ab.ckpt has no 'text' encoder; "
                                 "it has ['image', 'audio']"),
        (["query=a red square", "query_modality=imag"], "query_modality=imag: ckpt_path=ab.ckpt has no 'imag' "
                                                        "encoder; it has ['image', 'audio'] (did you mean 'image'?)"),
    ],
)  # fmt: skip
def test_a_query_modality_the_checkpoint_lacks_is_one_line(index, capsys, query, says):
    code, err = search(capsys, f"index={index}", *query, "ckpt_path=ab.ckpt")
    assert (code, err) == (2, f"{PREFIX}{says}\n")


def test_a_query_modality_the_checkpoint_holds_is_searched(index, capsys):
    code, err = search(capsys, f"index={index}", "query=x", "query_modality=image", "ckpt_path=ab.ckpt")
    assert code == 0, err
