"""``bindspace-data``: check a manifest's files, or write it as tar shards.

    bindspace-data check data/train.jsonl            # counts, labels, every bad file; exit 0 clean, 1 problems
    bindspace-data check data/train.jsonl --context-length 77   # captions cut by that text context
    bindspace-data shard data/train.jsonl shards/ --shard-size 1000

``check`` also counts the captions each model preset's text context cuts (or the one given with
``--context-length``/``--tokenizer``), with a warning line above 1%; cut captions do not change the exit
status. Exit status: 0 clean, 1 problems found (bad files, malformed manifest), 2 usage error or a
manifest that is not UTF-8 text (one line on stderr naming the file, line and byte offset).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from bindspace.cli import OneLineArgumentParser
from bindspace.data.checks import TRUNCATION_WARN, caption_truncation, text_lengths, truncation_message
from bindspace.data.manifest import (
    CSV_SUFFIXES,
    JSONL_SUFFIXES,
    FileProblem,
    Manifest,
    ManifestEncodingError,
    ManifestError,
    drop_samples,
    file_jobs,
    load_manifest,
    outside_paths,
    scan_files,
)
from bindspace.errors import ConfigError
from bindspace.modalities import get_modality
from bindspace.modalities.text import TextInput

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def _threads(text: str) -> int:
    """``--workers``: a thread count, refused in one line before any manifest is read."""
    if not text.lstrip("+").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (decoding threads), got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="bindspace-data",
        description=__doc__.split("\n")[0],
        epilog="examples:\n  bindspace-data check data/train.jsonl\n"
        "  bindspace-data shard data/train.jsonl shards/train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    check = sub.add_parser(
        "check",
        help="decode every file of a manifest and report problems",
        epilog="example:\n  bindspace-data check data/train.jsonl --workers 8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("manifest", type=Path, help="a .jsonl or .csv manifest")
    check.add_argument("--workers", type=_threads, default=None, help="decoding threads (default: cpus + 4, max 32)")
    check.add_argument("--context-length", type=int, default=None, help="text context to check captions against")
    check.add_argument(
        "--tokenizer", default="bytes", help="with --context-length: bytes, clip_bpe or a transformers tokenizer"
    )
    shard = sub.add_parser(
        "shard",
        help="write a manifest as webdataset-style tar shards plus index.json",
        epilog="example:\n  bindspace-data shard data/train.jsonl shards/train --shard-size 1000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shard.add_argument("manifest", type=Path, help="a .jsonl or .csv manifest")
    shard.add_argument("out", type=Path, help="folder for shard-NNNNNN.tar and index.json")
    shard.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    shard.add_argument("--skip-bad", action="store_true", help="leave out samples with bad files instead of failing")
    shard.add_argument("--workers", type=_threads, default=None, help="decoding threads for the check")
    return parser


def _table(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return [f"{title}: none"]
    width = max(len(k) for k in counts)
    return [f"{title}:"] + [f"  {k:<{width}}  {v}" for k, v in counts.items()]


def describe(manifest: Manifest) -> list[str]:
    """Counts per modality, per pair and per label, and the paths that leave the manifest's folder."""
    labels = manifest.label_counts()
    labelled = sum(labels.values())
    lines = [f"manifest: {manifest.path} ({len(manifest.samples)} samples)"]
    lines += _table("samples per modality", manifest.modality_counts())
    lines += _table("samples per pair", manifest.pair_counts())
    lines += _table(f"labels ({len(labels)} classes, {labelled} of {len(manifest.samples)} samples)", labels)
    outside = outside_paths(manifest)
    if outside:
        lines.append(f"paths outside the manifest folder (allowed): {len(outside)}")
        lines += [f"  line {s.line} ({m}): {s.raw_paths[m]} [{why}]" for s, m, why in outside]
    return lines


def _load(path: Path) -> Manifest | int:
    """The manifest, or an exit status after printing why it cannot be read."""
    if not path.is_file():
        print(f"bindspace-data: {path}: no such manifest file", file=sys.stderr)
        return EXIT_USAGE
    if path.suffix.lower() not in JSONL_SUFFIXES + CSV_SUFFIXES:
        print(f"bindspace-data: {path}: expected one of {', '.join(JSONL_SUFFIXES + CSV_SUFFIXES)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return load_manifest(path)
    except ManifestEncodingError as err:  # not a text file we can read at all: one line, like a usage error
        print(f"bindspace-data: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ManifestError as err:
        print(f"bad manifest: {err}")
        return EXIT_PROBLEMS


def _scan(manifest: Manifest, workers: int | None) -> list[FileProblem]:
    start = time.perf_counter()
    problems = scan_files(manifest, workers=workers)
    seconds = time.perf_counter() - start
    print(f"decoded {len(file_jobs(manifest))} files in {seconds:.1f} s: {len(problems)} bad")
    for p in problems:
        print(f"  {p}")
    return problems


def preset_text_inputs() -> dict[str, TextInput]:
    """``model=<preset>`` -> its text input: the text spec's preset of that name (or its defaults), for
    every packaged ``configs/model/<preset>.yaml``."""
    spec = get_modality("text")
    presets = (p.name for p in (resources.files("bindspace.configs") / "model").iterdir())
    return {
        f"model={name[:-5]}": spec.default_config(name[:-5]).input for name in sorted(presets) if name.endswith(".yaml")
    }


def caption_report(manifest: Manifest, text_inputs: dict[str, TextInput]) -> list[str]:
    """Per text config, how many of the manifest's captions its context cuts (a warning line above 1%)."""
    captions = [s.values["text"] for s in manifest.samples if "text" in s.values]
    if not captions:
        return []
    lines = []
    for name, text_input in text_inputs.items():
        truncated, total = caption_truncation(captions, text_input)
        longest = max(text_lengths(captions, text_input))
        message = truncation_message(truncated, total, text_input.context_length, name)
        warn = "warning: " if truncated / total > TRUNCATION_WARN else ""
        lines.append(f"{warn}{message} (longest caption: {longest} tokens)")
    return lines


def check(args: argparse.Namespace) -> int:
    manifest = _load(args.manifest)
    if isinstance(manifest, int):
        return manifest
    print("\n".join(describe(manifest)))
    if args.context_length is not None:
        if args.context_length < 3:
            raise ConfigError(f"--context-length must be at least 3, got {args.context_length}")
        text_inputs = {"--context-length": TextInput(tokenizer=args.tokenizer, context_length=args.context_length)}
    else:
        text_inputs = preset_text_inputs()
    for line in caption_report(manifest, text_inputs):
        print(line)
    return EXIT_PROBLEMS if _scan(manifest, args.workers) else EXIT_CLEAN


def shard(args: argparse.Namespace) -> int:
    from bindspace.data.shards import check_out_folder, write_shards  # imports Lightning; `check` starts faster

    if args.shard_size < 1:
        print(f"bindspace-data: --shard-size must be >= 1, got {args.shard_size}", file=sys.stderr)
        return EXIT_USAGE
    check_out_folder(args.out)  # a ConfigError: one line, exit 2, before every file is decoded
    manifest = _load(args.manifest)
    if isinstance(manifest, int):
        return manifest
    problems = _scan(manifest, args.workers)
    if problems and not args.skip_bad:
        print("no shards written; fix the files above or pass --skip-bad to leave their samples out")
        return EXIT_PROBLEMS
    manifest, dropped = drop_samples(manifest, problems)
    if not manifest.samples:
        print("no samples left to write")
        return EXIT_PROBLEMS
    index = write_shards(manifest, args.out, args.shard_size, check=False)
    skipped = f", {dropped} sample(s) with bad files left out" if dropped else ""
    print(f"wrote {index['num_samples']} samples in {len(index['shards'])} shard(s) to {args.out}{skipped}")
    return EXIT_CLEAN


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 clean, 1 problems, 2 usage or a manifest that is not UTF-8)."""
    args = _parser().parse_args(argv)  # argparse exits with 2 on bad usage
    try:
        return {"check": check, "shard": shard}[args.command](args)
    except ConfigError as err:
        print(f"bindspace-data: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
