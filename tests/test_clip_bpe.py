"""CLIP BPE (``modalities.text.input.tokenizer=clip_bpe``) against ImageBind's and open_clip's own tokenizers.

ImageBind's ``SimpleTokenizer`` (``imagebind/models/multimodal_preprocessors.py``, from the ``imagebind``
test extra) reads the merges file inside its own package; bindspace reads open_clip_torch's copy.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from bindspace.errors import ConfigError
from bindspace.modalities import clip_bpe as bpe
from bindspace.modalities import get_modality
from bindspace.modalities.text import CLIP_BPE, CLIP_VOCAB, TextInput

EXTRA = "ImageBind's model code is not installed (test extra: pip install -e '.[imagebind]')"
SPECIAL_IN_TEXT = "<|endoftext|> inside <|startoftext|> the text"

TEXTS = [
    "a photo of a dog.",
    "",
    "   \t\n ",
    "A Photo Of A DOG",
    "Hello, World!! It's 2024 -- we've 12,345.67 items; don't I'll you'd THEY'RE",
    "café naïve résumé Ωmega 東京タワー 😀🎉 👩‍👩‍👧",
    "curly “quotes” and ‘single’ — dash … ﬁne ＦＵＬＬ ｗｉｄｔｈ",
    "mojibake: cafÃ© â€œquotedâ€\x9d",
    "&amp;lt;b&amp;gt; tags &quot;q&quot; &#39;x&#39; AT&T",
    "tabs\tand\nnewlines\r\n  here\x1b[31m red \x1b[0m",
    "²³ ⅷ ٣ 一二三 ½ 1st 2nd 3rd 10000000",
    "a\u0301 combining, e\u0308, Ünïcödé ÀÉÎ ß ẞ İ ǅ",
    "punctuation!!! ??? ... ,,, ;;; ::: --- ___ (((x))) [y] {z} <w> @#$%^*+=|\\/~`",
    "\x1c sep \x1f and \x00 nul \ufeff bom \u200b zero-width",
    SPECIAL_IN_TEXT,
    "A" * 500,
    " ".join(["word"] * 200),
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Printable ASCII, whitespace and a few non-ASCII letters: exercises the skip-ftfy fast path and the slow one."""
    rng = random.Random(seed)
    alphabet = [chr(c) for c in range(0x20, 0x7F)] + list("\t\n\r") + list("éüßЖ中€“”ﬁ")
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def imagebind_tokenizer():
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(EXTRA)
    if "imagebind" not in sys.modules:  # its __init__ imports a data module with heavy deps: skip it
        package = importlib.util.module_from_spec(spec)  # its __init__ not run; find_spec still works
        sys.modules["imagebind"] = package
    pre = pytest.importorskip("imagebind.models.multimodal_preprocessors", reason=EXTRA)
    vocab = Path(spec.submodule_search_locations[0]) / "bpe" / bpe.VOCAB_FILE
    return pre.SimpleTokenizer(str(vocab))


@pytest.mark.parametrize("context_length", [77, 8, 2])
def test_ids_equal_imagebinds_simple_tokenizer(imagebind_tokenizer, context_length):
    texts = TEXTS + random_texts(300)
    ids, _ = bpe.clip_bpe()(texts, context_length)
    expected = imagebind_tokenizer(texts, context_length).numpy()
    differ = [t for t, a, b in zip(texts, ids, expected, strict=True) if not np.array_equal(a, b)]
    assert differ == []
    assert ids.shape == (len(texts), context_length) and ids.dtype == np.int64


def test_word_ids_equal_imagebinds_untruncated(imagebind_tokenizer):
    for text in TEXTS:
        assert bpe.clip_bpe().encode(text) == imagebind_tokenizer.encode(text), text


def test_ids_equal_open_clips_tokenizer():
    """open_clip names its special tokens ``<start_of_text>``: CLIP's literal ``<|endoftext|>`` is plain text there."""
    open_clip = pytest.importorskip("open_clip")
    texts = [t for t in TEXTS if t != SPECIAL_IN_TEXT] + random_texts(300, seed=1)
    ids, _ = bpe.clip_bpe()(texts, 77)
    np.testing.assert_array_equal(ids, open_clip.get_tokenizer("ViT-B-32")(texts).numpy())
    ids, _ = bpe.clip_bpe()([SPECIAL_IN_TEXT], 77)
    assert ids[0, 1] == bpe.END  # CLIP's and ImageBind's reading, which bindspace follows


def test_start_end_padding_truncation_and_mask():
    ids, mask = bpe.clip_bpe()(["a photo of a dog.", "", "word " * 100], 16)
    assert ids[0, :8].tolist() == [bpe.START, 320, 1125, 539, 320, 1929, 269, bpe.END]
    assert ids[0, 8:].tolist() == [0] * 8 and mask[0].tolist() == [1] * 8 + [0] * 8
    assert ids[1, :2].tolist() == [bpe.START, bpe.END] and mask[1].sum() == 2
    assert ids[2, 0] == bpe.START and ids[2, -1] == bpe.END and mask[2].all()  # cut, the end token kept
    assert (ids[2, 1:-1] == ids[2, 1]).all()  # 14 of the 100 words
    assert ids.max() == CLIP_VOCAB - 1
    ids, mask = bpe.clip_bpe()([SPECIAL_IN_TEXT], 16)  # the first end token ends the sequence, as argmax finds it
    assert mask[0].tolist() == [1, 1] + [0] * 14


def test_text_transform_gives_ids_and_mask_the_encoder_takes():
    spec, cfg = get_modality("text"), TextInput(tokenizer=CLIP_BPE, context_length=77)
    out = spec.transform_batch(["A photo of a DOG.", "two\n\nlines"], cfg)
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].dtype == out["attention_mask"].dtype == torch.long
    assert out["input_ids"].shape == out["attention_mask"].shape == (2, 77)
    # The mask is what the encoder derives from bare ids (end-of-text is the largest id).
    argmax_mask = torch.arange(77) <= out["input_ids"].argmax(dim=1, keepdim=True)
    assert torch.equal(out["attention_mask"].bool(), argmax_mask)
    one = spec.transform("A photo of a DOG.", cfg)
    assert torch.equal(one["input_ids"], out["input_ids"][0])
    assert spec.vocab_size(cfg) == CLIP_VOCAB == len(bpe.clip_bpe().ids) + 2


def test_byte_symbols_are_printable_and_distinct():
    symbols = bpe.byte_symbols()
    assert len(set(symbols)) == 256 and all(s.isprintable() and not s.isspace() for s in symbols)
    assert symbols[ord("a")] == "a" and symbols[ord(" ")] == chr(0x120)  # GPT-2's 'Ġ'


def test_words_are_cached():
    tok = bpe.ClipBPE(cache_size=8)
    tok.encode("the cat and the dog and the cat")
    info = tok.word_ids.cache_info()
    assert (info.misses, info.hits, info.maxsize) == (4, 4, 8)


def test_without_ftfy_plain_and_nfc_text_tokenize_the_same(monkeypatch):
    texts = ["a photo of a dog", "cafe\u0301 na\u0131ve, Ωmega 東京", "&amp; it's 42"]
    with_ftfy = bpe.clip_bpe()(texts, 32)[0]
    monkeypatch.setattr(bpe, "_fix_text", lambda: None)
    np.testing.assert_array_equal(bpe.ClipBPE()(texts, 32)[0], with_ftfy)
    assert bpe.clean_text("cafe\u0301") == unicodedata.normalize("NFC", "café")


def test_a_missing_open_clip_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(bpe.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"tokenizer=clip_bpe needs CLIP's BPE merges .*pip install open_clip_torch"):
        bpe.ClipBPE()


def test_a_wrong_merges_file_is_refused(tmp_path):
    import gzip

    (tmp_path / "m.txt.gz").write_bytes(gzip.compress(b"#version\na b\nc d\n"))
    with pytest.raises(ConfigError, match="expected 48894 BPE merges"):
        bpe.ClipBPE(tmp_path / "m.txt.gz")


@pytest.mark.slow  # a fresh interpreter importing torch
def test_tokenizing_imports_neither_open_clip_nor_imagebind():
    code = (
        "import sys\n"
        "from bindspace.modalities.text import TextInput, TextSpec\n"
        "out = TextSpec().transform_batch(['a dog'], TextInput(tokenizer='clip_bpe'))\n"
        "assert out['input_ids'][0, :4].tolist() == [49406, 320, 1929, 49407], out\n"
        "assert not {'open_clip', 'imagebind'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
