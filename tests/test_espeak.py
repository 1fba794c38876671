"""eSpeak NG through ctypes: real speech, voices that differ, and bit-identical repeated calls."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

from bindspace.datasets.spoken_digits.espeak import EspeakError, Speaker

# Keep built data and the library copy Speaker makes out of the user's cache.
pytestmark = pytest.mark.usefixtures("bindspace_cache")


@pytest.fixture(scope="module")
def speaker() -> Speaker:
    return Speaker()


def fundamental_hz(samples: np.ndarray, rate: int) -> float:
    """F0 of the loudest 60 ms (the vowel): the real-cepstrum peak between 50 and 400 Hz."""
    win = int(0.06 * rate)
    energy = np.convolve(samples.astype(np.float64) ** 2, np.ones(win), mode="valid")
    start = int(np.argmax(energy))
    frame = samples[start : start + win] * np.hanning(win)
    cepstrum = np.fft.irfft(np.log(np.abs(np.fft.rfft(frame, 4096)) + 1e-9))
    lo, hi = rate // 400, rate // 50
    return rate / (lo + int(np.argmax(cepstrum[lo:hi])))


def test_seven_is_real_speech(speaker):
    samples, rate = speaker.say("seven")
    assert rate == speaker.sample_rate == 22050
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert 0.3 <= len(samples) / rate <= 1.5
    assert np.abs(samples).max() <= 1.0
    assert np.sqrt(np.mean(samples**2)) > 0.02  # speech, not near-silence
    assert np.mean(np.abs(samples) > 1e-3) > 0.5
    assert 60 < fundamental_hz(samples, rate) < 400  # a voice, not noise


def test_same_call_gives_identical_samples_whatever_ran_before(speaker):
    first, _ = speaker.say("seven", "en-us+f4", rate=160, pitch=60)
    speaker.say("three", "en+m4", rate=300, pitch=10)  # would shift eSpeak's flutter phase if it persisted
    heap = [bytearray(n) for n in (17, 300, 5000, 70_000, 300_000)]  # a different memory layout
    again, _ = speaker.say("seven", "en-us+f4", rate=160, pitch=60)
    other_instance, _ = Speaker().say("seven", "en-us+f4", rate=160, pitch=60)
    del heap
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, other_instance)


_FORK_CHECK = """
import os, sys
from bindspace.datasets.spoken_digits.espeak import Speaker

parent = Speaker()
expected = parent.say("seven", "en+klatt4")[0].tobytes()  # the library is loaded and used before the fork
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read_end)
    data = Speaker().say("seven", "en+klatt4")[0].tobytes()
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(data)
    os._exit(0)
os.close(write_end)
with os.fdopen(read_end, "rb") as pipe:
    child = pipe.read()
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
assert child == expected, (len(child), len(expected))
print("identical", len(child))
"""


def test_identical_in_a_forked_process(bindspace_cache):
    """A worker forked after the parent used eSpeak (a fork-start DataLoader) speaks identically.

    The fork happens in a fresh interpreter: forking the pytest worker itself, which has torch's and
    wandb's threads running, can deadlock in code that is not eSpeak's and would test nothing of ours.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork")
    env = {**os.environ, "BINDSPACE_CACHE": str(bindspace_cache)}
    done = subprocess.run([sys.executable, "-c", _FORK_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("identical")


def test_breathy_variants_are_flagged_not_reproducible(speaker):
    flagged = set(speaker.nondeterministic_variants())
    assert {"whisper", "f2", "f3", "Alicia"} <= flagged  # their voice files add breath noise
    assert not flagged & {"m1", "f1", "f4", "klatt", "klatt4", "croak"}


def test_voices_pitches_and_rates_change_the_audio(speaker):
    base, rate = speaker.say("seven", "en")
    for voice in ("en-us", "en+f3", "en+m4", "en-gb-scotland+klatt"):
        other, _ = speaker.say("seven", voice)
        assert len(other) != len(base) or not np.array_equal(other, base), voice
    low, high = (fundamental_hz(speaker.say("seven", "en", pitch=p)[0], rate) for p in (20, 80))
    assert high > 1.5 * low, (low, high)
    slow, fast = (len(speaker.say("seven", "en", rate=r)[0]) for r in (100, 300))
    assert slow > 1.8 * fast, (slow, fast)


def test_lists_voices_and_variants(speaker):
    voices, variants = speaker.list_voices(), speaker.list_variants()
    assert {"en", "en-us", "en-gb-scotland", "de"} <= set(voices)
    assert {"f3", "m4", "klatt", "whisper"} <= set(variants)
    assert voices == sorted(voices) and variants == sorted(variants)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "seven", "voice": "xx-nonexistent"}, "unknown eSpeak voice 'xx-nonexistent'"),
        ({"text": "seven", "voice": "en+nonexistent"}, "unknown eSpeak variant 'nonexistent'"),
        ({"text": "seven", "rate": 20}, "rate must be in 80..450"),
        ({"text": "seven", "pitch": 101}, "pitch must be in 0..100"),
        ({"text": "  "}, "text must be a non-empty string"),
    ],
)
def test_bad_arguments_fail_clearly(speaker, kwargs, message):
    with pytest.raises(ValueError, match=message):
        speaker.say(**kwargs)


def test_missing_library_or_data_names_the_path(tmp_path, speaker):
    with pytest.raises(EspeakError, match=f"library not found: {tmp_path / 'libnothing.so'}"):
        Speaker(library=tmp_path / "libnothing.so")
    with pytest.raises(EspeakError, match=f"data not found: {tmp_path}"):
        Speaker(data_dir=tmp_path)
    not_a_library = tmp_path / "libfake.so"
    not_a_library.write_bytes(b"not an ELF file")
    with pytest.raises(EspeakError, match=r"cannot load the eSpeak NG library .*libfake\.so"):
        Speaker(library=not_a_library, data_dir=speaker.data_dir)
