"""Webdataset-style tar shards of a manifest (streamed by ``data=shards``, see shard_datamodule.py).

A shard ``shard-000000.tar`` holds consecutive samples; each sample's files share one key, the
sample's position in the manifest (``000000042.json`` with id, label and manifest line,
``000000042.image.png``, ``000000042.text.txt``, ...), stored byte for byte as in the original
files. ``index.json`` beside the shards counts samples, modalities and pairs per shard. The files
are plain tar, so the ``webdataset`` library reads them too. Streaming them for training is
``bindspace.data.shard_datamodule`` (``data=shards``).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from bindspace.data.manifest import (
    INLINE_MODALITIES,
    Manifest,
    ManifestError,
    Sample,
    canonical,
    load_manifest,
)
from bindspace.data.manifest_datamodule import (
    check_manifests,
)
from bindspace.data.readers import DataFileError
from bindspace.modalities import ConfigError, list_modalities
from bindspace.utils.io import atomic_write, atomic_write_json

FORMAT = "bindspace-shards/1"
INDEX_NAME = "index.json"
SHARD_NAME = "shard-{:06d}.tar"
Fields = dict[str, bytes]  # "json", "image.png", "text.txt", ... -> bytes


def sample_fields(sample: Sample) -> Fields:
    """The members of one sample, keyed by what follows ``<key>.`` in the tar."""
    meta = {"id": sample.id, "label": sample.label, "line": sample.line}
    fields = {"json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
    for m in canonical(sample.values):
        value = sample.values[m]
        if m in INLINE_MODALITIES:
            fields[f"{m}.txt"] = str(value).encode("utf-8")
        else:
            fields[f"{m}{Path(value).suffix.lower()}"] = Path(value).read_bytes()
    return fields


def _write_tar(f: BinaryIO, samples: Sequence[tuple[str, Sample]]) -> None:
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, sample in samples:
            for name, data in sample_fields(sample).items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0  # reproducible bytes
                tar.addfile(info, fileobj=io.BytesIO(data))


def _readable(path: Path) -> None:
    """Give a file the usual permissions: atomic writes create 0600 temporaries, but shards are shared data."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def write_shards(
    manifest: Manifest, out: str | Path, shard_size: int, check: bool = True, workers: int | None = None
) -> dict[str, Any]:
    """Write ``manifest`` as tar shards plus ``index.json`` into ``out``, each file atomically.

    Args:
        manifest: the samples to write (keys are their positions in it).
        out: folder for ``shard-NNNNNN.tar`` and ``index.json``; stale shards of an earlier run are removed.
        shard_size: samples per shard.
        check: decode every file first and fail on bad ones (pass False for an already checked manifest).
        workers: threads for the check.

    Returns:
        The index written to ``out/index.json``.
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard size must be a positive integer, got {shard_size!r}")
    if check:
        check_manifests([manifest], list_modalities(), "raise", workers)
    out = Path(out)
    keyed = [(f"{i:09d}", s) for i, s in enumerate(manifest.samples)]
    shards = []
    for n, start in enumerate(range(0, len(keyed), shard_size)):
        chunk = keyed[start : start + shard_size]
        name = SHARD_NAME.format(n)
        _readable(atomic_write(out / name, lambda f, chunk=chunk: _write_tar(f, chunk)))
        part = manifest.with_samples([s for _, s in chunk])
        shards.append(
            {"name": name, "samples": len(chunk), "modalities": part.modality_counts(), "pairs": part.pair_counts()}
        )
    for stale in out.glob("shard-*.tar"):
        if stale.name not in {s["name"] for s in shards}:
            stale.unlink()
    index = {
        "format": FORMAT,
        "manifest": str(manifest.path),
        "num_samples": len(keyed),
        "shard_size": shard_size,
        "modalities": manifest.modality_counts(),
        "pairs": manifest.pair_counts(),
        "labels": manifest.label_counts(),
        "shards": shards,
    }
    _readable(atomic_write_json(out / INDEX_NAME, index))  # last: a complete index means a complete set
    return index


def load_index(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(folder, index)`` from a shard folder or its ``index.json``."""
    path = Path(path)
    file = path / INDEX_NAME if path.is_dir() else path
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ManifestError(
            f"{file}: cannot read the shard index ({err}); write shards with `bindspace-data shard`"
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ManifestError(f"{file}: not a {FORMAT} index")
    return file.parent, index


def iter_shard(path: Path, modalities: Collection[str] | None = None) -> Iterator[tuple[str, Fields]]:
    """``(key, fields)`` of each sample in a shard, in stored order.

    Args:
        path: the tar file.
        modalities: read only these modalities' members (and ``json``); the others are seeked over.
    """
    key, fields = None, {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, _, name = Path(member.name).name.partition(".")
                if key is not None and k != key:
                    yield key, fields
                    fields = {}
                key = k
                if modalities is None or name == "json" or name.partition(".")[0] in modalities:
                    fields[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as err:
        raise DataFileError(path, f"cannot read tar shard: {err}") from err
    if key is not None:
        yield key, fields


def materialize(key: str, fields: Fields, folder: Path) -> Sample:
    """A Sample whose files are written into ``folder`` (the readers decode files, not bytes)."""
    meta = json.loads(fields["json"])
    values: dict[str, str | Path] = {}
    for name, data in fields.items():
        modality, _, _ = name.partition(".")
        if name == "json":
            continue
        if modality in INLINE_MODALITIES:
            values[modality] = data.decode("utf-8")
        else:
            values[modality] = folder / f"{key}.{name}"
            values[modality].write_bytes(data)
    return Sample(int(meta.get("line") or 0), meta["id"], meta.get("label"), values)


def extract_shards(path: str | Path, out: str | Path) -> Manifest:
    """Unpack a shard set into ``out`` with a ``manifest.jsonl`` that lists it (used for held-out sets)."""
    folder, index = load_index(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for shard in index["shards"]:
        for key, fields in iter_shard(folder / shard["name"]):
            s = materialize(key, fields, out)
            row = {"id": s.id, "label": s.label}
            row.update({m: (v if m in INLINE_MODALITIES else Path(v).name) for m, v in s.values.items()})
            lines.append(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_manifest(out / "manifest.jsonl")
