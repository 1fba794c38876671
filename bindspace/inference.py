"""Load a trained model from its checkpoint and embed files, arrays or strings of any modality.

No Hydra, no Lightning: the checkpoint carries what rebuilds the model (``checkpoint["bindspace"]``,
written by the training module), and each modality's spec reads and transforms its inputs::

    from bindspace import BindSpace, combine

    bs = BindSpace.from_checkpoint("runs/train/<time>/checkpoints/last.ckpt")
    audio = bs.embed("audio", ["dog.wav", "rain.wav"])          # (2, D), unit norm, on CPU
    text = bs.embed("text", ["a dog barking", "rain on a roof"])
    scores = audio @ text.T                                       # cosine similarities
    query = combine([bs.embed("image", ["beach.png"]), bs.embed("audio", ["waves.wav"])])

Gap mitigations fitted by ``bindspace-eval eval.save_to_checkpoint=true`` (or :func:`save_mitigations`)
travel in the same checkpoint and apply with ``embed(..., center=True)`` and :meth:`BindSpace.bridge`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from bindspace.errors import ConfigError
from bindspace.evaluation.embed import to_device
from bindspace.evaluation.gap import Bridge
from bindspace.evaluation.gap import center as center_embeddings
from bindspace.modalities import ModalityConfig, ModelInput, collate_inputs, get_modality
from bindspace.utils.io import atomic_write

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the model imports timm: imported where a model is built
    from bindspace.models.model import BindSpaceModel

METADATA_FORMAT = 1


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors that name the file.

    ``weights_only`` unpickles tensors and plain containers only: a file carrying code is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{key}: no checkpoint file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(err)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: no 'state_dict' in the file; is it a Lightning checkpoint?")
    return ckpt


def _first_line(err: BaseException) -> str:
    """``TypeName: the informative line of the message`` (torch's unpickling errors run to many lines)."""
    message = str(err)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if message.startswith("Weights only load failed"):
        if "GLOBAL" in message:
            found = next((line for line in lines if "GLOBAL" in line), "")
            text = f"it carries Python code or objects, refused ({found.rstrip('.')})"
        else:  # the line after torch's boiler-plate says what the unpickler tripped over
            text = next((line for line in lines[1:] if "WeightsUnpickler" not in line and "Please" not in line), text)
    return f"{type(err).__name__}: {text[:300]}"


def untrusted_configs(
    configs: Mapping[str, ModalityConfig], architectures: Mapping[str, Any], where: str
) -> dict[str, Mapping[str, Any]]:
    """Make model configs read from a file someone else wrote safe to build; returns what builds each trunk.

    A checkpoint's (or a shared run folder's) description of its model is provenance, never an
    instruction: ``trust_remote_code`` is cleared, and a timm or transformers trunk is rebuilt from its
    recorded architecture with random weights (the weights are in the checkpoint), so its
    ``pretrained`` source is never read, downloaded or imported. A transformers architecture must be
    one transformers ships. Checkpoints older than the recorded architectures fall back to a timm
    architecture name, or to the ``config.json`` of a transformers folder on this machine, read as data.

    Raises:
        CheckpointError: a recorded architecture that is not plain data, names custom code, or (older
            checkpoints) a trunk that only a download or a hub id could describe.
    """
    from bindspace.nn.pretrained import hf_config_from_dict

    out: dict[str, Mapping[str, Any]] = {}
    for m, cfg in configs.items():
        t = cfg.trunk
        t.trust_remote_code = False
        if t.kind not in ("timm", "hf"):
            continue
        arch = architectures.get(m)
        if arch is None:
            arch = _legacy_architecture(m, t, where)
        try:
            if t.kind == "hf":
                hf_config_from_dict(arch["config"])  # refuses auto_map-only / unknown model types
            else:
                timm_name = arch["architecture"]
                if not isinstance(timm_name, str) or timm_name.startswith(("hf-hub:", "local-dir:")):
                    raise ValueError(f"timm architecture {timm_name!r} is not a timm model name")
                if not isinstance(arch["model_args"], Mapping):
                    raise ValueError("timm model_args is not a mapping")
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: modalities.{m}.trunk: unusable recorded architecture ({err})") from None
        t.pretrained = None  # provenance only; nothing is loaded from it
        out[m] = arch
    return out


def _legacy_architecture(modality: str, trunk, where: str) -> dict[str, Any]:
    """A pretrained trunk's architecture for checkpoints written before architectures were recorded."""
    key = f"{where}: modalities.{modality}.trunk"
    if trunk.kind == "timm":
        if trunk.name and not trunk.name.startswith(("hf-hub:", "local-dir:")):
            return {"kind": "timm", "architecture": trunk.name, "model_args": {}}
        raise CheckpointError(
            f"{key}: the checkpoint records no timm architecture, only the source "
            f"{trunk.pretrained or trunk.name!r}, which is not fetched for a checkpoint; rebuild the model "
            "with BindSpace.from_checkpoint(..., modalities=<your config>)"
        )
    source = Path(str(trunk.pretrained or "")).expanduser()
    if trunk.pretrained and source.is_dir() and (source / "config.json").is_file():
        try:
            return {"kind": "hf", "config": json.loads((source / "config.json").read_text(encoding="utf-8"))}
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{key}: cannot read {source / 'config.json'} ({err})") from None
    raise CheckpointError(
        f"{key}: the checkpoint records no transformers architecture, only the source {trunk.pretrained!r}, "
        "which is not downloaded for a checkpoint; rebuild the model with "
        "BindSpace.from_checkpoint(..., modalities=<your config>)"
    )


def model_from_metadata(meta: Mapping[str, Any], where: str = "checkpoint") -> tuple[BindSpaceModel, list]:
    """Rebuild the (untrained) model and its edges from ``checkpoint["bindspace"]``, without running code.

    See :func:`untrusted_configs`: nothing the metadata names is downloaded, imported or executed.
    """
    if not isinstance(meta, Mapping) or meta.get("format") != METADATA_FORMAT:
        found = meta.get("format") if isinstance(meta, Mapping) else type(meta).__name__
        raise CheckpointError(f"{where}: bindspace metadata format {found!r}, expected {METADATA_FORMAT}")
    from bindspace.models.model import BindSpaceModel

    try:
        configs = {m: get_modality(m).config_from_dict(d) for m, d in meta["modalities"].items()}
        architectures = untrusted_configs(configs, meta.get("architectures") or {}, where)
        model = BindSpaceModel(configs, int(meta["embed_dim"]), architectures)
        return model, [tuple(e) for e in meta.get("edges", [])]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{where}: bindspace metadata does not describe a model ({_first_line(err)})") from None


def load_encoder_weights(model: BindSpaceModel, ckpt: Mapping[str, Any], where: str = "checkpoint") -> None:
    """``ckpt["state_dict"]``'s ``model.*`` tensors into ``model``: every one it needs and nothing else.

    Raises:
        CheckpointError: missing or unexpected tensors, counted and named (a few of each).
    """
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{where}: weights do not fit the model: {len(result.missing_keys)} missing (e.g. "
            f"{result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )


def model_from_checkpoint_file(path: str | Path, key: str, needs: str) -> tuple[dict, BindSpaceModel, dict]:
    """``(metadata, model with its weights, checkpoint)`` of a file, rebuilt from its metadata (no code run).

    ``key`` names the argument in errors; ``needs`` says what the metadata is needed for, when it is absent.
    """
    ckpt = load_checkpoint(path, key=key)
    meta = ckpt.get("bindspace")
    if meta is None:
        raise CheckpointError(f"{path}: no 'bindspace' metadata (written by older bindspace-train); {needs}")
    model, _ = model_from_metadata(meta, where=str(path))
    load_encoder_weights(model, ckpt, str(path))
    return meta, model, ckpt


def read_run_config(ckpt_path: str | Path) -> Any:
    """The composed config of the run that wrote ``ckpt_path`` (``<run>/.hydra/config.yaml`` beside
    ``<run>/checkpoints/``), with keys renamed since it was written moved to their names today; None when
    there is no such file. Plain data (YAML's safe loader).

    Raises:
        yaml.YAMLError, UnicodeDecodeError, OSError: the file is there but cannot be read.
    """
    config = Path(ckpt_path).parent.parent / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    from bindspace.utils.config_migration import migrate_config

    return migrate_config(yaml.safe_load(config.read_text(encoding="utf-8")))


def run_config_spec(ckpt_path: Path):
    """For checkpoints older than the metadata: the run's own composed config, if it sits beside them.

    ``bindspace-train`` writes ``<run>/.hydra/config.yaml`` and ``<run>/checkpoints/*.ckpt``; the
    model-describing sections of that YAML are plain values, so no Hydra is needed to read them.
    """
    config = ckpt_path.parent.parent / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    from bindspace.config import build_run_spec

    try:
        raw = read_run_config(ckpt_path)
        # A run folder may come from anyone: never run code it names, not even to read a config file.
        for section in ((raw or {}).get("modalities") or {}).values():
            if isinstance(section, dict) and isinstance(section.get("trunk"), dict):
                section["trunk"]["trust_remote_code"] = False
        spec = build_run_spec(raw)
    except (yaml.YAMLError, ConfigError, UnicodeDecodeError, AttributeError) as err:
        raise CheckpointError(
            f"{config}: cannot rebuild the model of {ckpt_path.name} from it ({_first_line(err)})"
        ) from None
    return spec


def checkpoint_metadata(
    model: BindSpaceModel, edges: Iterable[Sequence[str]] = (), graph_edges: Iterable[Sequence[str]] | None = None
) -> dict[str, Any]:
    """The ``checkpoint["bindspace"]`` layout: everything that rebuilds the model, as plain data.

    Args:
        model: the model.
        edges: the pairs readers flag as trained.
        graph_edges: every edge of the training graph (training checkpoints), when it differs.
    """
    meta = {
        "format": METADATA_FORMAT,
        "embed_dim": model.embed_dim,
        "modalities": {m: asdict(c) for m, c in model.configs.items()},
        # Pretrained trunks are rebuilt from these with random weights when loaded: their sources are provenance.
        "architectures": model.architectures(),
        "edges": [list(e) for e in edges],
    }
    if graph_edges is not None:
        meta["graph_edges"] = [list(e) for e in graph_edges]
    return meta


def stored_environment(meta: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    """The environment the checkpoint was trained in (``checkpoint["bindspace"]["environment"]``, written by
    bindspace-train's checkpoints), checked as data; None when absent or not plain data (a warning
    names the file: the weights still load, only their provenance is unknown)."""
    from bindspace.utils.environment import recorded_environment

    if meta.get("environment") is None:
        return None
    env = recorded_environment(meta["environment"])
    if env is None:
        log.warning("%s: bindspace metadata environment is not plain data; its training environment is unknown", where)
    return env


def stored_mitigations(meta: Mapping[str, Any], dim: int, where: str) -> tuple[dict[str, Tensor], dict[str, Bridge]]:
    """``(centering, bridges)`` of a checkpoint's metadata, checked as data: ``(D,)`` means, ``(D, D)`` maps.

    Raises:
        CheckpointError: anything else in their place, naming the file and the key.
    """
    found: dict[str, dict] = {}
    for key in ("centering", "bridges"):
        value = meta.get(key) or {}
        if not isinstance(value, Mapping):
            raise CheckpointError(f"{where}: bindspace metadata {key} is {type(value).__name__}, not a mapping")
        found[key] = dict(value)
    centering, bridges = {}, {}
    for m, mean in found["centering"].items():
        try:
            centering[m] = torch.as_tensor(mean, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{where}: bindspace metadata centering.{m}: not numbers ({_first_line(err)})"
            ) from None
        if centering[m].shape != (dim,) or not bool(torch.isfinite(centering[m]).all()):
            raise CheckpointError(
                f"{where}: bindspace metadata centering.{m}: {tuple(centering[m].shape)}, expected ({dim},) finite"
            )
    for k, entry in found["bridges"].items():
        try:
            bridges[k] = Bridge.from_dict(entry)
            ok = bridges[k].weight.shape == (dim, dim) and all(
                isinstance(x, str) for x in (entry["source"], entry["target"])
            )
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as err:
            raise CheckpointError(
                f"{where}: bindspace metadata bridges.{k}: not a bridge ({_first_line(err)})"
            ) from None
        if not ok or not bool(torch.isfinite(bridges[k].weight).all()):
            raise CheckpointError(f"{where}: bindspace metadata bridges.{k}: expected a finite ({dim}, {dim}) weight")
    return centering, bridges


class BindSpace:
    """A trained model ready to embed: inputs in, unit-norm ``(N, D)`` embeddings out.

    Args:
        model: the encoders (put in eval mode here).
        edges: the trained edges (which pairs are "trained" rather than emergent).
        centering: optional modality -> ``(D,)`` mean, for ``embed(..., center=True)``.
        bridges: optional ``"source->target"`` -> :class:`~bindspace.evaluation.gap.Bridge`.
    """

    def __init__(
        self,
        model: BindSpaceModel,
        edges: Iterable[Sequence[str]] = (),
        centering: Mapping[str, Tensor] | None = None,
        bridges: Mapping[str, Bridge] | None = None,
        environment: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.edges = [tuple(e) for e in edges]
        self.centering = {m: torch.as_tensor(v, dtype=torch.float32) for m, v in (centering or {}).items()}
        self.bridges = dict(bridges or {})
        self.environment = dict(environment) if environment is not None else None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        modalities: Mapping[str, ModalityConfig] | None = None,
        embed_dim: int | None = None,
        edges: Iterable[Sequence[str]] = (),
    ) -> BindSpace:
        """Rebuild the model from a training checkpoint and load its weights.

        Args:
            path: a ``.ckpt`` written by ``bindspace-train``.
            device: where the model runs.
            modalities, embed_dim, edges: only for checkpoints older than the ``"bindspace"`` metadata
                and without their run's ``.hydra/config.yaml`` two folders up (which is used when
                present): the model's configs (e.g. ``bindspace.config.build_run_spec(cfg).modalities``).

        Raises:
            CheckpointError: missing or unreadable file, no metadata (and no ``modalities`` given),
                or weights that do not fit the model, naming the file.
        """
        return cls.from_state(load_checkpoint(path), device, modalities, embed_dim, edges, where=str(path))

    @classmethod
    def from_state(
        cls,
        ckpt: Mapping[str, Any],
        device: str | torch.device = "cpu",
        modalities: Mapping[str, ModalityConfig] | None = None,
        embed_dim: int | None = None,
        edges: Iterable[Sequence[str]] = (),
        where: str = "checkpoint",
    ) -> BindSpace:
        """As :meth:`from_checkpoint`, from an already loaded checkpoint dict (``where`` names it in errors)."""
        from bindspace.models.model import BindSpaceModel

        meta = ckpt.get("bindspace")
        if meta is None and modalities is None:
            spec = run_config_spec(Path(where))
            if spec is not None:
                modalities, embed_dim, edges = spec.modalities, spec.embed_dim, spec.edges
        if meta is None:
            if modalities is None or embed_dim is None:
                raise CheckpointError(
                    f"{where}: no 'bindspace' metadata (written by older bindspace-train) and no run config at "
                    f"../../.hydra/config.yaml; pass modalities= and embed_dim= (e.g. from "
                    "bindspace.config.build_run_spec of the run's config)"
                )
            try:
                model, edges = BindSpaceModel(modalities, embed_dim), [tuple(e) for e in edges]
            except (ValueError, OSError, ImportError) as err:  # e.g. a pretrained source that needs custom code
                raise CheckpointError(f"{where}: cannot build its model ({_first_line(err)})") from None
        else:
            model, edges = model_from_metadata(meta, where=where)
        load_encoder_weights(model, ckpt, where)
        centering, bridges = stored_mitigations(meta or {}, model.embed_dim, where)
        return cls(model.to(device), edges, centering, bridges, stored_environment(meta or {}, where))

    @property
    def modalities(self) -> list[str]:
        return self.model.modalities

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def metadata(self) -> dict[str, Any]:
        """``checkpoint["bindspace"]`` for this model, mitigations included."""
        meta = checkpoint_metadata(self.model, self.edges)
        if self.centering:
            meta["centering"] = {m: v.tolist() for m, v in self.centering.items()}
        if self.bridges:
            meta["bridges"] = {k: b.to_dict() for k, b in self.bridges.items()}
        if self.environment is not None:
            meta["environment"] = self.environment
        return meta

    @torch.no_grad()
    def encode(self, modality: str, x: ModelInput) -> Tensor:
        """Already-transformed model input (a batch) -> ``(B, D)`` unit-norm embeddings on CPU."""
        return self.model.encode(modality, to_device(x, self.device)).float().cpu()

    def embed(
        self, modality: str, inputs: Any, batch_size: int = 64, center: bool = False, progress: bool = False
    ) -> Tensor:
        """Embed many inputs of one modality, ``batch_size`` at a time, on the model's device.

        Args:
            modality: one of :attr:`modalities`.
            inputs: a list of file paths (read with the modality's reader), of decoded samples (what
                a reader returns), or of strings for text; or one array/tensor whose first axis is the
                sample axis (a batch of decoded samples, e.g. ``SyntheticScenes.render``). A single
                path or string is a batch of one.
            batch_size: samples read, transformed and encoded at once.
            center: subtract the modality's stored centring mean and renormalise.
            progress: show a tqdm progress bar.

        Returns:
            ``(N, D)`` float32 unit-norm embeddings on CPU, in input order.
        """
        if modality not in self.model.configs:
            raise KeyError(f"model has no {modality!r} encoder; it has {self.modalities}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        inputs = _as_sequence(inputs)
        spec, cfg = get_modality(modality), self.model.configs[modality].input
        bar = tqdm(total=len(inputs), desc=f"embed {modality}", unit="item", disable=not progress)
        parts = [torch.empty(0, self.embed_dim)]
        try:
            for start in range(0, len(inputs), batch_size):
                chunk = inputs[start : start + batch_size]
                parts.append(self.encode(modality, _transform(spec, cfg, chunk)))
                bar.update(len(chunk))
        finally:
            bar.close()
        out = torch.cat(parts)
        return self.center(modality, out) if center else out

    def center(self, modality: str, embeddings: Tensor) -> Tensor:
        """Apply the stored centring of ``modality`` (subtract its mean, renormalise)."""
        if modality not in self.centering:
            raise KeyError(
                f"no centring stats for {modality!r} (have {sorted(self.centering)}); fit them with "
                "bindspace-eval eval.save_to_checkpoint=true or bindspace.inference.save_mitigations"
            )
        return center_embeddings(embeddings, self.centering[modality])

    def bridge(self, embeddings: Tensor, source: str, target: str) -> Tensor:
        """Map ``source`` embeddings onto ``target``'s region with the stored linear bridge."""
        key = f"{source}->{target}"
        if key not in self.bridges:
            raise KeyError(f"no bridge {key!r}; stored bridges: {sorted(self.bridges)}")
        return self.bridges[key](embeddings)


def _as_sequence(inputs: Any) -> Sequence[Any]:
    if isinstance(inputs, (str, os.PathLike)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return torch.from_numpy(inputs)
    if isinstance(inputs, Tensor):
        return inputs.detach().cpu()
    return list(inputs)


def _transform(spec, cfg: Any, chunk: Sequence[Any]) -> ModelInput:
    """A chunk of inputs -> batched model input, via the spec's own read and transform."""
    if isinstance(chunk, Tensor) or spec.inline:
        return spec.transform_batch(chunk, cfg)  # vectorised for a tensor batch; tokenises strings
    raws = [spec.read(x) if isinstance(x, (str, os.PathLike)) else x for x in chunk]
    return collate_inputs([spec.transform(r, cfg) for r in raws])


def combine(embeddings: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """ImageBind's embedding arithmetic: the normalised (weighted) sum of embeddings.

    Args:
        embeddings: tensors of one shape, ``(D,)`` or ``(N, D)``, e.g. an image and a sound.
        weights: one per tensor; equal weights by default.

    Returns:
        The unit-norm combination, shaped like each input.
    """
    if not embeddings:
        raise ValueError("combine needs at least one embedding")
    shapes = {tuple(e.shape) for e in embeddings}
    if len(shapes) != 1:
        raise ValueError(f"embeddings to combine must share one shape, got {sorted(shapes)}")
    weights = [1.0] * len(embeddings) if weights is None else list(weights)
    if len(weights) != len(embeddings):
        raise ValueError(f"got {len(weights)} weights for {len(embeddings)} embeddings")
    total = sum(w * e.float() for w, e in zip(weights, embeddings, strict=True))
    return F.normalize(total, dim=-1)


def save_mitigations(
    path: str | Path,
    centering: Mapping[str, Tensor] | None = None,
    bridges: Iterable[Bridge] = (),
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Store gap mitigations in a checkpoint, atomically (a reader never sees half a file).

    Centring means go to ``checkpoint["bindspace"]["centering"] = {modality: [floats]}`` (replacing
    earlier ones) and bridges to ``["bridges"]["source->target"]`` (added to earlier ones).

    Args:
        path: the checkpoint to update in place.
        centering: modality -> ``(D,)`` mean, e.g. from :func:`~bindspace.evaluation.gap.fit_centering`.
        bridges: fitted :class:`~bindspace.evaluation.gap.Bridge` objects.
        metadata: the model description to add when the checkpoint predates ``"bindspace"`` metadata
            (e.g. ``BindSpace.metadata()``); ignored otherwise.
    """
    ckpt = load_checkpoint(path)
    meta = ckpt.get("bindspace")
    if meta is None:
        if metadata is None:
            raise CheckpointError(f"{path}: no 'bindspace' metadata to add mitigations to; pass metadata=")
        meta = {k: v for k, v in metadata.items() if k not in ("centering", "bridges")}
    if centering is not None:
        meta["centering"] = {m: [float(x) for x in torch.as_tensor(v).flatten()] for m, v in centering.items()}
    bridges = list(bridges)
    if bridges:
        meta["bridges"] = {**(meta.get("bridges") or {}), **{b.key: b.to_dict() for b in bridges}}
    ckpt["bindspace"] = meta
    return atomic_write(path, lambda f: torch.save(ckpt, f))
