"""Webdataset-style tar shards of a manifest (streamed by ``data=shards``, see shard_datamodule.py).

A shard ``shard-000000.tar`` holds consecutive samples; each sample's files share one key, the
sample's position in the manifest (``000000042.json`` with id, label, manifest line, group and the
sample's identity, ``000000042.image.png``, ``000000042.text.txt``, ...), stored byte for byte as in the
original files. The identity (``keys``) is the manifest row's
:func:`~bindspace.data.manifest.sample_keys`: its id (a row number qualified by the manifest's path) and
its files' resolved paths, so held-out sets unpacked from shards are told apart, or found to be the same
samples, exactly as the manifests they were written from. ``index.json`` beside the shards counts
samples, modalities and pairs per shard. The files are plain tar, so the ``webdataset`` library reads
them too. Streaming them for training is ``bindspace.data.shard_datamodule`` (``data=shards``), which
first indexes every shard with :func:`check_shards` (member names, header sizes against the file, each
sample's JSON and caption; no payload is decoded) and reads ``index.json`` with :func:`load_index`,
which checks its layout.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import stat
import tarfile
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from bindspace.data.manifest import (
    Manifest,
    ManifestError,
    Sample,
    canonical,
    is_inline,
    load_manifest,
    pair_key,
    sample_keys,
)
from bindspace.data.readers import supported_suffixes, utf8_problem
from bindspace.errors import ConfigError, DataFileError
from bindspace.modalities import list_modalities
from bindspace.modalities.files import InMemoryFile
from bindspace.utils.io import atomic_write, atomic_write_json

FORMAT = "bindspace-shards/2"  # /2: every sample's JSON holds its identity ("keys")
FORMAT_WITHOUT_IDENTITY = "bindspace-shards/1"  # still streamed for training; refused as a held-out set
INDEX_NAME = "index.json"
SHARD_NAME = "shard-{:06d}.tar"
Fields = dict[str, bytes]  # "json", "image.png", "text.txt", ... -> bytes
MAX_META_BYTES = 1 << 20  # a sample's JSON or caption member above this size is a corrupt header, not data
REWRITE = "rewrite the shards with `bindspace-data shard`"


def sample_fields(sample: Sample) -> Fields:
    """The members of one sample, keyed by what follows ``<key>.`` in the tar."""
    meta: dict[str, Any] = {"id": sample.id, "label": sample.label, "line": sample.line}
    if sample.group is not None:
        meta["group"] = sample.group
    meta["keys"] = list(sample_keys(sample))  # the id alone may be a row number, which names no sample here
    fields = {"json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
    for m in canonical(sample.values):
        value = sample.values[m]
        if is_inline(m):
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


def check_out_folder(out: str | Path) -> None:
    """Refuse, before any file is decoded, a shard folder that a file stands in the place of."""
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == out else f" ({existing} is not a folder)"
        raise ConfigError(f"{out}: cannot write shards there: not a folder{where}")


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
    check_out_folder(out)
    if check:
        from bindspace.data.manifest_datamodule import check_manifests  # its decoding pool: imported when used

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
        **group_counts(manifest.samples),
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
    except (OSError, ValueError, RecursionError) as err:
        raise ManifestError(
            f"{file}: cannot read the shard index ({err}); write shards with `bindspace-data shard`"
        ) from None
    if not isinstance(index, dict) or index.get("format") not in (FORMAT, FORMAT_WITHOUT_IDENTITY):
        raise ManifestError(f"{file}: not a {FORMAT} index")
    problem = _index_problem(index)
    if problem:
        raise ManifestError(f"{file}: {problem}; {REWRITE}")
    return file.parent, index


def check_identity(folder: Path, index: Mapping[str, Any]) -> None:
    """Refuse, as a held-out set, shards whose samples carry no identity (written before ``bindspace-shards/2``).

    Their ids are row numbers for a manifest without ids, which name no sample outside that manifest: what
    evaluation fits and what it scores could not be told apart (or be told apart when they are the same).

    Raises:
        ManifestError: one line naming the index and the command that rewrites the shards.
    """
    if index.get("format") == FORMAT_WITHOUT_IDENTITY:
        manifest = index.get("manifest") or "MANIFEST"
        raise ManifestError(
            f"{Path(folder) / INDEX_NAME}: {FORMAT_WITHOUT_IDENTITY} shards record no sample identity, which held-out "
            f"sets need (fitted and scored samples are kept apart by it); rewrite them with "
            f"`bindspace-data shard {manifest} {folder}`"
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_counts(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _is_count(v) for k, v in value.items())


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _index_problem(index: Mapping[str, Any]) -> str | None:
    """What is wrong with the layout of an index that ``write_shards`` did not write, or None."""
    if not _is_count(index.get("num_samples")):
        return f"num_samples must be a count, got {_short(index.get('num_samples'))}"
    for key in ("modalities", "pairs", "labels"):
        if not _is_counts(index.get(key)):
            return f"{key} must map names to counts, got {_short(index.get(key))}"
    shards = index.get("shards")
    if not isinstance(shards, list):
        return f"shards must be a list, got {type(shards).__name__}"
    names = set()
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            return f"shards[{i}] must be an object, got {_short(shard)}"
        name = shard.get("name")
        # A plain file name: an index cannot point a reader at files outside its folder.
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".tar") or "\x00" in name:
            return f"shards[{i}].name must be a .tar file name in the index's folder, got {_short(name)}"
        if name in names:
            return f"shards[{i}].name {_short(name)} is listed twice"
        names.add(name)
        if not _is_count(shard.get("samples")):
            return f"shards[{i}].samples must be a count, got {_short(shard.get('samples'))}"
        for key in ("modalities", "pairs"):
            if not _is_counts(shard.get(key)):
                return f"shards[{i}].{key} must map names to counts, got {_short(shard.get(key))}"
    return None


# ---- the startup check -------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSample:
    """What the check learnt about one sample of a shard (no payload decoded)."""

    id: str
    label: str | None
    fields: tuple[str, ...]  # members besides json: "image.png", "text.txt", ...
    group: str | None = None

    @property
    def modalities(self) -> list[str]:
        return canonical(f.partition(".")[0] for f in self.fields)


def group_counts(samples: Iterable[Sample | ShardSample]) -> dict[str, int]:
    """``grouped_samples`` (samples naming a ``group``) and ``groups`` (distinct names), for ``index.json``."""
    named = [s.group for s in samples if s.group is not None]
    return {"grouped_samples": len(named), "groups": len(set(named))}


@dataclass
class ShardCheck:
    """The verdict on one shard file.

    Attributes:
        path: the shard.
        samples: key -> sample, for every sample whose JSON parsed (in stored order; see ``bad_keys``).
        problems: one line each, ``"member <name>: <what is wrong>"`` (or what is wrong with the whole file).
        bad_keys: samples with a bad member (left out under ``data.on_error=skip``).
        unreadable: the file cannot be used at all (missing, not a tar, truncated, not what the index lists).
    """

    path: Path
    samples: dict[str, ShardSample] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    bad_keys: set[str] = field(default_factory=set)
    unreadable: bool = False

    def usable(self) -> list[ShardSample]:
        return [] if self.unreadable else [s for k, s in self.samples.items() if k not in self.bad_keys]


def _member_problem(name: str, field_name: str, info: tarfile.TarInfo, read: Any) -> tuple[str | None, Any]:
    """``(problem, parsed json or None)`` for one member; reads only the small json and text members."""
    modality, _, suffix = field_name.partition(".")
    if field_name == "json" or is_inline(modality):
        if info.size > MAX_META_BYTES:
            return f"member {name}: {info.size} bytes, more than {MAX_META_BYTES} for sample metadata or text", None
        data = read()
        if len(data) != info.size:
            return f"member {name}: {len(data)} of its {info.size} bytes could be read (truncated)", None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return f"member {name}: {utf8_problem(data)}", None
        if field_name != "json":
            return (f"member {name}: wrong suffix, expected {modality}.txt" if suffix != "txt" else None), None
        try:
            meta = json.loads(text)
        except (ValueError, RecursionError) as err:
            return f"member {name}: not valid JSON ({err})", None
        return _meta_problem(name, meta), meta
    if modality not in supported_suffixes():
        return f"member {name}: {modality!r} is not a modality", None
    if f".{suffix}" not in supported_suffixes()[modality]:
        return f"member {name}: {modality} files need one of {', '.join(supported_suffixes()[modality])}", None
    if info.size == 0:
        return f"member {name}: empty (0 bytes)", None
    return None, None


def _meta_problem(name: str, meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return f"member {name}: expected a JSON object, got {type(meta).__name__}"
    for key, ok in (
        ("id", lambda v: isinstance(v, str | int) and not isinstance(v, bool)),
        ("label", lambda v: v is None or isinstance(v, str)),
        ("group", lambda v: v is None or isinstance(v, str)),
        ("line", lambda v: v is None or _is_count(v)),
        ("keys", lambda v: v is None or (isinstance(v, list) and v and all(isinstance(k, str) for k in v))),
    ):
        if (key == "id" and key not in meta) or not ok(meta.get(key)):
            return f"member {name}: key {key!r} is {_short(meta.get(key, 'missing'))}"
    return None


def check_shard(path: Path, listed: Mapping[str, Any] | None = None, keyed: bool = False) -> ShardCheck:
    """Index one shard without decoding payloads: every member's name, header and size, every sample's JSON.

    Reads the tar headers (seeking over payloads) and the small json and caption members only.

    Args:
        path: the shard file.
        listed: its entry in ``index.json``; its sample and modality counts must match the file's.
        keyed: every sample's JSON must hold its identity, ``keys`` (``bindspace-shards/2``); one without is a
            bad sample like any other (left out under ``data.on_error=skip``, an error before any compute otherwise).
    """
    check = ShardCheck(Path(path))

    def fatal(problem: str) -> ShardCheck:
        check.problems.append(problem)
        check.unreadable = True
        return check

    try:
        info = os.stat(path)
    except OSError as err:
        return fatal(f"listed in {INDEX_NAME} but cannot be opened ({err.strerror or err})")
    if not stat.S_ISREG(info.st_mode):
        return fatal("not a regular file")
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    metas: dict[str, Any] = {}
    last = last_name = None
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                key, _, field_name = Path(name).name.partition(".")
                if member.offset_data + member.size > info.st_size:
                    present = max(0, info.st_size - member.offset_data)
                    return fatal(f"member {name}: {member.size} bytes in its header, {present} in the file (truncated)")
                if not key.isdigit() or not key.isascii() or not field_name:
                    check.problems.append(f"member {name}: name is not <digits>.<field> as bindspace writes it")
                    check.bad_keys.add(key)
                    continue
                if key != last and key in members:
                    check.problems.append(f"member {name}: sample {key}'s members are not stored together")
                    check.bad_keys.add(key)
                last, last_name = key, name
                fields = members.setdefault(key, {})
                if field_name in fields:
                    check.problems.append(f"member {name}: stored twice")
                    check.bad_keys.add(key)
                fields[field_name] = member
                problem, meta = _member_problem(name, field_name, member, lambda m=member: tar.extractfile(m).read())
                if problem:
                    check.problems.append(problem)
                    check.bad_keys.add(key)
                elif field_name == "json" and keyed and meta.get("keys") is None:
                    check.problems.append(f"member {name}: no 'keys' (its identity), which {FORMAT} samples hold")
                    check.bad_keys.add(key)
                elif field_name == "json":
                    metas[key] = meta
    except Exception as err:  # tarfile fails with TarError, OSError, EOFError, ValueError ... on damaged bytes
        after = f" after member {last_name}" if last_name else ""
        return fatal(f"not a readable tar shard{after} ({type(err).__name__}: {err})")
    for key, fields in members.items():
        if "json" not in fields:
            check.problems.append(f"member {key}.json: missing (sample {key} has {sorted(fields)})")
            check.bad_keys.add(key)
        if key in metas:
            meta = metas[key]
            label = meta.get("label")
            fields_held = tuple(f for f in fields if f != "json")
            check.samples[key] = ShardSample(str(meta["id"]), label, fields_held, meta.get("group"))
    if listed is not None:
        counts = Counter(f.partition(".")[0] for fields in members.values() for f in fields if f != "json")
        held = {m: counts[m] for m in canonical(counts)}
        if len(members) != listed["samples"] or held != dict(listed["modalities"]):
            return fatal(
                f"{INDEX_NAME} lists {listed['samples']} samples ({dict(listed['modalities'])}), the file holds "
                f"{len(members)} ({held})"
            )
    return check


def check_shards(folder: Path, index: Mapping[str, Any], workers: int | None = None) -> list[ShardCheck]:
    """:func:`check_shard` for every shard of an index, in index order.

    Parsing tar headers is Python work that holds the GIL: on a local disk one thread is fastest (about
    0.1 ms per sample); ``workers`` threads overlap the waits of slow (network) storage.
    """
    paths = [(Path(folder) / e["name"], e) for e in index["shards"]]
    keyed = index.get("format") == FORMAT
    if workers is None or workers <= 1 or len(paths) <= 1:
        return [check_shard(path, entry, keyed) for path, entry in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pe: check_shard(*pe, keyed), paths))


def usable_index(index: Mapping[str, Any], checks: Sequence[ShardCheck]) -> dict[str, Any]:
    """The index recounted from what the check found usable: unreadable shards and bad samples left out."""
    shards, everything = [], []
    for entry, check in zip(index["shards"], checks):
        if check.unreadable:
            continue
        samples = check.usable()
        everything += samples
        shards.append({"name": entry["name"], "samples": len(samples), **_counts(samples)})
    labels = Counter(s.label for s in everything if s.label is not None)
    return {
        **index,
        "num_samples": len(everything),
        **_counts(everything),
        "labels": dict(sorted(labels.items())),
        **group_counts(everything),
        "shards": shards,
    }


def _counts(samples: Iterable[ShardSample]) -> dict[str, dict[str, int]]:
    modalities: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    for s in samples:
        held = s.modalities
        modalities.update(held)
        pairs.update(pair_key(a, b) for a, b in itertools.combinations(held, 2))
    return {
        "modalities": {m: modalities[m] for m in canonical(modalities)},
        "pairs": dict(sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def iter_shard(path: Path, modalities: Collection[str] | None = None) -> Iterator[tuple[str, Fields]]:
    """``(key, fields)`` of each sample in a shard, in stored order.

    Args:
        path: the tar file.
        modalities: read only these modalities' members (and ``json``); the others are seeked over.

    Raises:
        DataFileError: the file cannot be read (the message names the last member read).
    """
    key, fields, last = None, {}, None
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
                    if len(fields[name]) != member.size:
                        raise tarfile.ReadError(f"member {member.name} is truncated")
                last = member.name
    except DataFileError:
        raise
    except Exception as err:  # TarError, OSError, EOFError ... on damaged bytes
        after = f" after member {last}" if last else ""
        raise DataFileError(path, f"cannot read tar shard{after}: {err or type(err).__name__}") from err
    if key is not None:
        yield key, fields


def materialize(key: str, fields: Fields, folder: Path | None = None, source: Path | None = None) -> Sample:
    """A Sample whose file members stay in memory: :class:`InMemoryFile` values named ``<key>.<field>``,
    which the readers decode like files (no temporary file per sample).

    Args:
        key, fields: a sample of :func:`iter_shard`.
        folder: unused (members were written here before the readers took bytes); kept for callers.
        source: the shard it came from, named by errors.

    Raises:
        DataFileError: a missing or malformed json member, or a caption that is not UTF-8 (names the shard
            and the member).
    """

    def bad(name: str, why: str) -> DataFileError:
        return DataFileError(source or Path(f"{key}.tar"), f"member {key}.{name}: {why}")

    if "json" not in fields:
        raise bad("json", "missing")
    try:
        meta = json.loads(fields["json"].decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise bad("json", f"not valid JSON ({err})") from None
    problem = _meta_problem(f"{key}.json", meta)
    if problem:
        raise bad("json", problem.partition(": ")[2])
    values: dict[str, str | InMemoryFile] = {}
    for name, data in fields.items():
        modality, _, _ = name.partition(".")
        if name == "json":
            continue
        if is_inline(modality):
            try:
                values[modality] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise bad(name, str(utf8_problem(data))) from None
        else:
            values[modality] = InMemoryFile(f"{key}.{name}", data)
    identity = tuple(meta["keys"]) if meta.get("keys") is not None else None
    line, label, group = int(meta.get("line") or 0), meta.get("label"), meta.get("group")
    return Sample(line, str(meta["id"]), label, values, group=group, identity=identity)


def extract_shards(path: str | Path, out: str | Path, select: Mapping[str, Collection[str]] | None = None) -> Manifest:
    """Unpack a shard set into ``out`` with a ``manifest.jsonl`` that lists it (used for held-out sets).

    Args:
        path: the shard folder or its index.
        out: the folder to unpack into (files are named ``<key>.<field>``, the members' own names).
        select: shard name -> keys of samples to leave out; when given, only the shards it names are read.

    Returns:
        The unpacked manifest; each sample keeps the identity it was written with (``Sample.identity``).

    Raises:
        ManifestError: shards that record no sample identity (:func:`check_identity`).
        DataFileError: a sample without it in a set that records it, naming the shard and the member.
    """
    folder, index = load_index(path)
    check_identity(folder, index)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines, identity = [], {}
    for shard in index["shards"]:
        if select is not None and shard["name"] not in select:
            continue
        left_out = (select or {}).get(shard["name"], ())
        for key, fields in iter_shard(folder / shard["name"]):
            if key in left_out:
                continue
            s = materialize(key, fields, source=folder / shard["name"])
            if s.identity is None:
                raise DataFileError(folder / shard["name"], f"member {key}.json: no 'keys' (its identity); {REWRITE}")
            identity[s.id] = s.identity
            for v in s.values.values():
                if isinstance(v, InMemoryFile):
                    (out / v.name).write_bytes(v.data)  # held-out members are decoded once, from files
            row = {"id": s.id, "label": s.label, "group": s.group}
            row.update({m: (v if is_inline(m) else v.name) for m, v in s.values.items()})
            lines.append(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = load_manifest(out / "manifest.jsonl")
    return manifest.with_samples([replace(s, identity=identity[s.id]) for s in manifest.samples])
