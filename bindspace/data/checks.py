"""Input checks a run reports before it trains or scores: captions cut by the text context, held-out sets
too small for the recalls they are scored with.

A caption longer than the text context loses its tail (the byte tokenizer keeps ``context_length - 2``
bytes between BOS and EOS), so the text encoder never sees the phrases there; more than
``TRUNCATION_WARN`` of the captions cut gets a warning. A held-out gallery of ``N`` items puts chance
R@K at ``K / N``; a recall whose chance exceeds ``TRIVIAL_CHANCE`` percent says little and is named in
a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger("bindspace.data")
TRUNCATION_WARN = 0.01  # share of captions cut above which a run warns
TRIVIAL_CHANCE = 10.0  # percent: a recall whose chance level is above this is named as near-trivial
SYNTHETIC_POOL_SAMPLE = 10_000  # training captions checked per synthetic text pool (all pools share one generator)


def text_lengths(texts: Sequence[str], text_input: Any) -> list[int]:
    """Tokens each text needs, special tokens included, before any truncation.

    Args:
        texts: the captions.
        text_input: a :class:`~bindspace.modalities.text.TextInput` (``tokenizer``, ``lowercase``).
    """
    texts = [t.lower() if text_input.lowercase else t for t in texts]
    if text_input.tokenizer == "bytes":
        return [len(t.encode("utf-8")) + 2 for t in texts]  # BOS + bytes + EOS
    if text_input.tokenizer == "clip_bpe":
        from bindspace.modalities.clip_bpe import clip_bpe

        return [len(clip_bpe().encode(t)) + 2 for t in texts]  # start + word ids + end
    from bindspace.modalities.text import hf_tokenizer

    return [len(ids) for ids in hf_tokenizer(text_input.tokenizer)(texts, truncation=False)["input_ids"]]


def caption_truncation(source: Any, text_input: Any) -> tuple[int, int]:
    """How many captions the text context cuts: ``(truncated, total)``.

    Args:
        source: captions (an iterable of str) or a datamodule (see :func:`datamodule_captions`).
        text_input: the model's text input config (``modalities.text.input``).
    """
    from bindspace.data.base import PairedDataModule  # Lightning's: imported when a datamodule is checked

    captions = datamodule_captions(source) if isinstance(source, PairedDataModule) else list(source)
    lengths = text_lengths(captions, text_input)
    return sum(n > text_input.context_length for n in lengths), len(lengths)


def datamodule_captions(datamodule: Any) -> list[str]:
    """The captions a run reads: training pools with text and the held-out sets (``PairedDataModule.captions``).

    Synthetic data renders the first ``SYNTHETIC_POOL_SAMPLE`` scenes of each text pool; streamed shards
    contribute their held-out sets only (training shards are not read ahead of training).
    """
    return list(datamodule.captions())


def report_caption_truncation(datamodule: Any, configs: Mapping[str, Any]) -> tuple[int, int] | None:
    """Log how many of a run's captions the text context cuts; warn above ``TRUNCATION_WARN``.

    Args:
        datamodule: the run's datamodule.
        configs: modality name -> ModalityConfig (the model's).

    Returns:
        ``(truncated, total)``, or None when the model has no text modality.
    """
    if "text" not in configs:
        return None
    text_input = configs["text"].input
    truncated, total = caption_truncation(datamodule, text_input)
    message = truncation_message(truncated, total, text_input.context_length)
    # A log record, not warnings.warn: it reaches the run's own log file, on one line.
    (log.warning if total and truncated / total > TRUNCATION_WARN else log.info)(message)
    return truncated, total


def truncation_message(truncated: int, total: int, context: int, where: str = "") -> str:
    """One line: how many captions a text context cuts (``where`` names whose context), and the fix above 1%."""
    share = 100.0 * truncated / total if total else 0.0
    whose = f" ({where})" if where else ""
    line = f"text: {truncated} of {total} captions ({share:.1f}%) exceed the {context}-token text context{whose}"
    if total and truncated / total > TRUNCATION_WARN:
        line += (
            f" and lose their end; above {100 * TRUNCATION_WARN:.0f}%: raise modalities.text.input.context_length"
            " or shorten the captions"
        )
    return line


def trivial_recalls(size: int, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """``{"R@K": chance %}`` for every K whose chance ``100 * min(K, size) / size`` exceeds ``TRIVIAL_CHANCE``."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    chance = {f"R@{k}": 100.0 * min(k, size) / size for k in ks}
    return {name: c for name, c in chance.items() if c > TRIVIAL_CHANCE}


def small_heldout_message(size: int, where: str, ks: Iterable[int] = (1, 5, 10)) -> str | None:
    """One warning line when a held-out set of ``size`` samples makes some R@K near-trivial, else None."""
    trivial = trivial_recalls(size, ks)
    if not trivial:
        return None
    named = ", ".join(f"{name} (chance {c:.1f}%)" for name, c in trivial.items())
    return f"{where}: a held-out set of {size} samples makes {named} near-trivial; hold out more samples"
