"""bindspace-search checks its query against the checkpoint before embedding it: one line, exit 2.

The checkpoint is a stand-in (``load_checkpoint`` and ``BindSpace.from_state`` patched): what is checked is the
command's logic, not a model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bindspace.embed import save_embeddings, weights_sha256
from bindspace.search import main

D = 8
PREFIX = "bindspace-search: error: "


def checkpoint(path) -> dict:
    """Stand-in checkpoints: ``a*.ckpt`` and ``b*.ckpt`` hold different weights (a.ckpt and a2.ckpt the same)."""
    return {
        "bindspace": {},
        "state_dict": {"model.heads.image.weight": torch.full((2, 2), float(Path(path).name[0] == "a"))},
    }


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

    monkeypatch.setattr(inference, "load_checkpoint", lambda path, key="ckpt_path": checkpoint(path))
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


def exported(path: Path, ckpt: str | None, hashed: bool = True, seed: int = 0) -> Path:
    """An embeddings file as bindspace-embed writes it with ``ckpt`` (``hashed=False``: as it did before it
    recorded the weights' hash; ``ckpt=None``: saved from Python, recording no checkpoint)."""
    rows = F.normalize(torch.randn(3, D, generator=torch.Generator().manual_seed(seed)), dim=1)
    extra = {} if ckpt is None else {"checkpoint": ckpt}
    if ckpt is not None and hashed:
        extra["weights_sha256"] = weights_sha256(checkpoint(ckpt))
    return save_embeddings(path, rows, [f"{path.stem}{i}" for i in range(3)], "image", extra)


def test_an_index_and_queries_of_two_checkpoints_are_refused_before_the_query_is_embedded(tmp_path, index, capsys):
    a, b = exported(tmp_path / "a.safetensors", "a.ckpt"), exported(tmp_path / "b.safetensors", "b.ckpt", seed=1)
    code, err = search(capsys, f"index={a},{b}", f"query={a}")
    assert code == 2 and err.startswith(f"{PREFIX}{b}: embedded by another model than {a} (checkpoint b.ckpt vs a.ckpt")
    code, err = search(capsys, f"index={a}", f"query={b}")
    assert code == 2 and err.startswith(f"{PREFIX}{a}: embedded by another model than query={b}")
    # A text query embedded by b.ckpt against a.ckpt's index: refused before FakeSpace.embed would run.
    code, err = search(capsys, f"index={a}", "query=x", "query_modality=image", "ckpt_path=b.ckpt")
    assert code == 2 and err.startswith(f"{PREFIX}{a}: embedded by another model than ckpt_path=b.ckpt")
    assert len(err.splitlines()) == 1 and "weights SHA-256" in err


def test_the_same_weights_under_another_path_and_unrecorded_files_are_searched(tmp_path, index, capsys):
    """a2.ckpt holds a.ckpt's weights (as after bindspace-eval eval.save_to_checkpoint=true rewrote a copy);
    a file recording no checkpoint (e.g. a ConnectedSpace's embeddings saved from Python) is not compared."""
    a = exported(tmp_path / "a.safetensors", "a.ckpt")
    unrecorded = exported(tmp_path / "mapped.safetensors", None, seed=2)
    code, err = search(capsys, f"index={a},{unrecorded}", "query=x", "query_modality=image", "ckpt_path=a2.ckpt")
    assert code == 0, err


def test_files_recording_only_a_path_are_compared_by_path_and_say_so(tmp_path, index, capsys):
    old = exported(tmp_path / "old.safetensors", str(tmp_path / "a.ckpt"), hashed=False)
    (tmp_path / "a.ckpt").touch()
    (tmp_path / "link.ckpt").symlink_to(tmp_path / "a.ckpt")
    code, err = search(capsys, f"index={old}", "query=x", "query_modality=image", f"ckpt_path={tmp_path / 'link.ckpt'}")
    assert code == 0, err
    code, err = search(capsys, f"index={old}", "query=x", "query_modality=image", "ckpt_path=a2.ckpt")
    assert code == 2 and f"{old}: embedded by another checkpoint than ckpt_path=a2.ckpt" in err
    assert f"compared by path, as {old} records no weights_sha256" in err and len(err.splitlines()) == 1
