"""Against forgetting beyond replay: distillation from the previous stage's frozen copy.

When a curriculum stage starts, the encoders that earlier stages trained and this stage keeps training
are copied and frozen (the *teacher*). Every step of the stage then adds, for each such modality in the
batch, how far its embeddings moved from the teacher's on the same inputs::

    L_distill = weight * mean_i (1 - cos(f(x_i), f_teacher(x_i)))      # = weight * mean ||f - f_t||^2 / 2

Feature distillation of this kind is the learning-without-forgetting recipe for contrastive encoders
(Li & Hoiem, LwF, 2017; for CLIP-style models, ZSCL: Zheng et al., ICCV 2023, "Preventing zero-shot
transfer degradation in continual learning of vision-language models"). The new edges may still move
the shared space where they need to; the penalty makes every move pay for what it undoes on the
modalities aligned before. Unlike replay it needs no data of the earlier edges: the teacher is run on
the current batch's inputs of those modalities.

The teacher's weights travel in checkpoints (the curriculum callback's state), so a resumed stage
distils towards the same copy. Under DDP each rank distils its own rows and DDP averages the gradients:
the mean over the global batch, as on one process.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Mapping

import torch
from torch import Tensor

from bindspace.modalities import ModelInput


class StageDistillation:
    """The frozen copy of the encoders a stage keeps training, and the loss that holds them near it.

    Not an ``nn.Module``: the teacher must not enter the LightningModule's state dict or DDP's wrapper.
    """

    def __init__(self, weight: float) -> None:
        self.weight = float(weight)
        self.teacher = None  # a frozen copy of the BindSpaceModel (only ``modalities`` are used)
        self.modalities: list[str] = []
        self._pending: dict[str, Tensor] | None = None  # teacher weights restored from a checkpoint

    @property
    def active(self) -> bool:
        return self.teacher is not None and bool(self.modalities) and self.weight > 0

    def snapshot(self, model: torch.nn.Module, modalities: Iterable[str]) -> None:
        """Copy ``model`` now as the teacher of ``modalities`` (the encoders earlier stages trained)."""
        self.modalities = [m for m in model.modalities if m in set(modalities)]
        self.teacher = self._frozen_copy(model) if self.modalities else None

    def loss(
        self, encoded: Mapping[str, tuple[ModelInput, Tensor]], from_features: Collection[str] = ()
    ) -> Tensor | None:
        """The distillation term over the modalities of this batch that have a teacher, or None.

        Args:
            encoded: modality -> (the inputs encoded this step, their ``(B, D)`` unit-norm embeddings).
            from_features: modalities whose inputs in ``encoded`` are pooled trunk features served by the
                frozen-feature cache (``cache.frozen_features``; the head still trains): the teacher runs its
                head on them. The same target as from the inputs: a cached trunk is frozen, so the teacher's
                is that trunk.
        """
        terms = []
        for m in self.modalities:
            if m not in encoded:
                continue
            x, emb = encoded[m]
            with torch.no_grad():
                target = self.teacher.encode_from_features(m, x) if m in from_features else self.teacher.encode(m, x)
            terms.append((1 - (emb * target).sum(-1)).mean())
        if not terms:
            return None
        return self.weight * torch.stack(terms).sum()

    # ---- checkpointing: the teacher's weights of the distilled modalities ---------------------------
    def state_dict(self) -> dict:
        if self.teacher is None:
            return {"modalities": []}
        weights = {k: v for k, v in self.teacher.state_dict().items() if k.split(".")[1] in self.modalities}
        return {"modalities": list(self.modalities), "weights": weights}

    def load_state_dict(self, state: Mapping) -> None:
        self.modalities = list(state.get("modalities") or [])
        self._pending = dict(state["weights"]) if self.modalities else None
        self.teacher = None

    def restore(self, model: torch.nn.Module) -> None:
        """Rebuild a teacher restored from a checkpoint, once the model exists (``on_train_start``)."""
        if self._pending is None:
            return
        self.teacher = self._frozen_copy(model)
        missing = [k for k in self._pending if k not in self.teacher.state_dict()]
        if missing:
            raise ValueError(f"distillation teacher in the checkpoint does not fit the model: {missing[:3]}")
        self.teacher.load_state_dict(self._pending, strict=False)
        self._pending = None

    @staticmethod
    def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
        teacher = copy.deepcopy(model)
        teacher.requires_grad_(False)
        return teacher.eval()
