"""Text-to-speech with timed phoneme events, via libespeak-ng through ctypes.

The shared library and its voice data come from the PyPI package ``espeakng-loader``.

Determinism. eSpeak NG keeps synthesis state in C globals that are never reset between
utterances (the pitch-flutter phase, automatic gain, glottal cycle counters, the echo
buffer, ...), so with one long-lived instance the same text comes out slightly different
(even in length) depending on what was spoken before. To make every call bit-identical,
each :func:`synthesize` call loads a *fresh* instance of the library: a private copy of
``libespeak-ng.so`` (made once per process; on Linux an in-memory ``memfd`` file, else a
temporary file) is ``dlopen``-ed, initialised, used and ``dlclose``-d again, which costs
about 3 ms. Its random generator (``espeak_ng_SetRandSeed``) and libc ``rand()``, which the
library also imports, are seeded with fixed values before each utterance; note that this
reseeds the process's libc ``rand()``.

Processes and threads. Calls are serialised by a module lock. The private copy means that
other users of ``libespeak-ng`` in the same process are neither disturbed nor disturbing.
Nothing of the library stays loaded between calls, so forked children start clean (a fork
hook makes sure no fork happens in the middle of a call) and make their own copy on first
use, as spawned children do.

Phoneme symbols are eSpeak mnemonics (e.g. ``h``, ``@``, ``oU``, ``3:``, ``aI``) with the
stress marks (``'`` primary, ``,`` secondary, ``%`` unstressed, ``=``) removed; the stress
is reported in :attr:`Phoneme.stressed`. Pauses are kept as eSpeak writes them (``_`` short,
``_:`` longer, ...; every pause symbol starts with ``_``, see :attr:`Phoneme.is_pause`), and
the audio before the first event, if any, becomes a ``_`` pause, so the phoneme list tiles
the whole audio without gaps or overlaps. Zero-length events (eSpeak's final ``_`` marker)
are dropped.
"""

from __future__ import annotations

import _ctypes
import atexit
import contextlib
import ctypes
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soxr

__all__ = [
    "SAMPLE_RATE",
    "VOICES",
    "Phoneme",
    "Speech",
    "Voice",
    "speech_bounds",
    "synthesize",
]

SAMPLE_RATE = 16000
"""Sample rate (Hz) of :attr:`Speech.audio`."""

VOICES: tuple[str, ...] = (
    "en-us",
    "en-us+m3",
    "en-us+m7",
    "en-us+f2",
    "en-us+f3",
    "en-us+f4",
    "en",
    "en+m2",
    "en+f3",
    "en-gb-x-rp",
    "en-gb-x-rp+f5",
    "en-gb-scotland",
    "en-gb-scotland+f1",
    "en-029",
    "en-us-nyc",
)
"""Curated English eSpeak voice names (base voice, optionally ``+`` a variant), male
(the base voices, ``+mN``) and female (``+fN``), all verified with the data shipped by
``espeakng-loader``. ``en`` is British English (the name ``en-gb`` does not exist there)."""

# --- eSpeak NG C API constants (speak_lib.h) ---------------------------------------------
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_VOLUME = 100  # eSpeak's nominal full volume
_RAND_SEED = 1

_STRESS_MARKS = "',%="
_STRESSED_MARKS = "',"
_INSTALL_HINT = "libespeak-ng could not be loaded; run `pip install espeakng-loader`"


class _EventId(ctypes.Union):
    _fields_ = (
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    )


class _Event(ctypes.Structure):
    """``espeak_EVENT``; ctypes applies the native alignment (40 bytes on LP64:
    six 4-byte ints, then the pointer and the 8-byte union, both at 8-byte offsets)."""

    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of the message's audio
        ("sample", ctypes.c_int),  # the same position, in output samples
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    )


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Voice:
    """An eSpeak voice and its prosody settings.

    Attributes:
        name: eSpeak voice name, optionally with a variant, e.g. ``"en-us+f3"``.
        rate: Speaking rate in words per minute (eSpeak accepts 80..450).
        pitch: Base pitch, 0..100 (50 is the voice's normal pitch).
        pitch_range: Pitch range, 0..100 (0 is monotone, 50 normal).
    """

    name: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"voice name must be a non-empty string, got {self.name!r}")
        if not 80 <= self.rate <= 450:
            raise ValueError(f"voice rate must be in 80..450 words/min, got {self.rate}")
        if not 0 <= self.pitch <= 100:
            raise ValueError(f"voice pitch must be in 0..100, got {self.pitch}")
        if not 0 <= self.pitch_range <= 100:
            raise ValueError(f"voice pitch_range must be in 0..100, got {self.pitch_range}")


@dataclass(frozen=True)
class Phoneme:
    """One phoneme (or pause) with its time span in the returned audio.

    Attributes:
        symbol: eSpeak mnemonic without stress marks (``"oU"``, ``"h"``); pauses keep
            eSpeak's pause symbols, which all start with ``_`` (``"_"``, ``"_:"``, ...).
        start: Start time in seconds from the start of :attr:`Speech.audio`.
        end: End time in seconds (the next phoneme's start; the audio's end for the last).
        stressed: True when eSpeak marked the phoneme with primary (``'``) or
            secondary (``,``) stress (only vowels carry stress marks).
    """

    symbol: str
    start: float
    end: float
    stressed: bool

    @property
    def is_pause(self) -> bool:
        """Whether this is a pause (silence) rather than a speech sound."""
        return self.symbol.startswith("_")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.end - self.start


@dataclass(frozen=True)
class Speech:
    """Synthesised speech and its phoneme timeline.

    Attributes:
        audio: float32 mono samples in [-1, 1] at :data:`SAMPLE_RATE`, exactly as eSpeak
            produced them (leading/trailing silence included), resampled from 22.05 kHz.
        phonemes: Phonemes and pauses in time order, contiguous, covering the audio.
        text: The synthesised text.
        voice: The voice used.
    """

    audio: np.ndarray = field(repr=False)
    phonemes: list[Phoneme]
    text: str
    voice: Voice

    @property
    def duration(self) -> float:
        """Length of :attr:`audio` in seconds."""
        return len(self.audio) / SAMPLE_RATE


def speech_bounds(speech: Speech) -> tuple[float, float]:
    """Return ``(t_first, t_last)``: start of the first and end of the last non-pause phoneme.

    Raises:
        ValueError: if the speech has no non-pause phoneme.
    """
    spoken = [p for p in speech.phonemes if not p.is_pause]
    if not spoken:
        raise ValueError("speech contains no non-pause phoneme")
    return spoken[0].start, spoken[-1].end


# --- library management --------------------------------------------------------------------


@dataclass(frozen=True)
class _Paths:
    """Where this process's private library copy and the shared voice data live."""

    pid: int
    library: str
    fd: int | None  # of the in-memory copy, if that is what ``library`` names
    data: str
    variants: Path


_paths: _Paths | None = None
_lock = threading.Lock()

if hasattr(os, "register_at_fork"):  # never fork while another thread is inside a call
    os.register_at_fork(
        before=_lock.acquire, after_in_parent=_lock.release, after_in_child=_lock.release
    )


def _remove_private_copy(pid: int, directory: str) -> None:
    if os.getpid() == pid:  # a forked child must not delete its parent's copy
        shutil.rmtree(directory, ignore_errors=True)


def _dlclose(handle: int) -> None:
    close: Callable[[int], object] | None = getattr(_ctypes, "dlclose", None)
    if close is None:
        close = getattr(_ctypes, "FreeLibrary", None)
    if close is None:
        raise RuntimeError("cannot unload libespeak-ng on this platform")
    close(handle)


def _loads(path: str) -> bool:
    """Whether the shared library at ``path`` can be loaded (it is unloaded again)."""
    try:
        handle = ctypes.CDLL(path)._handle
    except OSError:
        return False
    _dlclose(handle)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _private_copy(source: str) -> tuple[str, int | None] | None:
    """Make a private, loadable copy of the library: ``(path, fd)``, or None on failure.

    On Linux the copy lives in an anonymous in-memory file (``memfd``), which vanishes with
    the process, even with worker processes that exit without running ``atexit``. Elsewhere
    it goes to a temporary directory that is removed at exit.
    """
    try:
        image = Path(source).read_bytes()
    except OSError:
        return None
    if hasattr(os, "memfd_create"):
        try:
            fd = os.memfd_create("libespeak-ng-private", os.MFD_CLOEXEC)
        except OSError:
            fd = None
        if fd is not None:
            path = f"/proc/self/fd/{fd}"
            try:
                _write_all(fd, image)
            except OSError:
                pass
            else:
                if _loads(path):
                    return path, fd
            os.close(fd)
    pid = os.getpid()
    try:
        directory = tempfile.mkdtemp(prefix=f"readtalk-espeak-{pid}-")
    except OSError:
        return None
    atexit.register(_remove_private_copy, pid, directory)
    path = os.path.join(directory, "libespeak-ng-private.so")
    try:
        Path(path).write_bytes(image)
    except OSError:
        return None
    return (path, None) if _loads(path) else None  # e.g. a temp dir mounted noexec


def _get_paths() -> _Paths:
    """Locate the library and data; make this process's private copy of the library.

    If no loadable private copy can be made, the installed library itself is used (still
    loaded fresh for each call, unless something else in the process holds it loaded).
    """
    global _paths
    if _paths is not None and _paths.pid == os.getpid():
        return _paths
    if _paths is not None and _paths.fd is not None:  # inherited from the parent by fork
        with contextlib.suppress(OSError):
            os.close(_paths.fd)
    try:
        import espeakng_loader

        source = str(espeakng_loader.get_library_path())
        data = str(espeakng_loader.get_data_path())
    except (ImportError, OSError, AttributeError) as exc:
        raise RuntimeError(f"{_INSTALL_HINT} ({exc})") from exc
    library, fd = _private_copy(source) or (source, None)
    _paths = _Paths(
        pid=os.getpid(),
        library=library,
        fd=fd,
        data=data,
        variants=Path(data) / "voices" / "!v",
    )
    return _paths


def _configure(lib: ctypes.CDLL) -> None:
    """Declare the C signatures used."""
    c_int, c_uint = ctypes.c_int, ctypes.c_uint
    lib.espeak_Initialize.argtypes = (c_int, c_int, ctypes.c_char_p, c_int)
    lib.espeak_Initialize.restype = c_int
    lib.espeak_SetSynthCallback.argtypes = (_SynthCallback,)
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
    lib.espeak_SetVoiceByName.restype = c_int
    lib.espeak_SetParameter.argtypes = (c_int, c_int, c_int)
    lib.espeak_SetParameter.restype = c_int
    lib.espeak_Synth.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        c_uint,
        c_int,
        c_uint,
        c_uint,
        ctypes.POINTER(c_uint),
        ctypes.c_void_p,
    )
    lib.espeak_Synth.restype = c_int
    lib.espeak_Synchronize.argtypes = ()
    lib.espeak_Synchronize.restype = c_int
    lib.espeak_Terminate.argtypes = ()
    lib.espeak_Terminate.restype = c_int


class _Session:
    """One fresh libespeak-ng instance, for one utterance; use as a context manager."""

    def __init__(self, paths: _Paths) -> None:
        self._paths = paths
        self._chunks: list[bytes] = []
        self._events: list[tuple[int, int, bytes]] = []
        self._error: BaseException | None = None
        self._callback = _SynthCallback(self._on_synth)  # must outlive the library's use
        self._initialized = False
        try:
            self._lib = ctypes.CDLL(paths.library)
        except OSError as exc:
            raise RuntimeError(f"{_INSTALL_HINT} ({exc})") from exc

    def __enter__(self) -> _Session:
        try:
            _configure(self._lib)
            rate = self._lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, self._paths.data.encode(), _INITIALIZE_PHONEME_EVENTS
            )
            if rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed with data at {self._paths.data}")
            self._initialized = True
            self.sample_rate: int = rate
            self._lib.espeak_SetSynthCallback(self._callback)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._initialized:
            self._lib.espeak_Terminate()
            self._initialized = False
        _dlclose(self._lib._handle)

    def _on_synth(self, wav: ctypes._Pointer, numsamples: int, events: ctypes._Pointer) -> int:
        try:
            if wav and numsamples > 0:
                self._chunks.append(ctypes.string_at(wav, numsamples * 2))
            if events:
                i = 0
                while events[i].type != _EVENT_LIST_TERMINATED:
                    ev = events[i]
                    if ev.type == _EVENT_PHONEME:
                        self._events.append((ev.sample, ev.audio_position, ev.id.string))
                    i += 1
        except BaseException as exc:  # an exception cannot cross the C frames: abort
            self._error = exc
            return 1
        return 0

    def set_voice(self, voice: Voice) -> None:
        base, _, variant = voice.name.partition("+")
        if variant and not (self._paths.variants / variant).is_file():
            raise ValueError(f"unknown eSpeak voice variant {variant!r} in {voice.name!r}")
        try:
            encoded = voice.name.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"unknown eSpeak voice {voice.name!r}") from None
        if not base or self._lib.espeak_SetVoiceByName(encoded) != _EE_OK:
            raise ValueError(f"unknown eSpeak voice {voice.name!r}")
        for param, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_VOLUME, _VOLUME),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
        ):
            if self._lib.espeak_SetParameter(param, value, 0) != _EE_OK:
                raise RuntimeError(f"espeak_SetParameter({param}, {value}) failed")

    def synth(self, text: str) -> tuple[np.ndarray, list[tuple[int, int, bytes]]]:
        """Synthesise ``text``; return int16 samples and (sample, ms, mnemonic) events."""
        data = text.encode("utf-8")
        buf = ctypes.create_string_buffer(data)
        self._chunks, self._events, self._error = [], [], None
        seed = getattr(self._lib, "espeak_ng_SetRandSeed", None)
        if seed is not None:
            seed.argtypes = (ctypes.c_long,)
            seed(_RAND_SEED)
        _libc_srand(_RAND_SEED)
        ret = self._lib.espeak_Synth(
            buf, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if ret != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with error {ret}")
        self._lib.espeak_Synchronize()
        if self._error is not None:
            raise RuntimeError("failed to collect eSpeak output") from self._error
        return np.frombuffer(b"".join(self._chunks), dtype=np.int16), self._events


_srand: Callable[[int], None] | None = None


def _libc_srand(seed: int) -> None:
    """Seed libc ``rand()``, which eSpeak uses for breath noise."""
    global _srand
    if _srand is None:
        try:
            srand = ctypes.CDLL(None).srand
        except (OSError, AttributeError, TypeError):  # no libc symbols to reach (not POSIX)
            return
        srand.argtypes = (ctypes.c_uint,)
        srand.restype = None
        _srand = srand
    _srand(seed)


def _synthesize_raw(
    text: str, voice: Voice
) -> tuple[np.ndarray, list[tuple[int, int, bytes]], int]:
    """Run one utterance on a fresh library instance: (int16 audio, events, sample rate)."""
    with _lock, _Session(_get_paths()) as session:
        session.set_voice(voice)
        audio, events = session.synth(text)
        return audio, events, session.sample_rate


# --- phoneme timeline ----------------------------------------------------------------------


def _event_seconds(sample: int, ms: int, sample_rate: int) -> float:
    """Event time in seconds: the exact sample index when it agrees with the ms position."""
    if abs(sample * 1000.0 / sample_rate - ms) <= 1.5:
        return sample / sample_rate
    return ms / 1000.0


def _build_phonemes(
    events: list[tuple[int, int, bytes]], n_samples: int, sample_rate: int, duration: float
) -> list[Phoneme]:
    """Turn raw phoneme events into a contiguous phoneme list covering ``[0, duration]``.

    Times are computed on eSpeak's own timeline (``n_samples`` at ``sample_rate``), where
    zero-length events (such as the final ``_`` marker) are dropped, and are then clamped
    to ``duration``, the length of the resampled audio (they differ by < 1 output sample);
    the last phoneme ends exactly at ``duration``.
    """
    raw_duration = n_samples / sample_rate
    timed: list[tuple[float, str, bool]] = []
    for sample, ms, raw in events:
        mnemonic = raw.decode("utf-8", errors="replace")
        symbol = mnemonic.lstrip(_STRESS_MARKS)
        if not symbol:
            continue
        marks = mnemonic[: len(mnemonic) - len(symbol)]
        stressed = any(c in _STRESSED_MARKS for c in marks)
        start = min(max(_event_seconds(sample, ms, sample_rate), 0.0), raw_duration)
        timed.append((start, symbol, stressed))
    timed.sort(key=lambda item: item[0])  # stable: keeps eSpeak's order for ties

    spans: list[tuple[str, float, float, bool]] = []
    if timed and timed[0][0] > 0.0:  # audio before the first event is silence
        spans.append(("_", 0.0, timed[0][0], False))
    for i, (start, symbol, stressed) in enumerate(timed):
        end = timed[i + 1][0] if i + 1 < len(timed) else raw_duration
        if end > start:
            spans.append((symbol, start, end, stressed))

    phonemes: list[Phoneme] = []
    for symbol, start, end, stressed in spans:
        start, end = min(start, duration), min(end, duration)
        if end > start:
            phonemes.append(Phoneme(symbol, start, end, stressed))
    if phonemes and phonemes[-1].end != duration:  # the last one ends with the audio
        phonemes[-1] = replace(phonemes[-1], end=duration)
    return phonemes


def synthesize(text: str, voice: Voice) -> Speech:
    """Synthesise ``text`` with ``voice``; return the audio and its phoneme timeline.

    The result is deterministic: the same text and voice give bit-identical audio and
    identical phonemes, whatever was synthesised before and in whichever process.

    Raises:
        ValueError: if the text is empty or has nothing speakable, or the voice is unknown.
        RuntimeError: if libespeak-ng cannot be loaded or fails.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text to synthesise is empty: {text!r}")
    if "\x00" in text:
        raise ValueError("text to synthesise contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text to synthesise is not valid Unicode: {exc.reason}") from None
    raw, events, sample_rate = _synthesize_raw(text, voice)

    if len(raw) == 0:
        raise ValueError(f"text has no speakable content: {text!r}")
    audio = soxr.resample(raw.astype(np.float32) / 32768.0, sample_rate, SAMPLE_RATE)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)
    duration = len(audio) / SAMPLE_RATE
    phonemes = _build_phonemes(events, len(raw), sample_rate, duration)
    if all(p.is_pause for p in phonemes):
        raise ValueError(f"text has no speakable content: {text!r}")
    return Speech(audio=audio, phonemes=phonemes, text=text, voice=voice)
