"""Tests for readtalk.data.synthtalk.tts (real libespeak-ng synthesis, no mocks)."""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import sys
import threading

import numpy as np
import pytest

from readtalk.data.synthtalk import tts
from readtalk.data.synthtalk.tts import (
    SAMPLE_RATE,
    VOICES,
    Phoneme,
    Speech,
    Voice,
    speech_bounds,
    synthesize,
)

US = Voice("en-us", 160, 50, 50)
SENTENCE = "Hello world, how are you today? I am fine."
VOWELS = {
    "a", "aI", "aU", "eI", "oU", "3:", "i:", "u:", "A:", "O:", "E", "I", "0", "V", "U", "@",
}  # fmt: skip


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _segment(speech: Speech, start: float, end: float) -> np.ndarray:
    return speech.audio[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]


def _median_f0(speech: Speech) -> float:
    """Median autocorrelation F0 over the longer vowels."""
    estimates = []
    for p in speech.phonemes:
        if p.symbol in VOWELS and p.duration > 0.06:
            seg = _segment(speech, p.start, p.end).astype(np.float64)
            seg -= seg.mean()
            ac = np.correlate(seg, seg, "full")[len(seg) - 1 :]
            lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
            estimates.append(SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(estimates))


def _fingerprint(speech: Speech) -> tuple[bytes, list[Phoneme]]:
    return speech.audio.tobytes(), speech.phonemes


def _synth_fingerprint(text: str, name: str) -> tuple[bytes, list[Phoneme]]:
    return _fingerprint(synthesize(text, Voice(name, 160, 50, 50)))


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="LP64 layout")
def test_event_struct_matches_speak_lib_h_layout() -> None:
    assert ctypes.sizeof(tts._Event) == 40
    assert tts._Event.audio_position.offset == 16
    assert tts._Event.sample.offset == 20
    assert tts._Event.user_data.offset == 24
    assert tts._Event.id.offset == 32
    assert ctypes.sizeof(tts._EventId) == 8


def test_hello_world_audio_and_phonemes() -> None:
    speech = synthesize("Hello world", US)
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    assert np.abs(speech.audio).max() <= 1.0 and _rms(speech.audio) > 0.02
    assert speech.duration == pytest.approx(len(speech.audio) / 16000)
    assert 0.5 < speech.duration < 2.0
    assert speech.text == "Hello world" and speech.voice == US

    spoken = [p for p in speech.phonemes if not p.is_pause]
    assert [p.symbol for p in spoken] == ["h", "@", "l", "oU", "w", "3:", "l", "d"]
    assert [p.symbol for p in spoken if p.stressed] == ["oU", "3:"]

    # Contiguous tiling of the whole audio, no stress marks left in the symbols.
    ph = speech.phonemes
    assert ph[0].start == 0.0 and ph[-1].end == speech.duration
    for a, b in itertools.pairwise(ph):
        assert a.end == b.start and a.end > a.start
    assert all(not set(p.symbol) & set("',%=") for p in ph)


@pytest.mark.parametrize("name", ["en-us", "en-us+f2"])  # f2 adds random breath noise
def test_deterministic_regardless_of_history(name: str) -> None:
    voice = Voice(name, 160, 50, 50)
    first = synthesize(SENTENCE, voice)
    synthesize("Something else entirely, with a breathy voice.", Voice("en-us+f2", 190, 70, 30))
    synthesize("And another one.", Voice("en-gb-scotland", 140, 20, 80))
    np.random.default_rng().random(3)  # unrelated activity in between
    ctypes.CDLL(None).rand()
    again = synthesize(SENTENCE, voice)
    assert first.audio.tobytes() == again.audio.tobytes()
    assert first.phonemes == again.phonemes


def test_phoneme_times_line_up_with_audio_energy() -> None:
    speech = synthesize(SENTENCE, US)
    overall = _rms(speech.audio)
    vowels = [p for p in speech.phonemes if p.symbol in VOWELS and p.duration > 0.04]
    pauses = [p for p in speech.phonemes if p.is_pause and p.duration > 0.05]
    assert len(vowels) >= 8 and len(pauses) >= 2  # comma and question-mark pauses
    for p in vowels:  # middle half of each vowel is loud
        quarter = p.duration / 4
        assert _rms(_segment(speech, p.start + quarter, p.end - quarter)) > 0.3 * overall, p
    for p in pauses:  # pauses are silent (allowing 15 ms for the previous sound to decay)
        assert _rms(_segment(speech, p.start + 0.015, p.end)) < 0.02 * overall, p

    t_first, t_last = speech_bounds(speech)
    assert 0.0 < t_first < 0.05 and t_last <= speech.duration
    assert np.abs(_segment(speech, 0.0, t_first)).max() < 0.01  # leading silence
    assert _rms(_segment(speech, t_first, t_last)) > 0.9 * overall


def test_voice_parameters_take_effect() -> None:
    slow = synthesize(SENTENCE, Voice("en-us", 110, 50, 50))
    fast = synthesize(SENTENCE, Voice("en-us", 250, 50, 50))
    assert slow.duration > 1.6 * fast.duration
    low = _median_f0(synthesize(SENTENCE, Voice("en-us", 160, 10, 50)))
    high = _median_f0(synthesize(SENTENCE, Voice("en-us", 160, 90, 50)))
    assert high > 1.5 * low


def test_curated_voices_work_and_are_male_or_female() -> None:
    assert len(VOICES) >= 8 and len(set(VOICES)) == len(VOICES)
    female = [v for v in VOICES if "+f" in v]
    assert len(female) >= 4 and len(VOICES) - len(female) >= 4
    audios = set()
    for name in VOICES:
        speech = synthesize(SENTENCE, Voice(name, 160, 50, 50))
        audios.add(speech.audio.tobytes())
        f0 = _median_f0(speech)
        assert (f0 > 145) if name in female else (f0 < 125), (name, f0)
    assert len(audios) == len(VOICES)


@pytest.mark.parametrize("text", ["", "   \n\t", "...", " - , ; "])
def test_unspeakable_text_raises(text: str) -> None:
    with pytest.raises(ValueError, match=r"empty|speakable"):
        synthesize(text, US)


@pytest.mark.parametrize("name", ["en-gb", "xx-nope", "en-us+nope", "en-us+F3"])
def test_unknown_voice_raises_naming_it(name: str) -> None:
    with pytest.raises(ValueError, match="unknown eSpeak voice") as info:
        synthesize("Hello.", Voice(name, 160, 50, 50))
    assert name.split("+")[-1] in str(info.value)


@pytest.mark.parametrize(
    ("rate", "pitch", "pitch_range"), [(50, 50, 50), (160, -1, 50), (160, 50, 101)]
)
def test_voice_validates_parameters(rate: int, pitch: int, pitch_range: int) -> None:
    with pytest.raises(ValueError):
        Voice("en-us", rate, pitch, pitch_range)


def test_speech_bounds_requires_speech() -> None:
    silent = Speech(np.zeros(160, np.float32), [Phoneme("_", 0.0, 0.01, False)], "x", US)
    with pytest.raises(ValueError):
        speech_bounds(silent)


def test_missing_library_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tts, "_paths", None)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="pip install espeakng-loader"):
        synthesize("Hello.", US)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_worker_processes_match_in_process_result(method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} not available")
    jobs = [(SENTENCE, "en-us"), ("The quick brown fox.", "en-us+f3"), (SENTENCE, "en-us")]
    expected = [_synth_fingerprint(*job) for job in jobs]
    with multiprocessing.get_context(method).Pool(2) as pool:
        got = pool.starmap_async(_synth_fingerprint, jobs).get(timeout=60)
    assert got == expected


def test_fork_while_another_thread_synthesizes() -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("fork not available")
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            synthesize("Keep talking while the pool forks.", US)

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            got = pool.starmap_async(_synth_fingerprint, [(SENTENCE, "en-us")] * 4).get(30)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert all(g == got[0] for g in got)
    assert got[0] == _synth_fingerprint(SENTENCE, "en-us")
