"""bindspace-search ranks tied hits by their expected rank and lists them in index order."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from bindspace.embed import save_embeddings
from bindspace.search import Searcher, main


def test_tied_hits_share_their_expected_rank_and_count(tmp_path, capsys):
    base = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    # Captions 0-2 are one embedding three times (duplicates), caption 3 a different one.
    captions = torch.stack([base[0], base[0], base[0], base[1]])
    images = torch.stack([base[2], base[0]])  # one more copy of the tied vector, in a second file
    save_embeddings(tmp_path / "text.safetensors", captions, ["c0", "c1", "c2", "c3"], "text")
    save_embeddings(tmp_path / "image.safetensors", images, ["i0", "i1"], "image")
    searcher = Searcher([str(tmp_path / "image.safetensors"), str(tmp_path / "text.safetensors")])
    (hits,) = searcher.search(base[:1], "text", k=3)
    # Four items tie at the top (i1, c0, c1, c2): each has expected rank (1 + 4) / 2 and says so, and
    # the three that make the cut are the first three in index order, whatever a search library does.
    assert [(h[2], h[3], h[4]) for h in hits] == [("i1", 2.5, 4), ("c0", 2.5, 4), ("c1", 2.5, 4)]
    assert all(h[0] == hits[0][0] for h in hits)

    query = tmp_path / "query.safetensors"
    save_embeddings(query, base[1:2], ["q"], "text")
    assert (
        main([f"index={tmp_path / 'text.safetensors'},{tmp_path / 'image.safetensors'}", f"query={query}", "k=2"]) == 0
    )
    table = capsys.readouterr().out
    assert "      1" in table.splitlines()[2] and "c3" in table.splitlines()[2]  # an untied hit keeps a plain rank
    assert main([f"index={tmp_path / 'text.safetensors'}", f"query={tmp_path / 'text.safetensors'}", "k=3"]) == 0
    assert "    1-3" in capsys.readouterr().out  # three duplicates share positions 1..3
    assert main([f"index={tmp_path / 'text.safetensors'}", f"query={query}", "k=1", "format=json"]) == 0
    (result,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert result["results"][0] | {"score": None} == {
        "score": None,
        "modality": "text",
        "id": "c3",
        "rank": 1.0,
        "tied": 1,
    }
