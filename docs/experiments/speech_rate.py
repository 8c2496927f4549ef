"""Is real speech faster than the espeak-ng speech the model was trained on? (docs/results.md,
section 6, "A noise gate on what the model hears".)

    .venv/bin/pip install pocketsphinx==5.1.1      # not a readtalk dependency
    .venv/bin/python docs/experiments/speech_rate.py

Counts the vowels pocketsphinx's phone recogniser (its packaged US-English acoustic model and
phone language model, ``allphone`` mode, language weight 0.5) finds per voiced second (frames
within 30 dB of the loud frames, as ``readtalk.eval.lipsync``), and the centroid of the speech
energy's modulation spectrum between 1.5 and 10 Hz (the syllable rhythm), for pyannote-audio's
``sample.wav`` (30 s of real conversation) and 30 s of espeak-ng speech at 170 words a minute
(``readtalk.live.speech_for``, the benchmarks' speech) and at 220 and 280.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np
from pocketsphinx import Config, Decoder, get_model_path

from readtalk.data.synthtalk import tts
from readtalk.data.synthtalk.text import sentence
from readtalk.eval.lipsync import VOICED_DB, frame_energy
from readtalk.live import speech_for
from readtalk.media import SAMPLE_RATE, SAMPLES_PER_FRAME, load_audio

VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
SAMPLE = Path(sysconfig.get_paths()["purelib"]) / "pyannote" / "audio" / "sample" / "sample.wav"


def recogniser() -> Decoder:
    m = get_model_path()
    return Decoder(
        Config(
            hmm=os.path.join(m, "en-us/en-us"),
            allphone=os.path.join(m, "en-us/en-us-phone.lm.bin"),
            lm=None, dict=None, lw=0.5, beam=1e-20, pbeam=1e-20, loglevel="ERROR",
        )
    )  # fmt: skip


def vowels(dec: Decoder, audio: np.ndarray) -> int:
    dec.start_utt()
    dec.process_raw((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
    dec.end_utt()
    return sum(s.word in VOWELS for s in dec.seg())


def rhythm(audio: np.ndarray) -> tuple[float, float]:
    """(voiced seconds, modulation centroid in Hz) of the clipped frame energy."""
    e = frame_energy(audio, len(audio) // SAMPLES_PER_FRAME)
    floor = np.percentile(e, 95) - VOICED_DB
    voiced = float((e >= floor).sum()) / 25
    x = np.maximum(e, floor)
    x = x - x.mean()
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / 25)
    band = (f > 1.5) & (f < 10)
    return voiced, float((f[band] * power[band]).sum() / power[band].sum())


def espeak(rate: int, seconds: float = 30.0) -> np.ndarray:
    rng, parts, pause = np.random.default_rng(0), [], np.zeros(9600, np.float32)
    while sum(map(len, parts)) < seconds * SAMPLE_RATE:
        parts += [tts.synthesize(sentence(rng), tts.Voice("en-us", rate=rate)).audio, pause]
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]


def main() -> None:
    dec = recogniser()
    speech = {"real (pyannote sample.wav)": load_audio(SAMPLE), "espeak-ng 170": speech_for(30)}
    speech |= {f"espeak-ng {r}": espeak(r) for r in (220, 280)}
    print("| speech | voiced s | vowels per voiced s | modulation centroid |\n|---|---|---|---|")
    for name, audio in speech.items():
        voiced, centroid = rhythm(audio)
        print(f"| {name} | {voiced:.1f} | {vowels(dec, audio) / voiced:.2f} | {centroid:.2f} Hz |")


if __name__ == "__main__":
    main()
