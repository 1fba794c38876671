"""``bindspace-embed``: embed the files of one modality into a safetensors file (embeddings + ids).

    bindspace-embed ckpt_path=last.ckpt modality=audio inputs=clips/ out=audio.safetensors
    bindspace-embed ckpt_path=last.ckpt modality=image inputs='photos/**/*.jpg' out=images.safetensors
    bindspace-embed ckpt_path=last.ckpt modality=text inputs=data/manifest.jsonl out=captions.safetensors

``inputs`` is a folder (every file with one of the modality's suffixes, recursively), a glob, a
manifest (``.jsonl``/``.csv``, see ``docs/data.md``; its samples that hold the modality, under their
ids) or, for text, a ``.txt`` file with one text per line. Ids are file paths relative to the folder
(or to the glob's folder before its first wildcard), manifest ids, or 0-based line numbers (blank lines
skipped, keeping their numbers; a file of blank lines only is refused). Options: ``batch_size=64``,
``device=cpu``, ``center=false`` (apply the checkpoint's stored centring). The file holds one tensor
``embeddings`` (N, D) and string metadata ``modality``, ``ids`` (a JSON list), ``checkpoint`` (its path
as given), ``weights_sha256`` (:func:`weights_sha256`) and ``centered``; :func:`load_embeddings` reads it
back and checks it (:func:`check_embeddings`: a floating (N, D) tensor with D > 0, finite, rows of unit
norm within :func:`norm_tolerance`, ``ids`` a JSON list of N unique strings, ``modality`` registered),
refusing any other file with one :class:`EmbeddingFileError` line naming it. It is written atomically,
and only when it passes the same checks (a non-finite or zero embedding stops ``bindspace-embed`` with
one line naming the input); ``out`` must end in ``.safetensors`` and be neither a folder nor the
checkpoint, checked before anything is read.
"""

from __future__ import annotations

import glob
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bindspace.cli import KeyValueCommand, check_output, run_command
from bindspace.errors import ConfigError
from bindspace.modalities import get_modality
from bindspace.utils.io import atomic_write, remove_stale_temporaries

FORMAT = "bindspace-embeddings/1"
NORM_TOLERANCE = 1e-3  # |norm - 1| allowed for a row of a float32/float64 file; looser for 16-bit files
log = logging.getLogger("bindspace.embed")
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv")


def resolve_inputs(modality: str, inputs: str) -> tuple[list[str], list[Any]]:
    """``inputs=`` -> (ids, inputs): file paths, or strings for text, in a stable order."""
    spec = get_modality(modality)  # unknown modality -> ConfigError naming it
    path = Path(inputs)
    if path.suffix.lower() in (*MANIFEST_SUFFIXES, ".txt") and not glob.has_magic(inputs) and not path.exists():
        raise ConfigError(f"inputs: no such file: {path}")
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        from bindspace.data.manifest import load_manifest

        samples = [s for s in load_manifest(path).samples if modality in s.values]
        if not samples:
            raise ConfigError(f"inputs: manifest {path} has no sample with {modality!r}")
        return [s.id for s in samples], [s.values[modality] for s in samples]
    if spec.inline:  # text: the values themselves, not files
        if not (path.is_file() and path.suffix == ".txt"):
            raise ConfigError(f"inputs: {modality} comes from a .txt file (one per line) or a manifest, got {inputs!r}")
        # Numbered before blank lines are dropped, by universal newlines only (as editors and `sed -n` count).
        lines = [(str(i), line) for i, line in enumerate(path.read_text(encoding="utf-8").split("\n")) if line.strip()]
        if not lines:  # an empty embeddings file would pass for a result
            raise ConfigError(f"inputs: {path} holds no text: every line is blank (one text per line)")
        return [i for i, _ in lines], [line for _, line in lines]
    from bindspace.data.readers import supported_suffixes

    suffixes = supported_suffixes().get(modality, ())
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        ids = [p.relative_to(path).as_posix() for p in files]
    else:
        files = sorted(Path(p) for p in glob.glob(inputs, recursive=True) if Path(p).is_file())
        ids = [p.relative_to(glob_root(inputs)).as_posix() for p in files]
    if not files:
        raise ConfigError(f"inputs: no {modality} files ({', '.join(suffixes)}) at {inputs!r}")
    return ids, files


def glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: ids of matched files are relative to it."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts) - 1)
    return Path(*parts[:fixed]) if fixed else Path()


def save_embeddings(
    path: str | Path, embeddings: Tensor, ids: Sequence[str], modality: str, extra: Mapping[str, str] | None = None
) -> Path:
    """Write ``(N, D)`` embeddings with their ids and modality to a safetensors file, atomically."""
    from safetensors.torch import save

    if embeddings.ndim != 2 or len(ids) != len(embeddings):
        raise ValueError(f"need (N, D) embeddings and N ids, got {tuple(embeddings.shape)} and {len(ids)} ids")
    meta = {"format": FORMAT, "modality": modality, "ids": json.dumps(list(ids)), **dict(extra or {})}
    data = save({"embeddings": embeddings.float().contiguous().cpu()}, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))


class EmbeddingFileError(ConfigError):
    """An embeddings file (or array) that is not what ``bindspace-embed`` writes; one line naming it and the fault."""


@dataclass
class EmbeddingFile:
    """What :func:`save_embeddings` wrote, checked by :func:`check_embeddings`."""

    embeddings: Tensor  # (N, D), floating, finite, unit-norm rows
    ids: list[str]
    modality: str
    metadata: dict[str, str]
    renormalized: int = 0  # rows that were not unit-norm and were renormalised (``renormalize=True``)


def norm_tolerance(dtype: torch.dtype) -> float:
    """How far a row's norm may be from 1: :data:`NORM_TOLERANCE`, or 4 ulp of 1 for coarser (16-bit) dtypes."""
    return max(NORM_TOLERANCE, 4 * torch.finfo(dtype).eps)


def _show(value: Any) -> str:
    """A value for a one-line message: its repr (newlines escaped), shortened."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_ids(where: str, raw: str, rows: int) -> list[str]:
    """The ``ids`` metadata (a JSON list of ``rows`` unique strings) -> the list; EmbeddingFileError otherwise."""
    try:
        ids = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise EmbeddingFileError(f"{where}: metadata 'ids' is not JSON ({type(err).__name__}: {err})") from None
    if not isinstance(ids, list):
        raise EmbeddingFileError(f"{where}: metadata 'ids' must be a JSON list of strings, got {type(ids).__name__}")
    bad = next((i for i, x in enumerate(ids) if not isinstance(x, str)), None)
    if bad is not None:
        raise EmbeddingFileError(
            f"{where}: metadata 'ids' must be strings; item {bad} is {_show(ids[bad])} ({type(ids[bad]).__name__})"
        )
    if len(ids) != rows:
        raise EmbeddingFileError(f"{where}: {len(ids)} ids for {rows} embeddings (one id per row)")
    first: dict[str, int] = {}
    for row, name in enumerate(ids):
        if name in first:
            raise EmbeddingFileError(
                f"{where}: duplicate id {_show(name)} (rows {first[name]} and {row}); ids must be unique"
            )
        first[name] = row
    return ids


def _check_array(where: str, embeddings: Any) -> None:
    """A floating ``(N, D)`` tensor with D > 0, or EmbeddingFileError."""
    if not isinstance(embeddings, Tensor) or not embeddings.is_floating_point():
        dtype = embeddings.dtype if isinstance(embeddings, Tensor) else type(embeddings).__name__
        raise EmbeddingFileError(f"{where}: embeddings must be a floating tensor (float32), got {dtype}")
    if embeddings.ndim != 2 or embeddings.shape[1] == 0:
        shape = tuple(embeddings.shape)
        raise EmbeddingFileError(f"{where}: embeddings must be 2-D (N, D) with D > 0, got shape {shape}")


def row_norms(embeddings: Tensor, block: int = 2**16) -> Tensor:
    """``(N, D)`` -> ``(N,)`` float64 norms, a block of rows at a time (no float64 copy of a large index).

    A row holding NaN or inf has a non-finite norm; float32 values cannot overflow a float64 norm.
    """
    parts = [torch.empty(0, dtype=torch.float64)]
    for start in range(0, len(embeddings), block):
        parts.append(torch.linalg.vector_norm(embeddings[start : start + block].double(), dim=1))
    return torch.cat(parts)


def check_embeddings(
    where: str,
    embeddings: Tensor,
    ids: Sequence[str],
    modality: str,
    renormalize: bool = False,
    advice: str | None = None,
) -> tuple[Tensor, int]:
    """Check ``(N, D)`` embeddings with their ``ids`` and ``modality``; ``where`` names them in errors.

    Dtype floating, shape 2-D with D > 0, one id per row, a registered modality, every value finite
    and every row of unit norm within :func:`norm_tolerance`. Rows off the unit sphere are refused
    unless ``renormalize`` (then they are divided by their norm; zero rows are refused all the same);
    ``advice`` (what to do) replaces the end of the messages refusing non-finite or non-unit rows.

    Returns:
        (embeddings, how many rows were renormalised); the tensor is the input when none was.

    Raises:
        EmbeddingFileError: one line naming ``where``, what is wrong and the first offending id.
    """
    _check_array(where, embeddings)
    if len(ids) != len(embeddings):
        raise EmbeddingFileError(f"{where}: {len(ids)} ids for {len(embeddings)} embeddings (one id per row)")
    try:
        get_modality(modality)
    except ConfigError as err:
        raise EmbeddingFileError(f"{where}: {err}") from None
    nan_advice = advice or "re-export them"
    norm_advice = advice or "re-export them, or pass renormalize=true to renormalise them"
    norms = row_norms(embeddings)
    rows = (~torch.isfinite(norms)).nonzero().flatten()
    if len(rows):
        raise EmbeddingFileError(
            f"{where}: {len(rows)} of {len(embeddings)} rows hold NaN or inf (first id {_show(ids[int(rows[0])])}, "
            f"row {int(rows[0])}); {nan_advice}"
        )
    tolerance = norm_tolerance(embeddings.dtype)
    off = ((norms - 1).abs() > tolerance).nonzero().flatten()
    if len(off) == 0:
        return embeddings, 0
    first = int(off[0])
    count = f"{len(off)} of {len(embeddings)} rows"
    detail = f"(|norm - 1| > {tolerance:g}; first id {_show(ids[first])}, row {first}, norm {float(norms[first]):.6g})"
    zero = off[norms[off] == 0]
    if not renormalize:
        raise EmbeddingFileError(f"{where}: {count} are not unit-norm {detail}; {norm_advice}")
    if len(zero):
        raise EmbeddingFileError(
            f"{where}: {len(zero)} rows are all zeros and cannot be renormalised "
            f"(first id {_show(ids[int(zero[0])])}, row {int(zero[0])}); re-export them"
        )
    fixed = embeddings.clone()
    fixed[off] = (embeddings[off].double() / norms[off, None]).to(embeddings.dtype)
    log.warning("%s: renormalize=true: renormalised %s that were not unit-norm %s", where, count, detail)
    return fixed, len(off)


def load_embeddings(path: str | Path, renormalize: bool = False) -> EmbeddingFile:
    """Read and check a file written by ``bindspace-embed`` (see :func:`check_embeddings`).

    Args:
        path: the ``.safetensors`` file.
        renormalize: divide rows that are not unit-norm by their norm, with one warning (logger
            ``bindspace.embed``) counting them, instead of refusing the file.

    Raises:
        EmbeddingFileError: one line naming the file and what is wrong with it.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"no embeddings file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, emb = dict(f.metadata() or {}), f.get_tensor("embeddings")
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        reason = " ".join(f"{type(err).__name__}: {err}".split())  # one line, whatever the library says
        raise EmbeddingFileError(f"{path}: not a bindspace embeddings file ({reason})") from err
    if meta.get("format") != FORMAT or "modality" not in meta or "ids" not in meta:
        raise EmbeddingFileError(f"{path}: not a bindspace embeddings file (metadata format {meta.get('format')!r})")
    _check_array(str(path), emb)  # before the ids are counted against its rows
    ids = parse_ids(str(path), meta["ids"], len(emb))
    emb, renormalized = check_embeddings(str(path), emb, ids, meta["modality"], renormalize)
    return EmbeddingFile(emb, ids, meta["modality"], meta, renormalized)


COMMAND = KeyValueCommand(
    prog="bindspace-embed",
    summary="Embed the files (or texts) of one modality with a trained checkpoint into a safetensors file.",
    required={
        "ckpt_path": "a checkpoint written by bindspace-train (e.g. runs/train/<time>/checkpoints/last.ckpt)",
        "modality": "the modality of the inputs (image, text, audio, depth, thermal, imu, or any registered one)",
        "inputs": "a folder, a glob, a manifest (.jsonl/.csv) or, for text, a .txt file with one text per line",
        "out": "the .safetensors file to write (embeddings (N, D) and their ids)",
    },
    options={
        "batch_size": (64, "inputs embedded per forward pass"),
        "device": ("cpu", "cpu, cuda, cuda:1, ..."),
        "center": (False, "apply the centring stored in the checkpoint (bindspace-eval eval.save_to_checkpoint=true)"),
    },
    examples=[
        "bindspace-embed ckpt_path=last.ckpt modality=audio inputs=clips/ out=audio.safetensors",
        "bindspace-embed ckpt_path=last.ckpt modality=text inputs=captions.txt out=captions.safetensors",
    ],
)
DEFAULTS, REQUIRED = COMMAND.defaults, tuple(COMMAND.required)


def weights_sha256(ckpt: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's model weights (``state_dict``'s ``model.*``): what its embeddings depend on.

    Unlike the file's hash it is unchanged by ``bindspace-eval eval.save_to_checkpoint=true``, which rewrites
    the file with gap statistics; ``bindspace-search`` compares it across the files it searches.
    """
    from bindspace.adapter_files import fingerprint

    return fingerprint({k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})


def run(args: Mapping[str, Any]) -> Path:
    from bindspace.inference import BindSpace, load_checkpoint

    check_output(args["out"], ".safetensors", "the embeddings file", {"ckpt_path": args["ckpt_path"]})
    # A run of this command killed while writing left its temporary beside the output (a live write of the same
    # output holds its temporary locked and keeps it).
    for tmp in remove_stale_temporaries(args["out"]):
        log.warning("removing %s, a temporary file an interrupted bindspace-embed left behind", tmp)
    ids, inputs = resolve_inputs(args["modality"], args["inputs"])
    ckpt = load_checkpoint(args["ckpt_path"])
    bs = BindSpace.from_state(ckpt, args["device"], where=str(args["ckpt_path"]))
    if args["modality"] not in bs.modalities:
        raise ConfigError(f"modality={args['modality']}: the checkpoint's model has {bs.modalities}")
    if args["center"] and args["modality"] not in bs.centering:
        raise ConfigError(f"center=true: {args['ckpt_path']} stores no centring for {args['modality']!r} "
                          "(run bindspace-eval ... eval.save_to_checkpoint=true first)")  # fmt: skip
    with torch.inference_mode():
        emb = bs.embed(args["modality"], inputs, args["batch_size"], center=args["center"], progress=True)
    # Never write a file that load_embeddings (and so bindspace-search) would refuse.
    where, advice = f"{args['ckpt_path']} on inputs={args['inputs']}", "nothing written; check the checkpoint"
    check_embeddings(where, emb, ids, args["modality"], advice=advice)
    extra = {"checkpoint": str(args["ckpt_path"]), "weights_sha256": weights_sha256(ckpt)}
    extra["centered"] = str(args["center"]).lower()
    return save_embeddings(args["out"], emb, ids, args["modality"], extra)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (2 for a user error, printed as one line)."""

    def body() -> int:
        out = run(COMMAND.parse(sys.argv[1:] if argv is None else argv))
        print(f"wrote {out}")
        return 0

    return run_command(COMMAND.prog, body)


if __name__ == "__main__":
    sys.exit(main())
