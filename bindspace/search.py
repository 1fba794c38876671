"""``bindspace-search``: search exported embeddings of any mix of modalities with a file or a text.

    bindspace-search index=images.safetensors,audio.safetensors query="a red sphere" ckpt_path=last.ckpt
    bindspace-search index=images.safetensors query=clips/dog.wav ckpt_path=last.ckpt k=5
    bindspace-search index=a.safetensors,b.safetensors query=captions.safetensors mitigation=center ckpt_path=...

``index`` is a comma-separated list of files written by ``bindspace-embed``; they are searched as one
index by exact inner product (= cosine on unit-norm embeddings), a block of queries at a time. ``query`` is an exported
embeddings file (every row is a query), a data file (embedded with ``ckpt_path``; its modality from
``query_modality=`` or its suffix) or otherwise a text string. ``mitigation`` closes the modality gap
with stats stored in the checkpoint: ``center`` (per-modality centring, queries and index alike) or
``bridge`` (index rows mapped onto the query modality by the stored bridges). Prints, per query,
rank, score, modality and id (``format=json`` prints one JSON object per query instead). Tied scores
are ranked by bindspace's one rule: each tied hit gets its expected rank over random orders of the
tied items ("2-4" in the table: tied over positions 2 to 4; ``rank`` and ``tied`` in JSON).

Every embeddings file (index and query) is checked before searching (:func:`bindspace.embed.load_embeddings`:
floating (N, D), finite, unit-norm rows, ids a list of N unique strings, a registered modality; all of one
D), and a bad one stops the search with one line naming it, exit 2. Rows that are not unit-norm would
outrank every other row, so they are refused unless ``renormalize=true``, which renormalises them with
one warning line counting them per file.

Scores across two models mean nothing, so the index files, an embeddings-file query and ``ckpt_path`` must
come from one checkpoint: by the SHA-256 of its weights that ``bindspace-embed`` records (unchanged when
``bindspace-eval`` stores gap statistics in the file), or by path for files written before it recorded
one; anything else stops the search with one line, exit 2. Files that record no checkpoint (saved from
Python, e.g. mapped into B's space by a ``ConnectedSpace``) are not compared.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bindspace.cli import KeyValueCommand, did_you_mean, run_command
from bindspace.embed import EmbeddingFileError, load_embeddings
from bindspace.errors import ConfigError

MITIGATIONS = ("none", "center", "bridge")
COMMAND = KeyValueCommand(
    prog="bindspace-search",
    summary="Search exported embeddings of any mix of modalities with a file, an embeddings file or a text.",
    required={
        "index": "comma-separated .safetensors files written by bindspace-embed, searched as one index",
        "query": "an embeddings file (every row a query), a data file, or otherwise a text string",
    },
    options={
        "ckpt_path": ("", "the checkpoint that embeds a data-file or text query (and holds the gap statistics)"),
        "query_modality": ("", "the modality of a data-file query when its suffix does not say"),
        "k": (10, "results per query"),
        "mitigation": ("none", "none | center | bridge (statistics stored in the checkpoint)"),
        "device": ("cpu", "cpu, cuda, ..."),
        "format": ("table", "table | json (one JSON object per query)"),
        "renormalize": (False, "divide rows that are not unit-norm by their norm (one warning) instead of refusing"),
    },
    examples=[
        'bindspace-search index=images.safetensors,audio.safetensors query="a dog barking" ckpt_path=last.ckpt',
        "bindspace-search index=images.safetensors query=clips/dog.wav ckpt_path=last.ckpt k=5",
    ],
)
DEFAULTS, REQUIRED = COMMAND.defaults, tuple(COMMAND.required)


def query_modality(path: Path, given: str) -> str:
    """The modality of a query file: ``query_modality=`` or the one modality its suffix belongs to."""
    if given:
        return given
    from bindspace.data.readers import supported_suffixes

    owners = [m for m, suffixes in supported_suffixes().items() if path.suffix.lower() in suffixes]
    if len(owners) != 1:
        raise ConfigError(
            f"query={path}: say which modality it is with query_modality= (suffix fits {owners or 'none'})"
        )
    return owners[0]


class Searcher:
    """An exact inner-product index over several exported embedding files, with optional gap mitigation."""

    def __init__(
        self,
        files: Sequence[str],
        mitigation: str = "none",
        meta: Mapping[str, Any] | None = None,
        renormalize: bool = False,
    ) -> None:
        if not files:
            raise ConfigError("index= names no embeddings file")
        if mitigation not in MITIGATIONS:
            raise ConfigError(f"mitigation must be one of {MITIGATIONS}, got {mitigation!r}")
        if mitigation != "none" and meta is None:
            raise ConfigError(f"mitigation={mitigation} needs ckpt_path= (the checkpoint stores the gap statistics)")
        self.mitigation, self.meta = mitigation, dict(meta or {})
        self.parts = [load_embeddings(f, renormalize) for f in files]
        self.dim = self.parts[0].embeddings.shape[1]
        other = next((f for f, p in zip(files, self.parts, strict=True) if p.embeddings.shape[1] != self.dim), None)
        if other is not None:
            sizes = ", ".join(f"{f} D={p.embeddings.shape[1]}" for f, p in zip(files, self.parts, strict=True))
            raise EmbeddingFileError(f"{other}: index files hold different embedding sizes ({sizes}); use one model's")
        self.ids = [i for p in self.parts for i in p.ids]
        self.modalities = [p.modality for p in self.parts for _ in p.ids]
        self.files = list(files)
        self.centered = [p.metadata.get("centered") == "true" for p in self.parts]  # bindspace-embed center=true

    def _centred(self, emb: Tensor, modality: str, already: bool = False) -> Tensor:
        from bindspace.evaluation.gap import center

        means = self.meta.get("centering") or {}
        if modality not in means:
            raise ConfigError(
                f"mitigation=center: the checkpoint stores no centring for {modality!r} (has {sorted(means)}); "
                "store it with: bindspace-eval ckpt_path=<this checkpoint> eval.save_to_checkpoint=true"
            )
        return emb if already else center(emb, torch.tensor(means[modality]))

    def _check_same_centring(self, query_centered: bool) -> None:
        """Without ``mitigation=center`` a centred and an uncentred embedding are not comparable, and a
        bridge maps uncentred ones: refuse a mix, or for ``bridge`` any centred input, in one line."""
        states = dict(zip(self.files, self.centered, strict=True))
        states["the query"] = query_centered
        centred = [name for name, c in states.items() if c]
        if not centred or (self.mitigation == "none" and len(centred) == len(states)):
            return
        what = "bridges map uncentred embeddings" if self.mitigation == "bridge" else "the rest are not centred"
        raise ConfigError(
            f"mitigation={self.mitigation}: {', '.join(centred)}: embeddings centred by bindspace-embed center=true, "
            f"{what}; use mitigation=center ckpt_path=<the checkpoint>, or export without center=true"
        )

    def _gallery(self, query_modality: str) -> Tensor:
        from bindspace.evaluation.gap import Bridge

        rows = []
        for p in self.parts:
            emb = p.embeddings.float()
            if self.mitigation == "center":
                emb = self._centred(emb, p.modality, already=p.metadata.get("centered") == "true")
            elif self.mitigation == "bridge" and p.modality != query_modality:
                key, bridges = f"{p.modality}->{query_modality}", self.meta.get("bridges") or {}
                if key not in bridges:
                    raise ConfigError(
                        f"mitigation=bridge: the checkpoint stores no bridge {key!r} (has {sorted(bridges)}); store "
                        "bridges with: bindspace-eval ckpt_path=<this checkpoint> eval.save_to_checkpoint=true"
                    )
                emb = Bridge.from_dict(bridges[key])(emb)
            rows.append(emb)
        return torch.cat(rows)

    def search(
        self, queries: Tensor, modality: str, k: int, centered: bool = False
    ) -> list[list[tuple[float, str, str, float, int]]]:
        """``(Q, D)`` queries of one modality -> per query, ``k`` hits best first (exact inner product).

        Each hit is (score, modality, id, rank, tied): ``rank`` is its expected 1-based rank over
        random orders of the items sharing its score (bindspace's one tie rule), ``tied`` how many
        index items share that score (1: none). Which tied items make the cut, and their order, is by
        position in the index, so the output never depends on how a search library broke a tie.
        """
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise EmbeddingFileError(f"queries of shape {tuple(queries.shape)} for an index of D={self.dim}")
        if self.mitigation == "center":
            queries = self._centred(queries.float(), modality, already=centered)
        else:
            self._check_same_centring(centered)
        gallery = self._gallery(modality).float()
        return self._ranked(queries.float(), gallery, min(k, len(gallery)))

    def _ranked(self, queries: Tensor, gallery: Tensor, k: int) -> list[list[tuple[float, str, str, float, int]]]:
        """Scores a block of queries against the whole index at once, so hits, ranks and ties agree."""
        from bindspace.evaluation.ties import exact_scores

        out = []
        block = max(1, 2**22 // max(1, len(gallery)))
        for start in range(0, len(queries), block):
            scores = exact_scores(queries[start : start + block], gallery)  # (b, M), independent of BLAS blocking
            values, found = scores.topk(k, dim=1)  # (b, k)
            kth = values[:, -1:]
            above_kth, at_kth = (scores > kth).sum(1), (scores == kth).sum(1)
            for i in (above_kth + at_kth > k).nonzero().flatten().tolist():
                # A tie group straddles the cut: its first items in index order make it.
                at = (scores[i] == kth[i]).nonzero().flatten()[: k - int(above_kth[i])]
                found[i] = torch.cat([found[i][values[i] > kth[i]], at])
            picked = scores.gather(1, found)
            above, tied = torch.zeros_like(found), torch.zeros_like(found)
            for j in range(k):  # one (b, M) comparison per hit keeps memory at the block's size
                above[:, j] = (scores > picked[:, j : j + 1]).sum(1)
                tied[:, j] = (scores == picked[:, j : j + 1]).sum(1)
            for i in range(len(found)):
                order = sorted(range(k), key=lambda j: (-float(picked[i, j]), int(found[i, j])))
                out.append(
                    [self._hit(*(int(x[i, j]) for x in (found, above, tied)), float(picked[i, j])) for j in order]
                )
        return out

    def _hit(self, row: int, above: int, tied: int, score: float) -> tuple[float, str, str, float, int]:
        # Expected 1-based rank among `tied` items sharing positions above+1 .. above+tied.
        return score, self.modalities[row], self.ids[row], above + (tied + 1) / 2, tied


def same_checkpoint(a: str | None, b: str | None) -> bool:
    """Two recorded checkpoint paths name one file: equal once resolved, or one file through any link."""
    if not a or not b:
        return False
    pa, pb = Path(a), Path(b)
    return pa.resolve() == pb.resolve() or (pa.is_file() and pb.is_file() and pa.samefile(pb))


def check_one_model(records: Mapping[str, Mapping[str, str]]) -> None:
    """Refuse embeddings of two models in one search: scores across them mean nothing.

    Args:
        records: name (for the message) -> metadata of each source, the reference first (``ckpt_path``'s
            when given): ``weights_sha256`` (:func:`bindspace.embed.weights_sha256`) and ``checkpoint`` (a
            path). Hashes are compared when both sides record one, else paths (files written before
            ``bindspace-embed`` recorded the hash). A source that records neither (embeddings saved from
            Python, e.g. mapped into B's space by a ``ConnectedSpace``) is not compared.

    Raises:
        ConfigError: one line naming the first source made by another checkpoint than the reference.
    """
    known = [(n, m) for n, m in records.items() if m.get("weights_sha256") or m.get("checkpoint")]
    if not known:
        return
    (ref, want), advice = known[0], "embed the index and the queries with one checkpoint"
    for name, got in known[1:]:
        paths = f"{got.get('checkpoint')} vs {want.get('checkpoint')}"
        if got.get("weights_sha256") and want.get("weights_sha256"):
            if got["weights_sha256"] != want["weights_sha256"]:
                hashes = f"{got['weights_sha256'][:12]} vs {want['weights_sha256'][:12]}"
                raise ConfigError(
                    f"{name}: embedded by another model than {ref} (checkpoint {paths}, weights SHA-256 {hashes}); "
                    f"{advice}"
                )
        elif not same_checkpoint(got.get("checkpoint"), want.get("checkpoint")):
            older = name if not got.get("weights_sha256") else ref
            raise ConfigError(
                f"{name}: embedded by another checkpoint than {ref} ({paths}; compared by path, as {older} records "
                f"no weights_sha256: re-embed it to compare by content); {advice}"
            )


def embed_query(
    args: Mapping[str, Any], ckpt: Mapping[str, Any] | None
) -> tuple[Tensor, str, list[str], dict[str, str]]:
    """``query=`` -> (queries (Q, D), their modality, their names, the exported file's metadata or {})."""
    from bindspace.data.readers import supported_suffixes

    path = Path(args["query"])
    known = {s for suffixes in supported_suffixes().values() for s in suffixes} | {".safetensors"}
    if not path.is_file() and path.suffix.lower() in known:
        raise ConfigError(f"query: no file at {path} (a text query should not end in {path.suffix})")
    if path.suffix == ".safetensors":
        exported = load_embeddings(path, args["renormalize"])
        return exported.embeddings, exported.modality, exported.ids, exported.metadata
    modality = query_modality(path, args["query_modality"]) if path.is_file() else args["query_modality"] or "text"
    if ckpt is None:
        raise ConfigError(f"query={args['query']!r} must be embedded: give ckpt_path=")
    from bindspace.inference import BindSpace

    bs = BindSpace.from_state(ckpt, args["device"], where=args["ckpt_path"])
    if modality not in bs.modalities:
        given = f"query_modality={modality}" if args["query_modality"] else f"query={args['query']!r} ({modality})"
        raise ConfigError(
            f"{given}: ckpt_path={args['ckpt_path']} has no {modality!r} encoder; it has {bs.modalities}"
            f"{did_you_mean(modality, bs.modalities)}"
        )
    inputs = [path] if path.is_file() else [args["query"]]
    with torch.inference_mode():
        return bs.embed(modality, inputs), modality, [str(args["query"])], {}


def run(args: Mapping[str, Any]) -> list[dict[str, Any]]:
    ckpt = None
    if args["ckpt_path"]:
        from bindspace.inference import CheckpointError, load_checkpoint

        ckpt = load_checkpoint(args["ckpt_path"])
        if "bindspace" not in ckpt:
            raise CheckpointError(f"{args['ckpt_path']}: no 'bindspace' metadata; re-save it with bindspace-eval")
    files = [f for f in args["index"].split(",") if f]
    searcher = Searcher(files, args["mitigation"], None if ckpt is None else ckpt["bindspace"], args["renormalize"])
    if ckpt is not None and args["mitigation"] != "none":  # the stored means and bridges are data, checked as such
        from bindspace.inference import stored_mitigations

        stored_mitigations(ckpt["bindspace"], searcher.dim, args["ckpt_path"])
    # One model throughout: the checkpoint that embeds the query (or holds the statistics), the index, the query file.
    made_by = {}
    if ckpt is not None:
        from bindspace.embed import weights_sha256

        made_by[f"ckpt_path={args['ckpt_path']}"] = {
            "checkpoint": args["ckpt_path"],
            "weights_sha256": weights_sha256(ckpt),
        }
    index = {f: p.metadata for f, p in zip(files, searcher.parts, strict=True)}
    check_one_model({**made_by, **index})  # before the query is embedded
    queries, modality, names, query_meta = embed_query(args, ckpt)
    check_one_model({**made_by, f"query={args['query']}": query_meta, **index})
    centered = query_meta.get("centered") == "true"
    if queries.shape[1] != searcher.dim:
        source = args["query"] if Path(args["query"]).suffix == ".safetensors" else f"ckpt_path={args['ckpt_path']}"
        raise EmbeddingFileError(
            f"{source}: queries have D={queries.shape[1]}, the index D={searcher.dim} ({', '.join(files)})"
        )
    hits = searcher.search(queries, modality, args["k"], centered)
    return [
        {
            "query": name,
            "modality": modality,
            "results": [
                {"score": s, "modality": m, "id": i, "rank": rank, "tied": tied} for s, m, i, rank, tied in found
            ],
        }
        for name, found in zip(names, hits, strict=True)
    ]


def _rank_cell(hit: Mapping[str, Any]) -> str:
    """ "3" for an untied hit; "2-4" for one tied with others over positions 2..4."""
    if hit["tied"] <= 1:
        return str(round(hit["rank"]))
    half = (hit["tied"] - 1) / 2
    return f"{round(hit['rank'] - half)}-{round(hit['rank'] + half)}"


def format_results(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(f"query {r['query']!r} ({r['modality']})")
        lines.append(f"{'rank':>7}  {'score':>7}  {'modality':<8}  id")
        lines += [f"{_rank_cell(h):>7}  {h['score']:>7.4f}  {h['modality']:<8}  {h['id']}" for h in r["results"]]
        if any(h["tied"] > 1 for h in r["results"]):
            lines.append("(a-b: tied with other items at positions a..b; listed in index order)")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (2 for a user error, printed as one line)."""
    # Warnings of the embeddings loader (renormalize=true) reach the user as one stderr line each.
    warn = logging.StreamHandler(sys.stderr)
    warn.setFormatter(logging.Formatter("bindspace-search: warning: %(message)s"))
    warn.setLevel(logging.WARNING)
    loader_log = logging.getLogger("bindspace.embed")

    def body() -> int:
        args = COMMAND.parse(sys.argv[1:] if argv is None else argv)
        if args["format"] not in ("table", "json"):
            raise ConfigError(f"format must be table or json, got {args['format']!r}")
        results = run(args)
        if args["format"] == "json":
            print("\n".join(json.dumps(r) for r in results))
        else:
            print(format_results(results))
        return 0

    loader_log.addHandler(warn)
    try:
        return run_command(COMMAND.prog, body)
    finally:
        loader_log.removeHandler(warn)


if __name__ == "__main__":
    sys.exit(main())
