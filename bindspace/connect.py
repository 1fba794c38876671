"""``bindspace-connect``: join two trained spaces through one modality they share, without paired data.

    bindspace-connect a=audio_image.ckpt b=text_image.ckpt shared=image fit=synthetic eval=synthetic \\
        out=connector.safetensors

Space A aligned, say, image and audio; space B image and text. No sample pairs audio with text, yet
both spaces know images. The idea of C-MCR, Ex-MCR and FreeBind (whose training code was not
published): embed the *same* images with A's image encoder and with B's, and learn the map that sends
A's image embeddings onto B's. Every modality of A then reaches B's space through that map, so audio
can be compared with text: an alignment that no data ever paired.

What is fitted, and on what:

- **The map** ``W`` (``D_a x D_b``) from pairs ``(a_i, b_i)`` = A's and B's embedding of shared sample
  ``i``, both centred on their mean over the fit set. ``method=procrustes`` (default) is the orthogonal
  map that best aligns them (``U V^T`` from the SVD of ``A^T B``; the geometry of A is kept, nothing to
  tune); ``lstsq`` the ridge regression (more freedom, more to fit); ``contrastive`` starts at
  Procrustes and trains the linear map with symmetric InfoNCE on the same pairs (C-MCR's objective).
- **The modality gap.** Within one space each modality sits in its own region (a roughly constant
  offset from the others). A map fitted on images moves A's image *region* onto B's image region, not
  A's audio region onto B's text region. So every modality is centred on its own mean in its own space
  before the map (the gap correction of Liang et al., 2022); the means of the non-shared modalities
  come from their own unpaired fit samples (``fit`` rows that hold only that modality). A modality
  without fit samples is centred on the shared modality's mean.
- **Held out.** Evaluation scores samples never fitted on (checked by id, and by file: the same file under
  another id is the same sample; a manifest without ids names rows of its own file only), and reports
  every cross-space pair (a modality only A knows against one only B knows) with its chance level and
  a bootstrap interval, next to the identity map (the two spaces compared as they are) as the baseline.

``fit``/``eval``: ``synthetic`` (the built-in benchmark: fit scenes and evaluation scenes come from
disjoint id ranges, and the non-shared modalities' centring scenes from ranges of their own, so no fit
sample is paired with another) or a manifest (``docs/data.md``). The connector is a safetensors file
(the map, the means, and as metadata both checkpoints' paths, the SHA-256 of their files and of their
models (:func:`space_sha256`), the method and the fitted ids); :class:`ConnectedSpace` loads it with its
two checkpoints, checks that their models are the ones fitted on, and embeds any modality of either space
into B's space. Exit status: 0 written, 2 a usage error (one line naming the key, file or value).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bindspace.cli import KeyValueCommand, check_output, run_command
from bindspace.data.synthetic import DEFAULT_VERSION, VERSIONS
from bindspace.errors import ConfigError
from bindspace.utils.io import atomic_write, atomic_write_json, read_safetensors

FORMAT = "bindspace-connector/1"
METHODS = ("procrustes", "lstsq", "contrastive")
# Synthetic scene ids: fit scenes far from every training pool (0 .. edges x pool_size) and from the
# validation and test galleries (bindspace.data.datamodule VAL_BASE, TEST_BASE).
FIT_BASE = 3_000_000_000
PROG = "bindspace-connect"


class ConnectError(ConfigError):
    """Two spaces that cannot be connected as asked, or a connector file that cannot be used."""


def sha256(path: str | Path) -> str:
    """SHA-256 of a whole file (read a second time after loading it: connectors older than
    :func:`space_sha256` name their checkpoints by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def space_sha256(space) -> str:
    """SHA-256 of what a space's embeddings depend on: its model's description (embedding width, every
    modality's config: input transform, trunk, head) and weights (every tensor of its state dict).

    Computed from the model already loaded, so a connector's check reads no file again, and unlike the file's
    hash it ignores what does not embed: the optimiser state a training checkpoint also holds, and the
    centring ``bindspace-eval eval.save_to_checkpoint=true`` writes into the file (:class:`ConnectedSpace`
    embeds without it). Not a hash stored in the file: a claim in a header is not proof of the weights.
    """
    from bindspace.adapter_files import fingerprint
    from bindspace.inference import checkpoint_metadata

    described = json.dumps(checkpoint_metadata(space.model), sort_keys=True, default=str)
    weights = fingerprint(space.model.state_dict())
    return hashlib.sha256(f"{described}\n{weights}".encode()).hexdigest()


@dataclass
class Connector:
    """The map from space A into space B, and each modality's centre in its own space.

    Attributes:
        shared: the modality both spaces hold, which the map was fitted on.
        weight: ``(D_a, D_b)``; a centred A embedding ``x`` goes to ``normalize(x @ weight)``.
        means_a, means_b: modality -> ``(D,)`` mean of its fit embeddings in that space (the shared
            modality always has one in both).
        method: how ``weight`` was fitted (one of :data:`METHODS`, or ``identity``).
        info: provenance, stored as metadata: the checkpoints' paths and SHA-256, the fit ids.
    """

    shared: str
    weight: Tensor
    means_a: dict[str, Tensor]
    means_b: dict[str, Tensor]
    method: str = "procrustes"
    info: dict[str, Any] = field(default_factory=dict)

    def centre(self, space: str, modality: str, embeddings: Tensor) -> Tensor:
        means = self.means_a if space == "a" else self.means_b
        return embeddings.float() - means.get(modality, means[self.shared])

    def from_a(self, modality: str, embeddings: Tensor) -> Tensor:
        """A's embeddings of ``modality`` in B's space: centred, mapped, unit norm."""
        return F.normalize(self.centre("a", modality, embeddings) @ self.weight, dim=-1)

    def from_b(self, modality: str, embeddings: Tensor) -> Tensor:
        """B's embeddings of ``modality``, centred on the same footing as mapped ones, unit norm."""
        return F.normalize(self.centre("b", modality, embeddings), dim=-1)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save

        tensors = {"weight": self.weight.float().contiguous()}
        tensors |= {f"mean_a.{m}": v.float().contiguous() for m, v in self.means_a.items()}
        tensors |= {f"mean_b.{m}": v.float().contiguous() for m, v in self.means_b.items()}
        meta = {"format": FORMAT, "shared": self.shared, "method": self.method, "info": json.dumps(self.info)}
        return atomic_write(path, lambda f: f.write(save(tensors, metadata=meta)))

    @classmethod
    def load(cls, path: str | Path) -> Connector:
        """Read a connector file (plain tensors and JSON strings: nothing in it is executed).

        Raises:
            ConnectError: not a readable connector, naming the file and what is wrong.
        """
        try:
            meta, tensors = read_safetensors(path)
        except ValueError as err:
            raise ConnectError(f"{path}: not a readable connector file ({err})") from None
        if meta.get("format") != FORMAT:
            raise ConnectError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        weight, shared = tensors.get("weight"), meta.get("shared", "")
        means = {
            side: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"mean_{side}.")} for side in "ab"
        }
        if weight is None or weight.ndim != 2 or not torch.isfinite(weight).all():
            raise ConnectError(f"{path}: 'weight' must be a finite (D_a, D_b) matrix")
        for side, dim in (("a", weight.shape[0]), ("b", weight.shape[1])):
            if shared not in means[side]:
                raise ConnectError(f"{path}: no mean_{side}.{shared} for the shared modality {shared!r}")
            bad = [m for m, v in means[side].items() if v.shape != (dim,) or not torch.isfinite(v).all()]
            if bad:
                raise ConnectError(f"{path}: mean_{side} of {bad} must be finite vectors of length {dim}")
        try:
            info = json.loads(meta.get("info", "{}"))
        except json.JSONDecodeError:
            raise ConnectError(f"{path}: metadata 'info' is not JSON") from None
        return cls(shared, weight, means["a"], means["b"], meta.get("method", "?"), info)


def fit_map(xa: Tensor, xb: Tensor, method: str = "procrustes", ridge: float = 1e-3, seed: int = 0) -> Tensor:
    """``W`` with ``xa @ W ~ xb`` for paired, already centred rows (row i of each is one sample).

    Args:
        xa: ``(N, D_a)``; xb: ``(N, D_b)``.
        method: ``procrustes`` (orthonormal columns or rows: ``U V^T`` of ``svd(xa^T xb)``), ``lstsq``
            (ridge, ``ridge`` times the mean eigenvalue of ``xa^T xa`` on the diagonal) or
            ``contrastive`` (Procrustes, then 300 full-batch Adam steps of symmetric InfoNCE at
            temperature 0.05 on the pairs, seeded).
    """
    if xa.ndim != 2 or xb.ndim != 2 or len(xa) != len(xb):
        raise ValueError(f"fit_map needs paired (N, D) rows, got {tuple(xa.shape)} and {tuple(xb.shape)}")
    if len(xa) < 2:
        raise ValueError(f"fit_map needs at least 2 pairs, got {len(xa)}")
    a, b = xa.double(), xb.double()
    if method == "procrustes" or method == "contrastive":
        u, _, vh = torch.linalg.svd(a.T @ b, full_matrices=False)
        weight = u @ vh
        if method == "contrastive":
            weight = _contrastive(a.float(), b.float(), weight.float(), seed).double()
    elif method == "lstsq":
        gram = a.T @ a
        lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
        weight = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), a.T @ b)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return weight.float()


def _contrastive(a: Tensor, b: Tensor, init: Tensor, seed: int, steps: int = 300, tau: float = 0.05) -> Tensor:
    torch.manual_seed(seed)
    weight = torch.nn.Parameter(init.clone())
    opt = torch.optim.Adam([weight], lr=1e-3)
    bn = F.normalize(b, dim=-1)
    labels = torch.arange(len(a))
    for _ in range(steps):
        logits = F.normalize(a @ weight, dim=-1) @ bn.T / tau
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return weight.detach()


def fit_connector(
    shared: str,
    shared_a: Tensor,
    shared_b: Tensor,
    others_a: Mapping[str, Tensor] | None = None,
    others_b: Mapping[str, Tensor] | None = None,
    method: str = "procrustes",
    info: Mapping[str, Any] | None = None,
) -> Connector:
    """Fit a :class:`Connector` from embeddings.

    Args:
        shared: the shared modality's name.
        shared_a, shared_b: ``(N, D_a)`` and ``(N, D_b)``: A's and B's embeddings of the same N samples.
        others_a, others_b: modality -> ``(M, D)`` embeddings of unpaired samples of a modality of that
            space, for its centre (the modality gap correction).
        method: see :func:`fit_map`.
    """
    mean_a, mean_b = shared_a.float().mean(0), shared_b.float().mean(0)
    weight = fit_map(shared_a.float() - mean_a, shared_b.float() - mean_b, method)
    means_a = {shared: mean_a} | {m: e.float().mean(0) for m, e in (others_a or {}).items() if len(e)}
    means_b = {shared: mean_b} | {m: e.float().mean(0) for m, e in (others_b or {}).items() if len(e)}
    return Connector(shared, weight, means_a, means_b, method, dict(info or {}))


class ConnectedSpace:
    """Two trained spaces joined by a :class:`Connector`: every modality of either one, in B's space.

    Args:
        a, b: the two :class:`~bindspace.inference.BindSpace` models.
        connector: fitted on (the same) A and B.
    """

    def __init__(self, a, b, connector: Connector) -> None:
        if connector.shared not in a.modalities or connector.shared not in b.modalities:
            raise ConnectError(f"connector's shared modality {connector.shared!r} is not in both spaces")
        if tuple(connector.weight.shape) != (a.embed_dim, b.embed_dim):
            raise ConnectError(
                f"connector maps {tuple(connector.weight.shape)}, the spaces are {a.embed_dim} -> {b.embed_dim}"
            )
        self.a, self.b, self.connector = a, b, connector

    @classmethod
    def from_files(cls, a: str | Path, b: str | Path, connector: str | Path, device: str = "cpu") -> ConnectedSpace:
        """Load both checkpoints and the connector; refuse checkpoints other than those it was fitted on.

        A checkpoint is the one fitted on when its model is (:func:`space_sha256` of the loaded model, each file
        read once); a connector older than that records the files' SHA-256 only, and the files are hashed.
        """
        from bindspace.inference import BindSpace

        conn = Connector.load(connector)
        spaces = []
        for side, path in (("a", a), ("b", b)):
            space = BindSpace.from_checkpoint(path, device)
            recorded = conn.info.get(f"{side}_checkpoint")
            fitted = f"not the checkpoint {side.upper()} that {connector} was fitted on ({recorded})"
            want = conn.info.get(f"{side}_space_sha256")
            if want and space_sha256(space) != want:
                raise ConnectError(f"{path}: {fitted}; its model's SHA-256 (weights and configs) differs")
            if not want and conn.info.get(f"{side}_sha256") and sha256(path) != conn.info[f"{side}_sha256"]:
                raise ConnectError(f"{path}: {fitted}; SHA-256 differs")
            spaces.append(space)
        return cls(*spaces, conn)

    @property
    def modalities(self) -> list[str]:
        return list(dict.fromkeys([*self.b.modalities, *self.a.modalities]))

    def space_of(self, modality: str) -> str:
        """``"b"`` for modalities B holds (the shared one included), ``"a"`` for those only A holds."""
        if modality in self.b.modalities:
            return "b"
        if modality in self.a.modalities:
            return "a"
        raise KeyError(f"neither space has {modality!r}; they have {self.modalities}")

    def embed(self, modality: str, inputs: Any, space: str | None = None, batch_size: int = 64) -> Tensor:
        """Inputs of ``modality`` -> ``(N, D_b)`` unit-norm embeddings in the connected space.

        ``space`` picks the encoder for the shared modality (``"a"`` or ``"b"``; default B's).
        """
        space = space or self.space_of(modality)
        if space == "a":
            return self.connector.from_a(modality, self.a.embed(modality, inputs, batch_size=batch_size))
        return self.connector.from_b(modality, self.b.embed(modality, inputs, batch_size=batch_size))


# ---- data: what is fitted on and what is scored ---------------------------------------------------


@dataclass
class Inputs:
    """Per modality: sample ids and the inputs to embed (paths, strings or a rendered array).

    ``keys``: per sample, what fitted and scored samples must not share: a manifest row's ``sample_keys``
    (its id, qualified by the manifest when a row number, and its files), ``scene:<id>`` for the benchmark.
    """

    ids: dict[str, list[str]]
    values: dict[str, Any]
    labels: Tensor | None = None  # eval only: per row, when every row has one
    keys: list[tuple[str, ...]] = field(default_factory=list)


def synthetic_inputs(
    configs: Mapping[str, Any],
    modalities: Sequence[str],
    base: int,
    size: int,
    paired: bool,
    seed: int = 0,
    version: int = DEFAULT_VERSION,
) -> Inputs:
    """Scenes of the built-in benchmark: ``paired`` -> the same ``size`` scenes in every modality (eval),
    else a range of its own per modality (fit: no scene is seen in two modalities); drawn by renderer
    ``version`` (``data.synthetic.version``)."""
    from bindspace.data.datamodule import scene_config
    from bindspace.data.synthetic import SyntheticScenes

    scenes = SyntheticScenes(scene_config(configs, renderer={"version": version}), seed=seed)
    ids, values = {}, {}
    for k, m in enumerate(modalities):
        scene_ids = np.arange(size, dtype=np.int64) + base + (0 if paired else k * size)
        ids[m], values[m] = [str(i) for i in scene_ids], scenes.render(m, scene_ids)
    labels = torch.from_numpy(scenes.labels(np.arange(size, dtype=np.int64) + base)) if paired else None
    return Inputs(ids, values, labels, [(f"scene:{i}",) for i in dict.fromkeys(itertools.chain(*ids.values()))])


def manifest_inputs(path: str, modalities: Sequence[str], paired: bool, key: str) -> Inputs:
    """Rows of a manifest: every row holding a modality (fit), or the rows holding all of them (eval)."""
    from bindspace.data.manifest import load_manifest, sample_keys

    samples = load_manifest(path).samples
    if paired:
        rows = [s for s in samples if s.holds(modalities)]
        if len(rows) < 2:
            raise ConfigError(f"{key}={path}: fewer than 2 rows hold all of {list(modalities)}")
        labelled = all(s.label is not None for s in rows)
        names = sorted({s.label for s in rows}) if labelled else []
        labels = torch.tensor([names.index(s.label) for s in rows]) if labelled else None
        ids = {m: [s.id for s in rows] for m in modalities}
        keys = [sample_keys(s) for s in rows]
        return Inputs(ids, {m: [s.values[m] for s in rows] for m in modalities}, labels, keys)
    ids, values = {}, {}
    for m in modalities:
        rows = [s for s in samples if m in s.values]
        if rows:
            ids[m], values[m] = [s.id for s in rows], [s.values[m] for s in rows]
    return Inputs(ids, values, keys=[sample_keys(s) for s in samples if any(m in s.values for m in ids)])


def eval_inputs(
    source: str,
    configs: Mapping[str, Any],
    modalities: Sequence[str],
    size: int,
    fit: Inputs,
    version: int = DEFAULT_VERSION,
) -> Inputs:
    """The samples ``eval`` scores; refused when any of them is fitted on too (the same id or file)."""
    if source == "synthetic":
        from bindspace.data.datamodule import TEST_BASE

        data = synthetic_inputs(configs, modalities, TEST_BASE, size, paired=True, version=version)
    else:
        data = manifest_inputs(source, modalities, paired=True, key="eval")
    fitted = {k for keys in fit.keys for k in keys}
    shared = [next(k for k in keys if k in fitted) for keys in data.keys if not fitted.isdisjoint(keys)]
    if shared:
        raise ConfigError(
            f"eval={source}: {len(shared)} of its {len(data.keys)} samples are fitted on too (the same id or "
            f"file), e.g. {shared[:3]}; evaluation must fit and score on disjoint samples"
        )
    return data


# ---- scoring --------------------------------------------------------------------------------------


def evaluate_connection(space: ConnectedSpace, data: Inputs, baseline: bool = True) -> dict[str, Any]:
    """Retrieval between every modality pair in the connected space, cross-space pairs marked.

    Returns ``{"pairs": {"<q>-><g>": {...}}, "chance": ..., "identity": {...} (when D_a == D_b)}``:
    per pair R@1/5/10 and mAP in percent with ``_ci`` intervals and the chance levels, and ``"kind"``:
    ``connected`` (one modality embedded by A and mapped, the other by B: only the connector relates
    them), else ``trained`` (an edge of that space) or ``emergent`` (same space, never paired).
    """
    from bindspace.evaluation.retrieval import evaluate_retrieval

    modalities = list(data.values)
    rows = len(next(iter(data.ids.values())))
    keys = torch.arange(rows)
    trained = {frozenset(e) for e in [*space.a.edges, *space.b.edges]}
    raw = {m: (space.space_of(m), _embed_raw(space, m, data.values[m])) for m in modalities}
    conn = space.connector
    mapped = {m: conn.from_a(m, e) if s == "a" else conn.from_b(m, e) for m, (s, e) in raw.items()}
    result = {"pairs": _pairs(evaluate_retrieval(mapped, keys, trained, data.labels), raw, trained)}
    if baseline and space.a.embed_dim == space.b.embed_dim:
        plain = {m: e for m, (_, e) in raw.items()}  # the identity map, no centring: the spaces as they are
        result["identity"] = _pairs(evaluate_retrieval(plain, keys, trained, data.labels), raw, trained)
    return result


def _embed_raw(space: ConnectedSpace, modality: str, values: Any) -> Tensor:
    side = space.a if space.space_of(modality) == "a" else space.b
    return side.embed(modality, values)


def _pairs(result, raw: Mapping[str, tuple[str, Tensor]], trained: set) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level, table in (("instance", result.instance), ("class", result.class_level or {})):
        chance = result.chance["retrieval" if level == "instance" else "retrieval_class"]
        for pair, metrics in table.items():
            q, g = pair.split("->")
            # One side mapped from A, the other B's: only the connector relates them.
            within = "trained" if frozenset((q, g)) in trained else "emergent"
            kind = "connected" if raw[q][0] != raw[g][0] else within

            out.setdefault(level, {})[pair] = {
                **{k: v for k, v in metrics.items() if k != "trained"},
                "kind": kind,
                "chance": {k: v for k, v in chance.items()},
            }
    return out


# ---- the command ----------------------------------------------------------------------------------

COMMAND = KeyValueCommand(
    prog=PROG,
    summary="Join two trained spaces through a modality both hold, with no paired data across them.",
    required={
        "a": "checkpoint of space A (mapped into B)",
        "b": "checkpoint of space B (the target space)",
        "shared": "the modality both spaces hold (the map is fitted on it)",
        "fit": "'synthetic' or a manifest: rows with the shared modality fit the map, other rows centre their modality",
        "out": "the connector file to write (.safetensors)",
    },
    options={
        "method": ("procrustes", f"how the map is fitted: {', '.join(METHODS)}"),
        "eval": ("", "'synthetic' or a manifest of held-out rows with several modalities; writes <out>.metrics.json"),
        "fit_size": (2000, "synthetic: scenes per modality to fit on"),
        "eval_size": (1000, "synthetic: held-out scenes to score"),
        "synthetic_version": (
            DEFAULT_VERSION,
            f"synthetic: the renderer, as the spaces' data.synthetic.version ({', '.join(map(str, VERSIONS))})",
        ),
        "device": ("cpu", "where the encoders run"),
    },
    examples=[
        "bindspace-connect a=A.ckpt b=B.ckpt shared=image fit=synthetic eval=synthetic out=conn.safetensors",
        "bindspace-connect a=A.ckpt b=B.ckpt shared=image fit=unpaired.jsonl eval=heldout.jsonl out=conn.safetensors",
    ],
)


def renderer_differences(args: Mapping[str, Any]) -> dict[str, str]:
    """Per space (``a``, ``b``) whose training run rendered its synthetic scenes with another renderer than
    ``synthetic_version``: what it trained on, read from the run's ``.hydra/config.yaml`` beside ``checkpoints/``
    (keys renamed since moved first; a run written before the renderer had versions reads as version 1). Empty
    when neither ``fit`` nor ``eval`` is synthetic, or the runs' configs are not there or not synthetic runs."""
    import yaml

    from bindspace.data.synthetic import scene_settings
    from bindspace.inference import read_run_config

    if "synthetic" not in (args["fit"], args["eval"]):
        return {}
    out = {}
    for side in ("a", "b"):
        try:
            trained = scene_settings(read_run_config(args[side]))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):  # a run folder that cannot tell: nothing to compare
            continue
        version = None if trained is None else trained["data.synthetic.version"]
        if version is not None and version != args["synthetic_version"]:
            out[side] = f"trained on data.synthetic.version={version}, synthetic_version={args['synthetic_version']}"
    return out


def connect(args: Mapping[str, Any]) -> dict[str, Any]:
    """The command's work: fit, save, and (with ``eval``) score and write ``<out>.metrics.json``."""
    from bindspace.inference import BindSpace

    if args["method"] not in METHODS:
        raise ConfigError(f"method={args['method']!r}: must be one of {list(METHODS)}")
    if args["synthetic_version"] not in VERSIONS:
        raise ConfigError(f"synthetic_version={args['synthetic_version']}: must be one of {list(VERSIONS)}")
    inputs = {k: args[k] for k in ("a", "b", "fit", "eval") if args[k] and args[k] != "synthetic"}
    out = check_output(args["out"], ".safetensors", "the connector", inputs)
    if args["eval"]:  # its companion too, before any compute: written last, it would fail after all of it
        metrics = metrics_path(out)
        check_output(metrics, ".json", "the metrics file", inputs, label=f"out={out} (eval= writes {metrics})")
    for key in ("fit", "eval"):
        value = args[key]
        if value and value != "synthetic" and not Path(value).is_file():
            raise ConfigError(f"{key}={value}: no such manifest (or 'synthetic')")
    for side in ("a", "b"):  # named by this command's own keys, before either space is loaded
        if not Path(args[side]).is_file():
            raise ConfigError(f"{side}={args[side]}: no checkpoint file")
    differences = renderer_differences(args)
    for side, what in differences.items():
        print(
            f"{PROG}: warning: space {side}={args[side]} was {what}: its scenes here are not those it trained on "
            f"(give synthetic_version= as the spaces' data.synthetic.version)",
            file=sys.stderr,
        )
    a = BindSpace.from_checkpoint(args["a"], args["device"])
    b = BindSpace.from_checkpoint(args["b"], args["device"])
    shared = args["shared"]
    for side, space in (("a", a), ("b", b)):
        if shared not in space.modalities:
            raise ConfigError(
                f"shared={shared}: checkpoint {side}={args[side]} has no {shared!r} encoder ({space.modalities})"
            )
    only_a = [m for m in a.modalities if m not in b.modalities]
    only_b = [m for m in b.modalities if m != shared]
    if not only_a:  # a connected pair is a modality only A has with one of B's besides the shared one
        raise ConfigError(
            f"a={args['a']}: nothing to connect: every modality of space a {a.modalities} is in space b already"
        )
    if not only_b:
        raise ConfigError(f"b={args['b']}: nothing to connect: space b has no modality besides shared={shared}")
    configs = {**b.model.configs, **a.model.configs}
    fit_modalities = [shared, *only_a, *only_b]
    if args["fit"] == "synthetic":
        fit = synthetic_inputs(
            configs, fit_modalities, FIT_BASE, args["fit_size"], paired=False, version=args["synthetic_version"]
        )
    else:
        fit = manifest_inputs(args["fit"], fit_modalities, paired=False, key="fit")
    if shared not in fit.values:
        raise ConfigError(f"fit={args['fit']}: no rows with the shared modality {shared!r}")
    data = (
        eval_inputs(args["eval"], configs, fit_modalities, args["eval_size"], fit, args["synthetic_version"])
        if args["eval"]
        else None
    )
    shared_a, shared_b = a.embed(shared, fit.values[shared]), b.embed(shared, fit.values[shared])
    others_a = {m: a.embed(m, fit.values[m]) for m in only_a if m in fit.values}
    others_b = {m: b.embed(m, fit.values[m]) for m in only_b if m in fit.values}
    fit_ids = sorted({i for ids in fit.ids.values() for i in ids})
    info = {
        "a_checkpoint": str(args["a"]),
        "b_checkpoint": str(args["b"]),
        "a_sha256": sha256(args["a"]),  # the files, as connectors record them since the first release
        "b_sha256": sha256(args["b"]),
        "a_space_sha256": space_sha256(a),  # what ConnectedSpace.from_files checks
        "b_space_sha256": space_sha256(b),
        "fit": args["fit"],
        "fit_counts": {m: len(v) for m, v in fit.ids.items()},
        "fit_ids_sha256": hashlib.sha256("\n".join(fit_ids).encode()).hexdigest(),
    }
    if "synthetic" in (args["fit"], args["eval"]):
        info["synthetic_version"] = args["synthetic_version"]  # the scenes' renderer, for fit and eval alike
        info["training_data_differences"] = differences  # per space, as bindspace-eval's key of that name
    connector = fit_connector(shared, shared_a, shared_b, others_a, others_b, args["method"], info)
    report: dict[str, Any] = {"connector": str(out), "method": args["method"], "shared": shared, **info}
    if data is not None:
        report |= evaluate_connection(ConnectedSpace(a, b, connector), data)
        report["eval"] = {"source": args["eval"], "rows": len(next(iter(data.ids.values())))}
    connector.save(out)
    if args["eval"]:
        atomic_write_json(metrics_path(out), report)
    return report


def metrics_path(out: str | Path) -> Path:
    """Where ``eval=`` writes its report: beside the connector, ``<out without .safetensors>.metrics.json``."""
    return Path(out).with_suffix(".metrics.json")


def format_report(report: Mapping[str, Any]) -> str:
    """The cross-space pairs (and the identity baseline) as a text table."""
    lines = []
    for level in ("instance", "class"):
        pairs = report.get("pairs", {}).get(level, {})
        if not pairs:
            continue
        lines.append(f"{level}-level retrieval, R@1 % [95% interval] (chance), connected pairs:")
        for pair, m in pairs.items():
            if m["kind"] != "connected":
                continue
            base = report.get("identity", {}).get(level, {}).get(pair)
            ci = m.get("R@1_ci") or [float("nan")] * 2
            line = f"  {pair:<16} {m['R@1']:6.2f} [{ci[0]:.2f}, {ci[1]:.2f}] (chance {m['chance']['R@1']:.2f})"
            if base:
                line += f"   identity map: {base['R@1']:6.2f}"
            lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> int:
        args = COMMAND.parse(sys.argv[1:] if argv is None else argv)
        report = connect(args)
        print(f"wrote {args['out']}")
        if args["eval"]:
            print(format_report(report))
            print(f"wrote {metrics_path(args['out'])}")
        return 0

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
