"""The paired-datamodule protocol, owned by one base class.

Every data source (``data=synthetic|manifest|shards|spoken_digits|spoken_letters``, or one of your own) is a
:class:`PairedDataModule`. The base class owns what training, the curriculum and evaluation rely on:

- ``provided_modalities(**keys)``: what the data holds, read cheaply before any model exists
  (``graph.modalities: null`` trains exactly that);
- ``edges`` and ``stage_edges`` (the curriculum writes one list of edges per stage before fitting),
  ``set_stage(i)`` (reaches DataLoader workers through shared memory) and ``steps_per_epoch``;
- step-indexed training batches (``steps.py``: the data of global step ``s`` is a function of
  ``(seed, s)``, so resume needs no iterator state and N ranks see what one process sees), with this
  rank's slice of the global batch;
- ``val_dataloader``/``test_dataloader`` over :meth:`heldout_set`, whose batches hold every evaluated
  modality plus ``id`` (and ``label`` when known);
- ``class_names`` (for zero-shot prompts), ``data_report`` (what was read and skipped, into
  ``metrics.json``) and ``captions()`` (for the text-context check).

A source implements :meth:`provided_modalities`, :meth:`edge_sources` (or, for streams that are not
indexable, :meth:`train_dataloader` and :meth:`edge_sizes`) and :meth:`heldout_set`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from bindspace.data.steps import BatchSource, StepBatches, StepFetch, heldout_loader, step_loader
from bindspace.errors import ConfigError
from bindspace.graph import Edge, edge_key
from bindspace.modalities import ModalityConfig

SPLITS = ("val", "test")


class PairedDataModule(L.LightningDataModule):
    """Per-edge training batches (one batch of every active edge per step) and held-out sets.

    Args:
        configs: modality configs of the model (which modalities are read, and their transforms).
        edges: the trainable edges.
        batch_size: per device and per edge.
        seed: data order seed.
        num_workers, pin_memory: DataLoader settings (persistent workers when ``num_workers > 0``).
    """

    def __init__(
        self,
        configs: Mapping[str, ModalityConfig],
        edges: Sequence[Edge],
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        for key, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"data.{key} must be an integer >= {low}, got {value!r}")
        self.configs, self.edges = dict(configs), [tuple(e) for e in edges]
        self.batch_size, self.seed = batch_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.class_names: list[str] = []  # label index -> name; empty when the data has no labels
        # Edges drawn in each curriculum stage; the curriculum callback replaces this before fitting.
        self.stage_edges: list[list[Edge]] = [list(self.edges)]
        # The global step each stage starts at, None where not known in advance (after a plateau stage).
        self.stage_starts: list[int | None] = [0]
        self.train_steps: Any = None  # what train_dataloader built last (anything with set_stage)
        self._last_batch = (-1, 0)  # (global step, batch within it) of the last training batch
        # Sources that draw something per visit before decoding (a caption of several) take generators.
        self.sample_choices = False

    # ---- what a source provides -------------------------------------------------------------------
    @classmethod
    def provided_modalities(cls, **keys: Any) -> list[str]:
        """The modalities the data holds, in registry order, from the data config's keys (no data file read)."""
        raise NotImplementedError(f"{cls.__name__} must implement provided_modalities")

    def edge_sources(self) -> Mapping[str, BatchSource]:
        """Edge key -> an indexable dataset of that edge's training pairs (``__getitems__`` -> one batch)."""
        raise NotImplementedError(f"{type(self).__name__} must implement edge_sources or train_dataloader")

    def step_fetch(self) -> StepFetch | None:
        """A function that fetches one step's batches of several edges in one call (``StepBatches``'s
        ``fetch``; a module-level function, since it travels to DataLoader workers), or None: each edge's
        source alone."""
        return None

    def heldout_set(self, split: str) -> Dataset:
        """The held-out ``val`` or ``test`` dataset (``__getitems__`` -> one batch with ``id``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement heldout_set")

    def edge_sizes(self) -> dict[str, int]:
        """Training pairs per edge key."""
        return {key: len(source) for key, source in self.edge_sources().items()}

    @property
    def data_report(self) -> dict[str, Any]:
        """Counts of what was read (and skipped), written into ``metrics.json`` under ``data``."""
        return {}

    def captions(self) -> list[str]:
        """Every caption a run reads (training pools and held-out sets), for the text-context check."""
        return sample_captions([*self.edge_sources().values(), *self.heldout_sets()])

    # ---- the protocol ---------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        return list(self.configs)

    def rank_and_world(self) -> tuple[int, int]:
        """This process's rank and the world size (0, 1 before a trainer is attached)."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def heldout_sets(self) -> list[Dataset]:
        """The distinct held-out datasets (one when the test gallery is the validation set)."""
        val, test = self.heldout_set("val"), self.heldout_set("test")
        return [val] if test is val else [val, test]

    def train_dataloader(self) -> DataLoader:
        """Step-indexed: starts at the trainer's global step, so a resumed run continues its data order."""
        rank, world = self.rank_and_world()
        sources = self.edge_sources()
        for key, source in sources.items():
            if len(source) < self.batch_size * world:
                raise ConfigError(
                    f"edge {key}: {len(source)} samples cannot fill a global batch of {self.batch_size} x {world}"
                )
        self.train_steps = StepBatches(
            sources, self.stage_edges, self.batch_size, self.seed, rank, world, self.augmentations(), self.configs,
            choices=self.sample_choices, fetch=self.step_fetch(),
        )  # fmt: skip
        return step_loader(self.train_steps, self.trainer, self.num_workers, self.pin_memory)

    def augmentations(self) -> dict[str, dict[str, float]]:
        """Modality -> training-time augmentation settings (``modalities.<m>.augment``, parsed by
        :func:`bindspace.config.build_run_spec`); held-out sets are never augmented."""
        from bindspace.data.augment import parse_augment

        return {m: a for m, c in self.configs.items() if (a := parse_augment(m, c.augment))}

    def steps_per_epoch(self, world_size: int = 1, accumulate: int = 1) -> int:
        """Optimisation steps in one pass over the largest edge's pairs (curriculum stages measured in epochs use
        it); a step takes ``accumulate`` batches (``trainer.accumulate_grad_batches``)."""
        return max(1, max(self.edge_sizes().values()) // (self.batch_size * world_size * accumulate))

    def set_stage(self, index: int) -> None:
        """Draw the edges of curriculum stage ``index`` from now on (reaches running workers)."""
        if not 0 <= index < len(self.stage_edges):
            raise IndexError(f"stage {index} out of range: the datamodule has {len(self.stage_edges)} stage(s)")
        if self.train_steps is not None:
            self.train_steps.set_stage(index)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch holds exactly the edges of the current stage: missing ones are drawn here for its
        step (step-indexed sources), others are dropped; a missing edge that cannot be drawn raises.

        DataLoader workers render ``num_workers x prefetch_factor`` steps ahead, so the first steps of a stage
        arrive with the previous stage's edges; skipping the new ones made training depend on
        ``num_workers``, and a run resumed there differ from the uninterrupted run. A stream
        (``data=shards``) draws the edges of each step's own stage itself (``stage_starts``).
        """
        steps, trainer = self.train_steps, self.trainer
        if not hasattr(steps, "stage_keys") or trainer is None or not trainer.training:
            return batch
        # The loader's item of this batch: accumulate_grad_batches items per global step (steps.step_loader).
        last, micro = self._last_batch
        micro = micro + 1 if trainer.global_step == last else 0
        self._last_batch = (trainer.global_step, micro)
        keys = steps.stage_keys()
        missing = [key for key in keys if key not in batch]
        if missing and isinstance(steps, StepBatches):
            batch.update(steps.edge_batches(trainer.global_step * trainer.accumulate_grad_batches + micro, missing))
        elif missing:  # never silently train a step without an edge of its stage
            raise RuntimeError(
                f"the training batch of step {trainer.global_step} lacks {missing} of curriculum stage "
                f"{int(steps.stage[0])}: the data source drew {sorted(batch)}"
            )
        for key in [k for k in batch if k not in keys]:
            del batch[key]  # drawn for a stage whose start the stream could not know (it trains nothing now)
        return batch

    def set_stages(self, stages: Sequence[Sequence[Edge]], starts: Sequence[int | None] | None = None) -> None:
        """The edges of every curriculum stage; each must be an edge of this datamodule.

        ``starts``: the global step each stage starts at, None where it is not known in advance (default:
        only the first stage's); streams that render steps ahead (``data=shards``) draw each step's stage by it.
        """
        known = {edge_key(e) for e in self.edges}
        for i, edges in enumerate(stages):
            unknown = [edge_key(e) for e in edges if edge_key(e) not in known]
            if unknown:
                raise ConfigError(f"curriculum stage {i}: {unknown} are not edges of the data ({sorted(known)})")
        self.stage_edges = [list(edges) for edges in stages]
        self.stage_starts = list(starts) if starts is not None else [0] + [None] * (len(stages) - 1)
        if len(self.stage_starts) != len(self.stage_edges) or self.stage_starts[0] != 0:
            raise ValueError(f"stage starts {self.stage_starts} do not fit {len(self.stage_edges)} stage(s)")

    def val_dataloader(self) -> DataLoader:
        return heldout_loader(self.heldout_set("val"), self.batch_size, self.num_workers, self.pin_memory)

    def test_dataloader(self) -> DataLoader:
        return heldout_loader(self.heldout_set("test"), self.batch_size, self.num_workers, self.pin_memory)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


def sample_captions(datasets: Iterable[Any]) -> list[str]:
    """The texts of datasets that hold text and list their ``samples`` (a sample in several counts once)."""
    seen: dict[int, str] = {}
    for ds in datasets:
        if ds is not None and "text" in getattr(ds, "modalities", ()) and hasattr(ds, "samples"):
            seen.update((id(s), s.values["text"]) for s in ds.samples)
    return list(seen.values())
