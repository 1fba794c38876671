"""Per-scene random words for a whole batch, equal to one ``SFC64(SeedSequence([seed, id, stream]))`` per scene.

The synthetic benchmark draws every scene's pixel and sample noise from its own generator, so a scene
renders identically in any batch. Building those generators one by one costs two Python-level object
constructions per scene (``SeedSequence`` hashing its entropy, ``SFC64`` asking it for its state),
about 9 us per scene, more than drawing the words of a 64 x 64 image. Here numpy's SeedSequence hash
(``numpy/random/bit_generator.pyx``, fixed by numpy's stream-compatibility policy) runs for the whole
batch at once, and one reused ``SFC64`` is set to each scene's seed words and drawn from, SFC64's own
seeding rounds included. The words are bit-identical to the per-scene generators
(``tests/test_synthetic_render.py`` checks them against numpy).
"""

from __future__ import annotations

import functools

import numpy as np

_MASK32 = 0xFFFFFFFF
_POOL_SIZE = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_XSHIFT = np.uint32(16)


def _int_words(n: int) -> list[int]:
    """A non-negative int as numpy's SeedSequence sees it: little-endian uint32 words, at least one."""
    words = [n & _MASK32]
    n >>= 32
    while n:
        words.append(n & _MASK32)
        n >>= 32
    return words


@functools.lru_cache(maxsize=16)
def _consts(start: int, mult: int, n: int) -> np.ndarray:
    """(n + 1, 1) uint32: start, start * mult, start * mult**2, ... (mod 2**32), as a hash constant evolves."""
    out = [start]
    for _ in range(n):
        out.append((out[-1] * mult) & _MASK32)
    return np.array(out, np.uint32)[:, None]


def _hashmix(values: np.ndarray, consts: np.ndarray) -> np.ndarray:
    """numpy's ``hashmix`` for k consecutive calls at once: ``values`` (k or 1, B), ``consts`` (k + 1, 1)
    the hash constant before each call and after the last."""
    out = (values ^ consts[:-1]) * consts[1:]
    out ^= out >> _XSHIFT
    return out


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
    out ^= out >> _XSHIFT
    return out


def _seed_sequence_pool(entropy: np.ndarray) -> np.ndarray:
    """(L, B) uint32 entropy words -> (4, B) pools, as ``SeedSequence.mix_entropy`` per column.

    numpy's loops call ``hashmix`` with a constant that advances at every call; calls that do not
    depend on each other's results (one source word hashed for three destinations) run as one array op.
    """
    n_calls = _POOL_SIZE + _POOL_SIZE * (_POOL_SIZE - 1) + _POOL_SIZE * max(0, len(entropy) - _POOL_SIZE)
    consts = _consts(_INIT_A, _MULT_A, n_calls)
    first = np.zeros((_POOL_SIZE, entropy.shape[1]), np.uint32)
    first[: min(len(entropy), _POOL_SIZE)] = entropy[:_POOL_SIZE]
    mixer = _hashmix(first, consts[: _POOL_SIZE + 1])
    call = _POOL_SIZE
    for i_src in range(_POOL_SIZE):
        dst = [i for i in range(_POOL_SIZE) if i != i_src]
        mixer[dst] = _mix(mixer[dst], _hashmix(mixer[i_src][None], consts[call : call + len(dst) + 1]))
        call += len(dst)
    for i_src in range(_POOL_SIZE, len(entropy)):
        mixer = _mix(mixer, _hashmix(entropy[i_src][None], consts[call : call + _POOL_SIZE + 1]))
        call += _POOL_SIZE
    return mixer


def _generate_state_u64(pool: np.ndarray, n_words: int) -> np.ndarray:
    """(4, B) pools -> (B, n_words) uint64, as ``SeedSequence.generate_state(n_words, np.uint64)``."""
    n32 = 2 * n_words
    consts = _consts(_INIT_B, _MULT_B, n32)
    words = (pool[np.arange(n32) % _POOL_SIZE] ^ consts[:-1]) * consts[1:]  # (2 n_words, B)
    words ^= words >> _XSHIFT
    return words[0::2].T.astype(np.uint64) | (words[1::2].T.astype(np.uint64) << np.uint64(32))


def sfc64_seeds(seed: int, ids: np.ndarray, stream: int) -> np.ndarray:
    """(B, 3) uint64: what ``SeedSequence([seed, id, stream]).generate_state(3, np.uint64)`` gives per id,
    the words ``np.random.SFC64`` seeds itself with.

    Args:
        seed, stream: Non-negative ints shared by the batch.
        ids: (B,) non-negative integer ids.
    """
    ids = np.asarray(ids, dtype=np.int64)
    head, tail = _int_words(int(seed)), _int_words(int(stream))
    out = np.empty((len(ids), 3), np.uint64)
    # An id below 2**32 is one entropy word, a larger one two: rows are hashed in those two groups.
    big = ids > _MASK32
    for rows in (np.flatnonzero(~big), np.flatnonzero(big)):
        if not len(rows):
            continue
        id_words = [ids[rows] & _MASK32] + ([ids[rows] >> 32] if big[rows[0]] else [])
        entropy = np.empty((len(head) + len(id_words) + len(tail), len(rows)), np.uint32)
        entropy[: len(head)] = np.array(head, np.uint32)[:, None]
        entropy[len(head) : len(head) + len(id_words)] = id_words
        entropy[len(head) + len(id_words) :] = np.array(tail, np.uint32)[:, None]
        out[rows] = _generate_state_u64(_seed_sequence_pool(entropy), 3)
    return out


def scene_words(seed: int, ids: np.ndarray, stream: int, n_words: int, out: np.ndarray | None = None) -> np.ndarray:
    """(B, n_words) uint64: the first ``n_words`` outputs of ``SFC64(SeedSequence([seed, id, stream]))`` per id.

    Args:
        out: Optional (B, n_words) uint64 array to write the words into (a reused work buffer).
    """
    states = np.ones((len(ids), 4), np.uint64)  # SFC64's seeding: (s0, s1, s2, counter 1), then 12 rounds
    states[:, :3] = sfc64_seeds(seed, ids, stream)
    out = np.empty((len(states), n_words), np.uint64) if out is None else out
    gen = np.random.SFC64(0)
    state = {"bit_generator": "SFC64", "state": {"state": None}, "has_uint32": 0, "uinteger": 0}
    for i in range(len(states)):
        state["state"]["state"] = states[i]
        gen.state = state
        out[i] = gen.random_raw(12 + n_words)[12:]
    return out
