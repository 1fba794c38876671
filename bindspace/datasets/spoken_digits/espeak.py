"""Offline speech synthesis with eSpeak NG, driven through ctypes.

The shared library and its voice data come from the PyPI package ``espeakng-loader``, so nothing is
downloaded and no system package is needed. Output is mono int16 at the library's native rate
(22050 Hz), returned as float32 in [-1, 1].

Determinism: eSpeak NG keeps synthesis state in function-level statics (the pitch-flutter phase, the
roughness cycle counter, the gain control) that carry over from one utterance to the next and survive
``espeak_Terminate`` / ``espeak_Initialize``; two identical calls in one loaded library differ (for
"seven": 9819 vs 9837 samples, waveforms diverge after the first vowel onset). So every ``say``
loads a private copy of the library, synthesises, and unloads it again (about 5 ms per call). Then
``say`` gives bit-identical samples for the same arguments, whatever ran before, in any process,
for every voice except the variants that mix in breath noise (``breath`` in their voice file; see
:meth:`Speaker.nondeterministic_variants`): in eSpeak NG 1.52 their output also depends on the
process's memory layout (it changes after unrelated allocations, and on every call under valgrind),
which no reload fixes. If the platform refuses to unload the library, ``Speaker`` warns and keeps
it loaded: audio stays valid but then depends on call history.

Calls are serialised with a process-wide lock (the library has one global state), so a ``Speaker``
may be shared between threads; worker processes each load their own copy.
"""

from __future__ import annotations

import _ctypes
import ctypes
import hashlib
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it a missing data file makes the library call exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_EE_OK = 0

RATE_LIMITS = (80, 450)  # words per minute, eSpeak's range without the sonic speed-up
PITCH_LIMITS = (0, 100)  # 50 is the voice's own pitch; the same scale for the pitch range

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.Lock()
_PRIVATE_COPIES: dict[Path, Path] = {}  # library -> the copy this module loads


def _new_lock_in_child() -> None:
    global _LOCK  # a fork while another thread held the lock would leave the child's copy locked forever
    _LOCK = threading.Lock()


_PRIVATE_COPIES: dict[Path, Path] = {}  # library -> the copy this module loads


os.register_at_fork(after_in_child=_new_lock_in_child)


class EspeakError(RuntimeError):
    """eSpeak NG could not be found, loaded or initialised, or a synthesis call failed."""


class _Voice(ctypes.Structure):
    _fields_ = [  # espeak_VOICE; ``languages`` holds (priority byte, NUL-terminated code) pairs
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def _default_paths() -> tuple[Path, Path]:
    try:
        import espeakng_loader
    except ImportError as err:
        raise EspeakError(
            "eSpeak NG needs the PyPI package espeakng-loader: pip install 'espeakng-loader>=0.2'"
        ) from err
    library = Path(espeakng_loader.get_library_path())
    data = Path(espeakng_loader.__file__).parent / "espeak-ng-data"  # get_data_path() raises a bare error
    return library, data


class Speaker:
    """Text to speech with eSpeak NG.

    Args:
        library: path of ``libespeak-ng``; default: the copy shipped by ``espeakng-loader``.
        data_dir: the ``espeak-ng-data`` folder (holds ``phontab`` and ``voices/``); default: the
            one shipped by ``espeakng-loader``.

    Raises:
        EspeakError: the library or data folder is missing, or the library fails to load or initialise.
    """

    def __init__(self, library: str | os.PathLike[str] | None = None, data_dir: str | os.PathLike[str] | None = None):
        default_library, default_data = _default_paths() if library is None or data_dir is None else (None, None)
        self.library = Path(library or default_library)
        self.data_dir = Path(data_dir or default_data)
        if not self.library.is_file():
            raise EspeakError(f"eSpeak NG library not found: {self.library}")
        if not (self.data_dir / "phontab").is_file():
            raise EspeakError(f"eSpeak NG data not found: {self.data_dir} has no 'phontab' (expected espeak-ng-data)")
        self._resident: ctypes.CDLL | None = None  # set when the library cannot be unloaded
        self._variant_names: list[str] | None = None
        self.sample_rate = 0  # set by each load: the library reports it
        with self._loaded() as lib:
            self.version = lib.espeak_Info(None).decode()

    def say(
        self, text: str, voice: str = "en", rate: int = 175, pitch: int = 50, pitch_range: int = 50
    ) -> tuple[np.ndarray, int]:
        """Synthesise ``text``; the same arguments give the same samples (see the module docstring).

        Args:
            text: plain text (not SSML), e.g. ``"seven"``.
            voice: a language/accent from :meth:`list_voices`, optionally with a variant from
                :meth:`list_variants` after ``+`` (``"en-us"``, ``"en+f4"``, ``"en-gb-scotland+m4"``).
            rate: speaking rate in words per minute, 80..450.
            pitch: 0..100, relative to the voice's own pitch (50).
            pitch_range: intonation range 0..100 (0 is monotone, 50 the voice's own).

        Returns:
            ``(samples, sample_rate)``: float32 ``(T,)`` in [-1, 1], including eSpeak's short
            trailing silence, and the rate in Hz (22050).
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text must be a non-empty string, got {text!r}")
        limits = {
            "rate": (rate, RATE_LIMITS),
            "pitch": (pitch, PITCH_LIMITS),
            "pitch_range": (pitch_range, PITCH_LIMITS),
        }
        for name, (value, (lo, hi)) in limits.items():
            if not lo <= int(value) <= hi:
                raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
        variant = voice.partition("+")[2]
        if variant and variant not in self._variants():  # eSpeak would silently use the base voice
            raise ValueError(f"unknown eSpeak variant {variant!r} in voice {voice!r}; see Speaker().list_variants()")
        chunks: list[bytes] = []

        def collect(wav, count: int, events) -> int:
            if wav and count > 0:
                chunks.append(ctypes.string_at(wav, count * 2))
            return 0  # 0: continue synthesis

        callback = _SynthCallback(collect)  # referenced until the library is gone
        with self._loaded() as lib:
            lib.espeak_SetSynthCallback(callback)
            if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise ValueError(f"unknown eSpeak voice {voice!r}; see Speaker().list_voices() and list_variants()")
            for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
                lib.espeak_SetParameter(parameter, int(value), 0)
            encoded = text.encode()
            status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != _EE_OK or lib.espeak_Synchronize() != _EE_OK:
                raise EspeakError(f"espeak_Synth failed with status {status} for {text!r} in voice {voice!r}")
        samples = np.frombuffer(b"".join(chunks), dtype=np.int16).astype(np.float32) / 32768.0
        return samples, self.sample_rate

    def list_voices(self) -> list[str]:
        """Language codes accepted as ``voice`` (``"en"``, ``"en-us"``, ``"de"``, ...), sorted."""
        return self._list(None)

    def list_variants(self) -> list[str]:
        """Voice variants usable after ``+`` in ``voice`` (``"f3"``, ``"m4"``, ``"klatt"``, ...), sorted."""
        return self._list(b"variant")

    def nondeterministic_variants(self) -> list[str]:
        """Variants whose samples are not reproducible (they add breath noise; see the module docstring)."""
        folder = self.data_dir / "voices" / "!v"
        return [v for v in self._variants() if _adds_breath(folder / v)]

    def _variants(self) -> list[str]:
        if self._variant_names is None:
            self._variant_names = self.list_variants()
        return self._variant_names

    def _list(self, language: bytes | None) -> list[str]:
        code = ctypes.c_char_p(language)  # kept alive while the library reads it
        spec = _Voice(languages=ctypes.cast(code, ctypes.c_void_p)) if language else None
        names: set[str] = set()
        with self._loaded() as lib:
            voices = lib.espeak_ListVoices(ctypes.byref(spec) if spec else None)
            for i in range(10_000):
                if not voices[i]:
                    break
                v = voices[i].contents
                if language:
                    names.add(v.identifier.decode().rsplit("/", 1)[-1])
                else:
                    names.update(_language_codes(v.languages))
        return sorted(names)

    @contextmanager
    def _loaded(self) -> Iterator[ctypes.CDLL]:
        """Hold the lock with a freshly initialised library (see the module docstring for why fresh)."""
        with _LOCK:
            lib = self._resident or self._load()
            try:
                yield lib
            finally:
                if self._resident is None:
                    self._unload(lib)

    def _load(self) -> ctypes.CDLL:
        try:
            lib = ctypes.CDLL(str(_private_copy(self.library)), mode=os.RTLD_LOCAL)
        except OSError as err:
            raise EspeakError(f"cannot load the eSpeak NG library {self.library}: {err}") from err
        _declare(lib)
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_dir).encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            _ctypes.dlclose(lib._handle)
            raise EspeakError(f"espeak_Initialize failed (status {rate}) with data folder {self.data_dir}")
        self.sample_rate = rate
        return lib

    def _unload(self, lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)
        try:  # RTLD_NOLOAD succeeds only if the library is still mapped
            self._resident = ctypes.CDLL(str(_private_copy(self.library)), mode=os.RTLD_NOLOAD)
        except OSError:
            return
        warnings.warn("libespeak-ng could not be unloaded; Speaker.say now depends on call history", stacklevel=3)
        _declare(self._resident)
        self._resident.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_dir).encode(), _INITIALIZE_DONT_EXIT
        )


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of the functions used (ctypes would otherwise guess int)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]  # fmt: skip
    lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p


def _language_codes(address: int) -> list[str]:
    """Decode espeak_VOICE.languages: (priority byte, NUL-terminated code) pairs ending at a zero byte."""
    codes = []
    while ctypes.string_at(address, 1) != b"\0":
        code = ctypes.string_at(address + 1)
        codes.append(code.decode())
        address += len(code) + 2
    return codes


def _adds_breath(voice_file: Path) -> bool:
    try:
        lines = voice_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    return any(line.split()[:1] == ["breath"] for line in lines)


def _private_copy(library: Path) -> Path:
    """A copy of ``library`` that nothing else in this process loads, so unloading it resets it.

    Loading the original path would share one instance with anyone else in the process who loaded
    it (``espeakng_loader.load_library()``), and that instance would never unload. The copy lives in
    the bindspace cache, named by content hash, and is shared by all processes (each maps its own).
    """
    if library not in _PRIVATE_COPIES:
        data = library.read_bytes()
        cache = Path(os.environ.get("BINDSPACE_CACHE") or "~/.cache/bindspace").expanduser() / "espeak"
        copy = cache / f"{hashlib.sha256(data).hexdigest()[:16]}-{library.name}"
        if not copy.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(dir=cache, prefix=f".{copy.name}.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(partial, copy)  # atomic: concurrent processes never load a half-written file
        _PRIVATE_COPIES[library] = copy
    return _PRIVATE_COPIES[library]
