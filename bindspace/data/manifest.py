"""Manifests of paired samples (JSON Lines or CSV): parse, check every file, split, count.

One sample per line (JSONL) or row (CSV, same column names). Keys are modality names plus the
optional ``id`` and ``label``: ``text`` holds the string itself, every other modality a file path
relative to the manifest's folder (absolute paths are allowed). A sample holds any subset of
modalities; empty values (``""``, ``null``, an empty CSV cell) mean "absent". The full format is
documented in ``docs/data.md``; this module is plain Python (no Hydra, no Lightning).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bindspace.data.readers import read_file, utf8_problem
from bindspace.errors import ConfigError, DataFileError
from bindspace.modalities import get_modality, list_modalities


# Modalities whose manifest value is the data itself rather than a file path.
def is_inline(modality: str) -> bool:
    """Whether manifests hold the value itself (text) rather than a file path, as the spec declares."""
    return get_modality(modality).inline


META_KEYS = ("id", "label", "group")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv",)


class ManifestError(ConfigError):
    """A manifest that cannot be used; the message names the file, the line and the key at fault."""


class ManifestEncodingError(ManifestError):
    """A manifest that is not UTF-8 text; the message names the file, the line and the byte offset."""


@dataclass(frozen=True)
class Sample:
    """One row of a manifest.

    Attributes:
        line: 1-based line in the manifest file (CSV counts the header), for messages.
        id: unique within its manifest; the 0-based row number as a string when not given.
        label: class name, or None.
        values: modality -> the text itself (inline modalities) or the file's path.
        raw_paths: modality -> the path exactly as written in the manifest (for messages).
        group: samples sharing a group (several captions of one sound) are each other's positives in
            multi-positive InfoNCE, not negatives; None: a group of its own.
        alternatives: inline modality -> all its values, when the manifest gave a list and the sample
            keeps them (``captions="sample"``: one is drawn per training visit; ``values`` holds the first).
        origin: the manifest's resolved path when the row gives neither ``id`` nor ``group``: its
            row-number id names a row of that file only (:func:`qualified_key`); None when the row names itself.
        identity: the :func:`sample_keys` of the manifest row this sample was written from, when it was
            unpacked from shards (its files are then copies, its id perhaps a row number of another manifest);
            None: computed from the sample itself.
    """

    line: int
    id: str
    label: str | None
    values: dict[str, str | Path]
    raw_paths: dict[str, str] = field(default_factory=dict)
    group: str | None = None
    alternatives: dict[str, tuple[str, ...]] = field(default_factory=dict)
    origin: str | None = None
    identity: tuple[str, ...] | None = None

    @property
    def modalities(self) -> frozenset[str]:
        return frozenset(self.values)

    def holds(self, modalities: Iterable[str]) -> bool:
        return all(m in self.values for m in modalities)


@dataclass
class Manifest:
    """A parsed manifest: its path and samples, in file order."""

    path: Path
    samples: list[Sample]

    @property
    def root(self) -> Path:
        """The folder relative paths are resolved against."""
        return self.path.parent

    def with_samples(self, samples: list[Sample]) -> Manifest:
        return Manifest(self.path, samples)

    def modality_counts(self) -> dict[str, int]:
        counts = Counter(m for s in self.samples for m in s.values)
        return {m: counts[m] for m in list_modalities() if counts[m]}

    def pair_counts(self) -> dict[str, int]:
        """``"a+b"`` (canonical modality order) -> samples holding both."""
        counts: Counter[str] = Counter()
        for s in self.samples:
            for a, b in itertools.combinations(canonical(s.values), 2):
                counts[pair_key(a, b)] += 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def label_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.label for s in self.samples if s.label is not None).items()))


def canonical(modalities: Iterable[str]) -> list[str]:
    """Modalities in registry order (image, text, audio, depth, thermal, imu)."""
    present = set(modalities)
    return [m for m in list_modalities() if m in present]


def pair_key(a: str, b: str) -> str:
    """The unordered pair's name, e.g. ``"image+audio"`` for both (image, audio) and (audio, image)."""
    return "+".join(canonical((a, b)))


CAPTION_MODES = ("all", "sample")


def load_manifest(path: str | os.PathLike[str], captions: str = "all") -> Manifest:
    """Parse a JSONL or CSV manifest (chosen by suffix) without opening the files it names.

    Args:
        path: ``.jsonl``/``.ndjson``/``.json`` (JSON Lines) or ``.csv``.
        captions: what a row whose text is a list becomes: ``all``, one sample per caption in one group
            (:func:`expand_alternatives`); ``sample``, one sample keeping them all (``Sample.alternatives``).

    Returns:
        The manifest; file paths are joined to the manifest's folder unless absolute.

    Raises:
        ManifestError: missing file, unknown suffix, malformed line, unknown key, wrong value type,
            a sample without modalities, duplicate ids, or no samples at all.
        ManifestEncodingError: a file that is not UTF-8 text (the message names the line and byte offset).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (or not a file)")
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        raise ManifestError(f"{path}: manifest must end in {', '.join(JSONL_SUFFIXES + CSV_SUFFIXES)}")
    text = _read_text(path)
    rows = _jsonl_rows(path, text) if suffix in JSONL_SUFFIXES else _csv_rows(path, text)
    if captions not in CAPTION_MODES:
        raise ValueError(f"captions must be one of {list(CAPTION_MODES)}, got {captions!r}")
    origin = str(path.resolve())
    samples = [_parse_row(path, line, index, row, origin) for index, (line, row) in enumerate(rows)]
    if captions == "all":
        samples = expand_alternatives(samples)
    if not samples:
        raise ManifestError(f"{path}: manifest holds no samples")
    seen: dict[str, int] = {}
    for s in samples:
        if s.id in seen:
            raise ManifestError(f"{path}:{s.line}: id {s.id!r} already used on line {seen[s.id]}")
        seen[s.id] = s.line
    return Manifest(path, samples)


def _read_text(path: Path) -> str:
    """The manifest's text; a file that is not UTF-8 fails naming the line and byte offset."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the manifest ({err.strerror or err})") from None
    problem = utf8_problem(data)
    if problem:
        raise ManifestEncodingError(f"{path}: {problem}")
    return data.decode("utf-8-sig")


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, row_text in enumerate(io.StringIO(text, newline=None), start=1):
        if not row_text.strip():
            continue
        try:
            row = json.loads(row_text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path}:{line}: not valid JSON ({err.msg} at column {err.colno})") from None
        except (ValueError, RecursionError) as err:  # e.g. an integer of more than 4300 digits, deep nesting
            raise ManifestError(f"{path}:{line}: not usable JSON ({type(err).__name__}: {err})") from None
        if not isinstance(row, dict):
            raise ManifestError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
        rows.append((line, row))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise ManifestError(f"{path}: empty CSV (no header row)")
        header = [h.strip() for h in header]
        duplicated = sorted(h for h, n in Counter(header).items() if n > 1)
        if duplicated:
            raise ManifestError(f"{path}:1: duplicate column(s) {duplicated}")
        rows = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise ManifestError(f"{path}:{reader.line_num}: {len(cells)} cells, the header has {len(header)}")
            rows.append((reader.line_num, dict(zip(header, cells))))
    except csv.Error as err:  # e.g. a field longer than csv.field_size_limit()
        raise ManifestError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
    return rows


def expand_alternatives(samples: Sequence[Sample]) -> list[Sample]:
    """Every sample holding several values of an inline modality (a caption list) -> one sample per value.

    Their ids are ``<id>#0``, ``<id>#1``, ...; their files are shared; they form one group (the sample's
    ``group``, else its id), so losses, splits and retrieval treat them as one source.
    """
    out = []
    for s in samples:
        if not s.alternatives:
            out.append(s)
            continue
        (m, texts), group = next(iter(s.alternatives.items())), s.group if s.group is not None else s.id
        out += [
            replace(s, id=f"{s.id}#{k}", values={**s.values, m: text}, group=group, alternatives={})
            for k, text in enumerate(texts)
        ]
    return out


def _parse_row(path: Path, line: int, index: int, row: dict[str, Any], origin: str) -> Sample:
    """One manifest row -> its sample; a list of texts (JSON Lines only) is kept in ``alternatives``;
    ``origin`` is kept when the row names itself by neither id nor group (its id is the row number)."""
    where = f"{path}:{line}"
    known = set(list_modalities())
    unknown = sorted(k for k in row if k not in known and k not in META_KEYS)
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {unknown}; expected modalities {sorted(known)}, id, label, group")
    present = {k: v for k, v in row.items() if v is not None and v != ""}
    values: dict[str, str | Path] = {}
    raw_paths: dict[str, str] = {}
    several: tuple[str, list[str]] | None = None  # (inline modality, its values): several captions of one sample
    for m in canonical(k for k in present if k in known):
        value = present[m]
        if is_inline(m) and isinstance(value, list):
            if not value or not all(isinstance(v, str) and v.strip() for v in value):
                raise ManifestError(
                    f"{where}: key {m!r}: a list must hold one or more non-empty strings (captions), got {value!r}"
                )
            if several is not None:
                raise ManifestError(f"{where}: keys {several[0]!r} and {m!r} are both lists; one list per row")
            several, value = (m, value), value[0]
        if not isinstance(value, str):
            kind = "the text itself" if is_inline(m) else "a file path"
            raise ManifestError(f"{where}: key {m!r} must be a string ({kind}), got {value!r}")
        if is_inline(m):
            if not value.strip():  # as in a list: whitespace is no text ("" means absent)
                raise ManifestError(f"{where}: key {m!r} must be a non-empty string (the text itself), got {value!r}")
            values[m] = value
        elif "\x00" in value:
            raise ManifestError(f"{where}: key {m!r}: a file path cannot hold a NUL character, got {value!r}")
        else:
            raw_paths[m] = value
            values[m] = path.parent / value  # an absolute value replaces the folder
    if not values:
        raise ManifestError(f"{where}: sample holds no modality (keys: {sorted(row)})")
    sample_id, label = _meta(where, present, "id", str(index)), _meta(where, present, "label", None)
    alternatives = {several[0]: tuple(several[1])} if several is not None and len(several[1]) > 1 else {}
    group = _meta(where, present, "group", None)
    unnamed = "id" not in present and group is None
    return Sample(line, sample_id, label, values, raw_paths, group, alternatives, origin=origin if unnamed else None)


def _meta(where: str, row: dict[str, Any], key: str, default: str | None) -> str | None:
    value = row.get(key, default)
    if isinstance(value, bool) or not isinstance(value, str | int | type(None)):
        raise ManifestError(f"{where}: key {key!r} must be a string or an integer, got {value!r}")
    return None if value is None else str(value)


# ---- files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileProblem:
    """A file of a sample that cannot be used (missing, empty, undecodable, wrongly shaped ...)."""

    line: int
    sample_id: str
    modality: str
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"line {self.line} ({self.modality}): {self.path}: {self.reason}"


def file_jobs(manifest: Manifest, modalities: Iterable[str] | None = None) -> list[tuple[Sample, str, Path]]:
    """Every (sample, modality, path) of file-backed modalities, optionally only ``modalities``."""
    wanted = None if modalities is None else set(modalities)
    return [
        (s, m, v)
        for s in manifest.samples
        for m, v in s.values.items()
        if not is_inline(m) and (wanted is None or m in wanted)
    ]


Keep = Callable[[str, Path, Any], None]


def _probe(job: tuple[Sample, str, Path], keep: Keep | None = None) -> FileProblem | None:
    sample, modality, path = job
    try:
        decoded = read_file(modality, path)
        if keep is not None:
            keep(modality, path, decoded)  # e.g. audio kept at the model's rate; other arrays are dropped
    except DataFileError as err:
        return FileProblem(sample.line, sample.id, modality, path, err.reason)
    return None


def check_workers(workers: Any, key: str) -> None:
    """Refuse a bad decoding pool size up front (the thread pool would refuse it after the manifests load).

    Args:
        workers: threads, or None for the pool's default.
        key: the setting's name, for the message (``data.scan_workers``, ``--workers``).

    Raises:
        ConfigError: ``workers`` is not None nor an integer >= 1.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"{key} must be an integer >= 1 (threads) or null (cpus + 4, at most 32), got {workers!r}")


def scan_files(
    manifest: Manifest, modalities: Iterable[str] | None = None, workers: int | None = None, keep: Keep | None = None
) -> list[FileProblem]:
    """Decode every file once with the readers, in a thread pool; return the problems in file order.

    Threads, not processes: decoders (PIL, libsndfile, NumPy I/O) release the GIL, and threads
    start instantly without re-importing torch in each child.

    Args:
        manifest: the manifest to check.
        modalities: only files of these modalities (default: all).
        workers: pool size; default ``min(32, cpu_count + 4)``.
        keep: called as ``keep(modality, path, decoded)`` for every file that decodes (from the
            pool's threads), so a caller can keep what it needs instead of decoding again.
    """
    jobs = file_jobs(manifest, modalities)
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [p for p in pool.map(functools.partial(_probe, keep=keep), jobs) if p is not None]


def outside_paths(manifest: Manifest) -> list[tuple[Sample, str, str]]:
    """Paths that leave the manifest's folder: ``(sample, modality, why)``; allowed, but worth showing.

    ``why`` is ``"absolute path"``, ``"'..' leaves the folder"`` or ``"symlink to outside the folder"``.
    """
    root = manifest.root.resolve()
    out = []
    for s in manifest.samples:
        for m, raw in s.raw_paths.items():
            why = _escape_reason(root, raw, Path(s.values[m]))
            if why:
                out.append((s, m, why))
    return out


def _escape_reason(root: Path, raw: str, path: Path) -> str | None:
    if Path(raw).is_absolute():
        return "absolute path"
    if os.path.normpath(raw).split(os.sep)[0] == os.pardir:
        return "'..' leaves the folder"
    if not path.resolve().is_relative_to(root):
        return "symlink to outside the folder"
    return None


def drop_samples(manifest: Manifest, problems: Sequence[FileProblem]) -> tuple[Manifest, int]:
    """The manifest without the samples that have a bad file, and how many were dropped."""
    bad = {p.sample_id for p in problems}
    kept = [s for s in manifest.samples if s.id not in bad]
    return manifest.with_samples(kept), len(manifest.samples) - len(kept)


def format_problems(problems: Sequence[FileProblem], limit: int | None = 10) -> str:
    """One line per bad file; past ``limit`` lines, a count of the rest."""
    shown = problems if limit is None else problems[:limit]
    lines = [f"  {p}" for p in shown]
    if len(problems) > len(shown):
        lines.append(f"  ... and {len(problems) - len(shown)} more")
    return "\n".join(lines)


# ---- splits -----------------------------------------------------------------------------------


def id_fraction(sample_id: str) -> float:
    """A stable pseudo-random number in [0, 1) from the id alone (same on every machine and seed)."""
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def source_key(sample: Sample) -> str:
    """What must not straddle a split: the sample's ``group`` when it names one (several captions of
    one sound are rows holding the same file), else its ``id``.

    Unique within one manifest only (a row number repeats in every manifest without ids); where samples of
    several manifests meet, use :func:`qualified_key`. The held-out split hashes this key, one manifest at a
    time, so the split does not change with the folder the data sits in.
    """
    return sample.id if sample.group is None else f"group:{sample.group}"


def qualified_key(sample: Sample) -> str:
    """The :func:`source_key`, qualified by the manifest (``<its resolved path>#<key>``) when it is a row
    number: what names the sample among the samples of several manifests (``data.sources``, val and test)."""
    return source_key(sample) if sample.origin is None else f"{sample.origin}#{source_key(sample)}"


def sample_keys(sample: Sample) -> tuple[str, ...]:
    """What makes two samples one, for keeping what evaluation fits apart from what it scores.

    Rows of different manifests (or of one) are one sample when they share any of these keys: the
    :func:`qualified_key` (an ``id`` or ``group`` the manifest gives; a row number only counts within its
    own manifest, so it is qualified by the manifest's path), every file the sample holds (its resolved
    path: the same file under another id is the same sample), and, for a sample without files, its text.
    A sample unpacked from shards has the keys of the row it was written from (``Sample.identity``).
    """
    if sample.identity is not None:
        return sample.identity
    files = [f"file:{Path(v).resolve()}" for m, v in sample.values.items() if not is_inline(m)]
    return f"id:{qualified_key(sample)}", *(files or [f"{m}:{v}" for m, v in sample.values.items()])


def split_by_id(samples: Sequence[Sample], val_fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, val): a sample goes to val when ``id_fraction(source_key) < val_fraction``.

    Depends on the ids (and groups) only, not on the seed or the order of the rows, so every run and
    every seed holds out the same samples, and adding rows never moves an existing sample across the
    split. The rows of one group go to the same side: a sound held out is never trained on through
    another of its captions. ``samples`` are those of one manifest (``data.sources`` are split one by one).
    """
    train, val = [], []
    for s in samples:
        (val if id_fraction(source_key(s)) < val_fraction else train).append(s)
    return train, val


def existing_path(value: str | Path, key: str) -> Path:
    """The path a data key names, checked to exist before anything is read (the error names the key)."""
    path = Path(value)
    if not path.exists():
        where = "" if path.is_absolute() else f" (looked for {path.absolute()})"
        raise ConfigError(f"{key}={value}: no such file or folder{where}")
    return path


def parse_sources(train: str | None, sources: Sequence[Any] | None) -> list[tuple[Path, float]]:
    """``data.train`` or ``data.sources`` -> [(manifest path, weight)], every path checked to exist."""
    if (train is None) == (not sources):
        raise ConfigError("data: give exactly one of data.train=PATH or data.sources=[{path: ..., weight: ...}]")
    if train is not None:
        return [(existing_path(train, "data.train"), 1.0)]
    out = []
    for i, src in enumerate(sources):
        src = {"path": src} if isinstance(src, str) else dict(src)
        unknown = sorted(set(src) - {"path", "weight"})
        if unknown or "path" not in src:
            raise ConfigError(f"data.sources[{i}]: expected keys path and weight, got {sorted(src)}")
        weight = src.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < float("inf"):
            raise ConfigError(f"data.sources[{i}].weight must be a positive number, got {weight!r}")
        out.append((existing_path(src["path"], f"data.sources[{i}].path"), float(weight)))
    return out
