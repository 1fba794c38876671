"""OpenAI CLIP's byte-level BPE text tokenizer (ImageBind's text input), written for bindspace.

What it computes, as CLIP defines it (and ImageBind and open_clip repeat):

- cleaning: ``ftfy.fix_text`` (when ftfy is installed, see :func:`clean_text`), HTML entities
  unescaped twice, runs of whitespace collapsed to one space, stripped, then lower-cased;
- words: CLIP's regular expression (the two special tokens, English contractions, runs of letters,
  single digits, runs of other non-space characters);
- each word's UTF-8 bytes become printable symbols (one per byte), the last one marked end-of-word
  (``</w>``), and adjacent symbols merge by rank until no ranked pair is left;
- ids: 256 byte symbols, the same 256 with ``</w>``, one id per merge in rank order (48 894 merges),
  ``<|startoftext|>`` 49406 and ``<|endoftext|>`` 49407: 49408 in all;
- a sequence is ``[49406, word ids..., 49407]``, cut to ``context_length`` keeping 49407 last, then
  zero-padded.

The merges are read from ``bpe_simple_vocab_16e6.txt.gz`` inside the installed ``open_clip`` package
(open_clip_torch, MIT, a bindspace dependency); nothing is downloaded and open_clip is never imported.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import itertools
import logging
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import regex

from bindspace.errors import ConfigError

log = logging.getLogger("bindspace.text")

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49408 - 2 * 256 - 2  # the file holds more; CLIP uses the first 48 894
START, END = 49406, 49407
SPECIALS = {"<|startoftext|>": START, "<|endoftext|>": END}
END_OF_WORD = "</w>"
WORD_CACHE = 2**16  # distinct words whose ids are kept (an LRU): captions reuse a small vocabulary

# CLIP's word split; a literal special token in the text is kept whole and becomes its id, as in CLIP.
_WORDS = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+", regex.IGNORECASE
)
_SPACE = regex.compile(r"\s+")
_NEEDS_FIX = regex.compile(r"[^\t\n\r\x20-\x7e]|&")  # what ftfy could change: non-ASCII, controls, entities


def byte_symbols() -> list[str]:
    """The printable symbol standing for each byte value 0..255 (GPT-2's and CLIP's byte alphabet).

    Bytes that are printable Latin-1 characters stand for themselves; the other 68 (control
    characters, space, NBSP, soft hyphen) take code points 256, 257, ... in byte order.
    """
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    symbols, extra = [], 256
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(extra))
            extra += 1
    return symbols


def vocab_path() -> Path:
    """CLIP's merges file as open_clip_torch ships it (found without importing open_clip).

    Raises:
        ConfigError: open_clip_torch is not installed, or its folder lacks the file.
    """
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise ConfigError(
        f"modalities.text.input.tokenizer=clip_bpe needs CLIP's BPE merges ({VOCAB_FILE}), which ship inside "
        "the open_clip_torch package: pip install open_clip_torch"
    )


@lru_cache(maxsize=1)
def _fix_text():
    try:
        import ftfy
    except ImportError:
        log.warning("ftfy is not installed: CLIP BPE cleans text without it (no mojibake repair, no quote uncurling)")
        return None
    return ftfy.fix_text


def clean_text(text: str) -> str:
    """CLIP's cleaning: ftfy, HTML unescaped twice, whitespace collapsed, stripped, lower-cased.

    Without ftfy, only its Unicode NFC normalisation is applied: text ftfy would repair (mojibake,
    curly quotes, ligatures, full-width letters, terminal escapes) then tokenizes differently from CLIP.
    """
    if _NEEDS_FIX.search(text):  # printable ASCII without '&' is ftfy's fixed point: skip its slow call
        fix = _fix_text()
        text = fix(text) if fix is not None else unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text)).strip()
    return _SPACE.sub(" ", text).strip().lower()


class ClipBPE:
    """CLIP's tokenizer over a merges file (:func:`vocab_path` by default).

    Args:
        path: a gzip text file, a header line then one merge (``"a b"``) per line, in rank order.
        cache_size: words whose ids are kept in an LRU cache.
    """

    def __init__(self, path: str | Path | None = None, cache_size: int = WORD_CACHE) -> None:
        path = Path(path) if path is not None else vocab_path()
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ConfigError(f"{path}: expected {NUM_MERGES} BPE merges 'a b' after one header line")
        self.symbols = byte_symbols()
        # Ids number the symbols by code point: the printable bytes first, then the 68 stand-ins.
        alphabet = sorted(self.symbols)
        alphabet += [s + END_OF_WORD for s in alphabet]
        self.ids = {s: i for i, s in enumerate(alphabet + ["".join(m) for m in merges])}
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.word_ids = lru_cache(maxsize=cache_size)(self._word_ids)

    def _merge(self, parts: list[str]) -> list[str]:
        """Merge the lowest-ranked adjacent pair, every occurrence left to right, until none is ranked."""
        ranks = self.ranks
        while len(parts) > 1:
            best = min(itertools.pairwise(parts), key=lambda pair: ranks.get(pair, NUM_MERGES))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _word_ids(self, word: str) -> tuple[int, ...]:
        if word in SPECIALS:
            return (SPECIALS[word],)
        parts = [self.symbols[b] for b in word.encode("utf-8")]
        parts[-1] += END_OF_WORD
        return tuple(self.ids[p] for p in self._merge(parts))

    def encode(self, text: str) -> list[int]:
        """Ids of a cleaned text, without start/end tokens and without truncation."""
        return [i for word in _WORDS.findall(clean_text(text)) for i in self.word_ids(word)]

    def __call__(self, texts: Sequence[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
        """``(B, context_length)`` int64 ids (start, words, end, zero padding) and mask (1 up to the end token).

        A text too long keeps its first ``context_length - 2`` word ids and the end token (CLIP's truncation).
        """
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 for CLIP BPE, got {context_length}")
        ids = np.zeros((len(texts), context_length), np.int64)
        for row, text in zip(ids, texts, strict=True):
            tokens = [START, *self.encode(text)][: context_length - 1]
            tokens.append(END)
            row[: len(tokens)] = tokens
        # The first end token ends the sequence, as the encoder's argmax over bare ids finds it.
        mask = (np.arange(context_length) <= ids.argmax(axis=1)[:, None]).astype(np.int64)
        return ids, mask


@lru_cache(maxsize=1)
def clip_bpe() -> ClipBPE:
    """The process-wide tokenizer over open_clip's merges file (loaded once, about 0.3 s)."""
    return ClipBPE()
