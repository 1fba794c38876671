"""Issue 14, part 6: one paired-datamodule base class owns the protocol; a source only says what it holds."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from bindspace.data import DATAMODULES, build_datamodule, datamodule_class
from bindspace.data.base import PairedDataModule, check_split
from bindspace.errors import ConfigError
from bindspace.graph import edge_key

EDGES = [("image", "text"), ("image", "audio")]


class Pairs(Dataset):
    """``n`` pairs whose features are a function of their id; ``__getitems__`` returns one batch."""

    def __init__(self, modalities, n: int, offset: int) -> None:
        self.modalities, self.n, self.offset = list(modalities), n, offset

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices):
        ids = torch.as_tensor(indices, dtype=torch.long) + self.offset
        return {"id": ids, **{m: ids.float()[:, None].repeat(1, 3) for m in self.modalities}}


class InMemory(PairedDataModule):
    """A whole data source on the base class: what it holds, its pools, its held-out sets."""

    @classmethod
    def provided_modalities(cls, **_):
        return ["image", "text", "audio"]

    def __init__(self, edges=EDGES, batch_size=4, seed=0, sizes=(40, 24)) -> None:
        super().__init__({}, edges, batch_size, seed)
        self.pools = {edge_key(e): Pairs(e, n, 1000 * k) for k, (e, n) in enumerate(zip(self.edges, sizes))}
        self.val, self.test = Pairs(["image", "text", "audio"], 10, 10**6), Pairs(["image", "text"], 6, 2 * 10**6)

    def edge_sources(self):
        return self.pools

    def heldout_set(self, split):
        return self.val if check_split(split) == "val" else self.test


def first_batch(dm: PairedDataModule) -> dict:
    return next(iter(dm.train_dataloader()))


def test_a_source_gets_step_indexed_batches_of_every_edge_from_the_base():
    dm = InMemory()
    batch = first_batch(dm)
    assert sorted(batch) == ["image|audio", "image|text"]
    assert all(len(b["id"]) == 4 and len(set(b["id"].tolist())) == 4 for b in batch.values())
    again = first_batch(InMemory())
    assert all(torch.equal(batch[k]["id"], again[k]["id"]) for k in batch)  # a function of (seed, step)
    other = first_batch(InMemory(seed=1))
    assert any(not torch.equal(batch[k]["id"], other[k]["id"]) for k in batch)
    assert dm.steps_per_epoch() == 40 // 4 and dm.steps_per_epoch(world_size=2) == 40 // 8
    assert dm.modalities == [] and dm.data_report == {} and dm.class_names == []


def test_two_ranks_split_the_global_batch_of_one_process(monkeypatch):
    whole = first_batch(InMemory(batch_size=8))
    halves = []
    for rank in (0, 1):
        dm = InMemory(batch_size=4)
        monkeypatch.setattr(dm, "rank_and_world", lambda rank=rank: (rank, 2))
        halves.append(first_batch(dm))
    for key in whole:
        assert torch.equal(torch.cat([h[key]["id"] for h in halves]), whole[key]["id"])


def test_curriculum_stages_are_checked_and_reach_the_loader():
    dm = InMemory()
    with pytest.raises(ConfigError, match=r"curriculum stage 1: \['image\|depth'\] are not edges of the data"):
        dm.set_stages([[EDGES[0]], [("image", "depth")]])
    dm.set_stages([[EDGES[0]], EDGES])
    loader = dm.train_dataloader()
    assert list(next(iter(loader))) == ["image|text"]
    dm.set_stage(1)
    assert sorted(next(iter(loader))) == ["image|audio", "image|text"]
    with pytest.raises(IndexError, match="stage 2 out of range"):
        dm.set_stage(2)


def test_heldout_loaders_and_captions_come_from_heldout_set():
    dm = InMemory()
    val = list(dm.val_dataloader())
    assert [len(b["id"]) for b in val] == [4, 4, 2] and sorted(val[0]) == ["audio", "id", "image", "text"]
    assert torch.cat([b["id"] for b in dm.test_dataloader()]).tolist() == [2 * 10**6 + i for i in range(6)]
    assert dm.heldout_sets() == [dm.val, dm.test]
    with pytest.raises(ValueError, match="split must be one of"):
        dm.heldout_set("train")


def test_a_pool_smaller_than_the_global_batch_is_one_line():
    dm = InMemory(batch_size=4, sizes=(40, 6))
    dm.rank_and_world = lambda: (0, 2)
    with pytest.raises(ConfigError, match=r"edge image\|audio: 6 samples cannot fill a global batch of 4 x 2"):
        dm.train_dataloader()


def test_what_a_source_leaves_out_is_named():
    class NoHeldout(PairedDataModule):
        def edge_sources(self):
            return {}

    dm = NoHeldout({}, EDGES, 4, 0)
    with pytest.raises(NotImplementedError, match="NoHeldout must implement heldout_set"):
        dm.val_dataloader()
    with pytest.raises(ConfigError, match=r"data\.batch_size must be an integer >= 1, got 0"):
        NoHeldout({}, EDGES, 0, 0)


@pytest.mark.parametrize("name", sorted(DATAMODULES))
def test_every_built_in_source_leaves_the_protocol_to_the_base(name):
    cls = datamodule_class({"name": name})
    assert issubclass(cls, PairedDataModule)
    owned = {"set_stage", "set_stages", "steps_per_epoch", "val_dataloader", "test_dataloader", "rank_and_world"}
    for klass in cls.__mro__[: cls.__mro__.index(PairedDataModule)]:
        assert not owned & set(vars(klass)), f"{klass.__name__} re-implements {owned & set(vars(klass))}"


def test_a_registered_class_that_is_not_a_paired_datamodule_is_refused(monkeypatch):
    monkeypatch.setitem(DATAMODULES, "plain", "collections:OrderedDict")
    with pytest.raises(ConfigError, match=r"data=plain: .* is not a bindspace\.data\.base\.PairedDataModule"):
        build_datamodule({"name": "plain"}, {}, EDGES, seed=0)
