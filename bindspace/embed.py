"""``bindspace-embed``: embed the files of one modality into a safetensors file (embeddings + ids).

    bindspace-embed ckpt_path=last.ckpt modality=audio inputs=clips/ out=audio.safetensors
    bindspace-embed ckpt_path=last.ckpt modality=image inputs='photos/**/*.jpg' out=images.safetensors
    bindspace-embed ckpt_path=last.ckpt modality=text inputs=data/manifest.jsonl out=captions.safetensors

``inputs`` is a folder (every file with one of the modality's suffixes, recursively), a glob, a
manifest (``.jsonl``/``.csv``, see ``docs/data.md``; its samples that hold the modality, under their
ids) or, for text, a ``.txt`` file with one text per line. Ids are file paths relative to the folder
(or to the glob's folder before its first wildcard), manifest ids, or line numbers. Options: ``batch_size=64``,
``device=cpu``, ``center=false`` (apply the checkpoint's stored centring). The file holds one tensor
``embeddings`` (N, D) and string metadata ``modality``, ``ids`` (a JSON list), ``checkpoint``,
``centered``; :func:`load_embeddings` reads it back. It is written atomically.
"""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bindspace.modalities import ConfigError, get_modality
from bindspace.utils.io import atomic_write

FORMAT = "bindspace-embeddings/1"
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_key_values(argv: Sequence[str], defaults: Mapping[str, Any], required: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> a dict typed like ``defaults``; unknown, malformed or missing keys raise ConfigError."""
    out: dict[str, Any] = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"arguments are key=value, got {arg!r}")
        if key not in defaults and key not in required:
            raise ConfigError(f"unknown key {key!r}; expected some of {sorted({*defaults, *required})}")
        kind = type(defaults.get(key))
        if kind is bool:
            if value.lower() not in _TRUE + _FALSE:
                raise ConfigError(f"{key} must be true or false, got {value!r}")
            out[key] = value.lower() in _TRUE
        elif kind is int:
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
            out[key] = int(value)
        else:
            out[key] = value
    missing = [k for k in required if not out.get(k)]
    if missing:
        raise ConfigError(f"missing {', '.join(f'{k}=...' for k in missing)}")
    return out


def resolve_inputs(modality: str, inputs: str) -> tuple[list[str], list[Any]]:
    """``inputs=`` -> (ids, inputs): file paths, or strings for text, in a stable order."""
    spec = get_modality(modality)  # unknown modality -> ConfigError naming it
    path = Path(inputs)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        from bindspace.data.manifest import load_manifest

        samples = [s for s in load_manifest(path).samples if modality in s.values]
        if not samples:
            raise ConfigError(f"inputs: manifest {path} has no sample with {modality!r}")
        return [s.id for s in samples], [s.values[modality] for s in samples]
    if spec.inline:  # text: the values themselves, not files
        if not (path.is_file() and path.suffix == ".txt"):
            raise ConfigError(f"inputs: {modality} comes from a .txt file (one per line) or a manifest, got {inputs!r}")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [str(i) for i in range(len(lines))], lines
    from bindspace.data.readers import SUPPORTED_SUFFIXES

    suffixes = SUPPORTED_SUFFIXES.get(modality, ())
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


@dataclass
class EmbeddingFile:
    """What :func:`save_embeddings` wrote."""

    embeddings: Tensor  # (N, D)
    ids: list[str]
    modality: str
    metadata: dict[str, str]


def load_embeddings(path: str | Path) -> EmbeddingFile:
    """Read a file written by ``bindspace-embed``; errors name the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no embeddings file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, emb = dict(f.metadata() or {}), f.get_tensor("embeddings")
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ConfigError(f"{path}: not a bindspace embeddings file ({type(err).__name__}: {err})") from err
    if meta.get("format") != FORMAT or "modality" not in meta or "ids" not in meta:
        raise ConfigError(f"{path}: not a bindspace embeddings file (metadata format {meta.get('format')!r})")
    ids = json.loads(meta["ids"])
    if len(ids) != len(emb):
        raise ConfigError(f"{path}: {len(ids)} ids for {len(emb)} embeddings")
    return EmbeddingFile(emb, ids, meta["modality"], meta)


DEFAULTS = {"batch_size": 64, "device": "cpu", "center": False}
REQUIRED = ("ckpt_path", "modality", "inputs", "out")


def run(args: Mapping[str, Any]) -> Path:
    from bindspace.inference import BindSpace

    ids, inputs = resolve_inputs(args["modality"], args["inputs"])
    bs = BindSpace.from_checkpoint(args["ckpt_path"], device=args["device"])
    if args["modality"] not in bs.modalities:
        raise ConfigError(f"modality={args['modality']}: the checkpoint's model has {bs.modalities}")
    if args["center"] and args["modality"] not in bs.centering:
        raise ConfigError(f"center=true: {args['ckpt_path']} stores no centring for {args['modality']!r} "
                          "(run bindspace-eval ... eval.save_to_checkpoint=true first)")  # fmt: skip
    with torch.inference_mode():
        emb = bs.embed(args["modality"], inputs, args["batch_size"], center=args["center"], progress=True)
    extra = {"checkpoint": str(args["ckpt_path"]), "centered": str(args["center"]).lower()}
    return save_embeddings(args["out"], emb, ids, args["modality"], extra)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (2 for a user error, printed as one line)."""
    from bindspace.data.readers import DataFileError
    from bindspace.inference import CheckpointError

    try:
        args = parse_key_values(sys.argv[1:] if argv is None else argv, DEFAULTS, REQUIRED)
        out = run(args)
    except (ConfigError, CheckpointError, DataFileError) as err:
        print(f"bindspace-embed: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
