"""SyncNet and the Sync-C / Sync-D lip-sync metrics as the official ``syncnet_python`` has them.

SyncNet (Chung & Zisserman, "Out of time: automated lip sync in the wild", ACCV workshops 2016)
embeds 0.2 s of speech (13 MFCC x 20 frames at 100 Hz) and the matching 5 video frames (25 fps)
into one space where in-sync pairs lie close. The network here has the layout and parameter
names of the released ``SyncNetModel.py`` (``netcnnaud``, ``netfcaud``, ``netcnnlip``,
``netfclip``) so the official ``syncnet_v2.model`` loads into size ``v2`` by name, strictly.

Scoring follows ``SyncNetInstance.evaluate``: embed every 5-frame window and its audio window,
compare each video window with the audio windows ``-vshift..vshift`` frames around it (zero
vectors past the ends), average the distances over the video, and read off

    offset = the shift with the smallest mean distance     (AV offset, frames)
    Sync-D = that smallest mean distance                   (lower is better)
    Sync-C = median - min of the mean-distance curve       (confidence, higher is better)

Sign of the offset, as in the official code: video window ``i`` matches audio window
``i - offset``; a positive offset means the sound comes early.

Inputs as the official code feeds them: video frames BGR, values 0..255 (not normalised), face
crops at 224 px (``crop="full"`` takes the whole, centre-squared frame: right for SynthTalk and
for face-crop datasets; ``crop="lower"`` its lower half stretched to a square); MFCCs of 16 kHz
audio at int16 scale, computed exactly as ``python_speech_features.mfcc`` with its defaults.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from readtalk.errors import ReadtalkError
from readtalk.media import load_audio, probe, read_video
from readtalk.release import load_release

RELEASE_KIND = "readtalk.syncnet"
CROPS = ("full", "lower")
SAMPLE_RATE = 16000
WINDOW = 5  # video frames per window (0.2 s at 25 fps)
MFCC_PER_FRAME = 4  # 100 Hz MFCC frames per 25 fps video frame
MFCC_WINDOW = WINDOW * MFCC_PER_FRAME  # 20
SAMPLES_PER_FRAME = SAMPLE_RATE // 25  # 640


# ---------------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class SyncNetConfig:
    image_size: int = 224  # square face crop fed to the video branch
    video_channels: tuple[int, ...] = (96, 256, 256, 256, 256, 512)
    audio_channels: tuple[int, ...] = (64, 192, 384, 256, 256, 512)
    fc_hidden: int = 512
    embed_dim: int = 1024

    @property
    def video_kernel(self) -> int:
        """Spatial size left for the last video conv, which reduces it to 1x1 (6 at 224 px)."""
        s = (self.image_size - 7) // 2 + 1  # conv 7x7 / 2
        s = (s - 3) // 2 + 1  # max-pool 3x3 / 2
        s = (s + 2 - 5) // 2 + 1  # conv 5x5 / 2, padding 1
        s = (s + 2 - 3) // 2 + 1  # max-pool 3x3 / 2, padding 1
        return (s - 3) // 2 + 1  # three 3x3 convs keep the size; max-pool 3x3 / 2

    def validate(self) -> None:
        if len(self.video_channels) != 6 or len(self.audio_channels) != 6:
            raise ReadtalkError("SyncNet needs 6 video and 6 audio channel counts")
        if min(*self.video_channels, *self.audio_channels, self.fc_hidden, self.embed_dim) < 1:
            raise ReadtalkError("SyncNet channel counts must be positive")
        if self.image_size < 51:
            raise ReadtalkError(f"SyncNet image_size must be at least 51, got {self.image_size}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SyncNetConfig:
        d = json.loads(text)
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()},
        )


SYNCNET_SIZES = {
    # the official syncnet_v2 layout (13.6 M parameters, 224 px)
    "v2": SyncNetConfig(),
    # same structure at 96 px, a quarter of the channels or fewer: trainable on a CPU
    "small96": SyncNetConfig(
        image_size=96,
        video_channels=(32, 64, 64, 64, 64, 128),
        audio_channels=(16, 32, 64, 48, 48, 128),
        fc_hidden=128,
        embed_dim=256,
    ),
    "debug": SyncNetConfig(
        image_size=64,
        video_channels=(4, 8, 8, 8, 8, 16),
        audio_channels=(4, 8, 8, 8, 8, 16),
        fc_hidden=16,
        embed_dim=16,
    ),
}


def _fc(c_in: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(c_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
    )


def _unit(conv: nn.Module, inplace: bool = True) -> list[nn.Module]:
    """conv, BatchNorm, ReLU: three Sequential slots, as in the release."""
    bn = nn.BatchNorm2d if isinstance(conv, nn.Conv2d) else nn.BatchNorm3d
    return [conv, bn(conv.out_channels), nn.ReLU(inplace=inplace)]


class SyncNet(nn.Module):
    """Two-stream SyncNet; module names and Sequential indices are those of the official release
    (the 1x1 max-pool in the audio stream is a no-op kept for the indices)."""

    def __init__(self, cfg: SyncNetConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        a1, a2, a3, a4, a5, a6 = cfg.audio_channels
        v1, v2, v3, v4, v5, v6 = cfg.video_channels
        k = cfg.video_kernel
        self.netcnnaud = nn.Sequential(  # input (N, 1, 13, 20): MFCC x time
            *_unit(nn.Conv2d(1, a1, 3, padding=1)),
            nn.MaxPool2d(1, 1),
            *_unit(nn.Conv2d(a1, a2, 3, padding=1)),
            nn.MaxPool2d(3, stride=(1, 2)),  # (13, 20) -> (11, 9)
            *_unit(nn.Conv2d(a2, a3, 3, padding=1)),
            *_unit(nn.Conv2d(a3, a4, 3, padding=1)),
            *_unit(nn.Conv2d(a4, a5, 3, padding=1)),
            nn.MaxPool2d(3, stride=2),  # (11, 9) -> (5, 4)
            *_unit(nn.Conv2d(a5, a6, (5, 4)), inplace=False),  # (5, 4) -> (1, 1)
        )
        self.netfcaud = _fc(a6, cfg.fc_hidden, cfg.embed_dim)
        self.netfclip = _fc(v6, cfg.fc_hidden, cfg.embed_dim)
        same = {"kernel_size": (1, 3, 3), "padding": (0, 1, 1)}
        self.netcnnlip = nn.Sequential(  # input (N, 3, 5, S, S): BGR 0..255, 5 frames
            *_unit(nn.Conv3d(3, v1, (5, 7, 7), stride=(1, 2, 2))),  # time 5 -> 1; 224 -> 109
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),  # 109 -> 54
            *_unit(nn.Conv3d(v1, v2, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1))),  # -> 26
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # 26 -> 13
            *_unit(nn.Conv3d(v2, v3, **same)),
            *_unit(nn.Conv3d(v3, v4, **same)),
            *_unit(nn.Conv3d(v4, v5, **same)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),  # 13 -> 6
            *_unit(nn.Conv3d(v5, v6, (1, k, k))),  # 6 -> 1
        )

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC windows -> (N, embed_dim)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, S, S) BGR windows in 0..255 -> (N, embed_dim)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


# ------------------------------------------------------------------------------------- weights


def check_state_dict(model: nn.Module, state: object, where: str) -> dict[str, torch.Tensor]:
    """``state`` ready for ``load_state_dict(strict=True)``, or a one-line ReadtalkError.

    Files saved before PyTorch 0.4 lack BatchNorm's ``num_batches_tracked`` counters, which
    inference never reads; they are filled in (zero) so the strict load can proceed."""
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ReadtalkError(f"{where} is not a state dict of tensors (it holds a {type(state)})")
    own = model.state_dict()
    state = dict(state)
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""
                parts.append(f"{len(keys)} {what} key{'s' * (len(keys) > 1)}, e.g. {keys[0]}{more}")
        raise ReadtalkError(f"{where} does not hold SyncNet weights: {'; '.join(parts)}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ReadtalkError(
                f"{where}: {k} has shape {tuple(state[k].shape)}, the model expects "
                f"{tuple(v.shape)} (wrong SyncNet size?)"
            )
    return state


def load_syncnet(path: str | Path, size: str = "v2") -> tuple[SyncNet, str]:
    """A SyncNet in eval mode and the crop it was trained on, from either weights format.

    ``syncnet.safetensors`` (``readtalk train syncnet``; a run folder holding one also works)
    carries its own size and crop. Anything else is read as a ``torch.save``d state dict in the
    official layout, such as ``syncnet_v2.model``, for size ``size``, crop ``full``.
    """

    path = Path(path)
    if path.is_dir():
        path = path / "syncnet.safetensors"
    if not path.is_file():
        raise ReadtalkError(f"SyncNet weights not found: {path}")
    if path.suffix == ".safetensors":
        tensors, meta = load_release(path, RELEASE_KIND)
        try:
            cfg = SyncNetConfig.from_json(meta["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise ReadtalkError(f"{path}: no valid SyncNet config in its metadata ({e})") from None
        crop = meta.get("crop", "full")
    else:
        if size not in SYNCNET_SIZES:
            raise ReadtalkError(
                f"unknown SyncNet size {size!r} (known: {', '.join(SYNCNET_SIZES)})"
            )
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and weights-only errors all mean "not for us"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ReadtalkError(f"cannot read {path} as a PyTorch state dict ({first})") from None
        cfg, crop = SYNCNET_SIZES[size], "full"
    model = SyncNet(cfg)
    model.load_state_dict(check_state_dict(model, tensors, str(path)), strict=True)
    return model.eval(), crop


# ------------------------------------------------------------------------------------ features


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _mel_filterbank(n_filters: int, nfft: int, sample_rate: int) -> np.ndarray:
    """Triangular filters (n_filters, nfft // 2 + 1) on FFT bins, python_speech_features style:
    corners rounded down to whole bins, peaks of height 1."""
    mel = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_filters + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mel) / sample_rate)
    fb = np.zeros((n_filters, nfft // 2 + 1))
    k = np.arange(nfft // 2 + 1)
    for j in range(n_filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        rise = (k >= lo) & (k < mid)
        fall = (k >= mid) & (k < hi)
        fb[j, rise] = (k[rise] - lo) / (mid - lo)
        fb[j, fall] = (hi - k[fall]) / (hi - mid)
    return fb


def _dct2_ortho(n_in: int, n_out: int) -> np.ndarray:
    """The first ``n_out`` rows of the orthonormal DCT-II matrix of size ``n_in``."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None]
    m = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    m[0] /= np.sqrt(2.0)
    return m


def mfcc(audio: np.ndarray) -> np.ndarray:
    """MFCCs (T, 13) of 16 kHz mono float audio in [-1, 1], 100 frames per second.

    Equal to ``python_speech_features.mfcc(int16_audio, 16000)`` (the official front end): audio
    at int16 scale, pre-emphasis 0.97, 25 ms rectangular windows every 10 ms (the tail
    zero-padded to a whole window), 512-point power spectrum, 26 mel filters, log, orthonormal
    DCT-II, 13 coefficients, sine lifter 22, coefficient 0 replaced by the log frame energy.
    """
    x = np.asarray(audio, dtype=np.float64).reshape(-1) * 32768.0
    if x.size == 0:
        raise ReadtalkError("no audio samples to compute MFCCs from")
    x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    win, hop, nfft = 400, 160, 512
    n = 1 if x.size <= win else 1 + math.ceil((x.size - win) / hop)
    x = np.concatenate([x, np.zeros((n - 1) * hop + win - x.size)])
    frames = x[np.arange(win)[None] + hop * np.arange(n)[:, None]]  # (T, 400)
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft  # (T, 257)
    eps = np.finfo(np.float64).eps
    energy = power.sum(1)
    energy[energy == 0] = eps
    feat = power @ _mel_filterbank(26, nfft, SAMPLE_RATE).T  # (T, 26)
    feat[feat == 0] = eps
    cep = np.log(feat) @ _dct2_ortho(26, 13).T  # (T, 13)
    cep *= 1.0 + 11.0 * np.sin(np.pi * np.arange(13) / 22.0)  # lifter L = 22
    cep[:, 0] = np.log(energy)
    return cep.astype(np.float32)


def crop_frames(frames: np.ndarray, size: int, crop: str = "full") -> np.ndarray:
    """uint8 RGB (F, H, W, 3) -> uint8 RGB (F, size, size, 3): the centre square of each frame
    (``full``) or its lower half (``lower``), resized to ``size``."""
    if crop not in CROPS:
        raise ReadtalkError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ReadtalkError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    sq = frames[:, y0 : y0 + s, x0 : x0 + s]
    if crop == "lower":
        sq = sq[:, s // 2 :]
    if sq.shape[1:3] == (size, size):
        return np.ascontiguousarray(sq)
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in sq])


def video_windows(crops: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """Windows ``start..stop-1`` of 5 frames as network input: (N, 3, 5, S, S), BGR, 0..255."""
    x = torch.from_numpy(np.ascontiguousarray(crops[start : stop + WINDOW - 1, ..., ::-1]))
    x = x.permute(3, 0, 1, 2).float()  # (3, n + 4, S, S)
    return x.unfold(1, WINDOW, 1).permute(1, 0, 4, 2, 3)  # (N, 3, 5, S, S)


def audio_windows(feats: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """The 0.2-s MFCC windows of video windows ``start..stop-1``: (N, 1, 13, 20)."""
    a, b = MFCC_PER_FRAME * start, MFCC_PER_FRAME * (stop - 1) + MFCC_WINDOW
    x = torch.from_numpy(np.ascontiguousarray(feats[a:b].T))  # (13, 4N + 16)
    return x.unfold(1, MFCC_WINDOW, MFCC_PER_FRAME).permute(1, 0, 2)[:, None]


def window_count(frames: int, samples: int) -> int:
    """Number of scored windows, as the official code counts them (it leaves out the last)."""
    return min(frames, samples // SAMPLES_PER_FRAME) - WINDOW


def _embed(
    model: SyncNet, forward, windows, source: np.ndarray, n: int, batch: int
) -> torch.Tensor:
    """``forward`` over ``windows(source, i, j)`` in batches on the model's device -> (n, D)."""
    dev = next(model.parameters()).device
    out = [forward(windows(source, i, min(n, i + batch)).to(dev)).cpu() for i in range(0, n, batch)]
    return torch.cat(out)


@torch.no_grad()
def embed_video(model: SyncNet, crops: np.ndarray, n: int, batch: int = 32) -> torch.Tensor:
    """Embeddings (n, D) of the first ``n`` 5-frame windows of cropped frames (F, S, S, 3)."""
    return _embed(model, model.forward_video, video_windows, crops, n, batch)


@torch.no_grad()
def embed_audio(model: SyncNet, feats: np.ndarray, n: int, batch: int = 256) -> torch.Tensor:
    """Embeddings (n, D) of the audio windows of the first ``n`` video windows (MFCC (T, 13))."""
    return _embed(model, model.forward_audio, audio_windows, feats, n, batch)


# ------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class SyncResult:
    offset: int  # frames; video window i matches audio window i - offset
    sync_d: float  # min of the mean-distance curve
    sync_c: float  # median - min of the curve
    offsets: np.ndarray  # (2 vshift + 1,) -vshift..vshift
    curve: np.ndarray  # (2 vshift + 1,) mean distance at each offset
    windows: int  # video windows averaged over

    def to_dict(self) -> dict:
        return {
            "sync_c": self.sync_c,
            "sync_d": self.sync_d,
            "offset": self.offset,
            "windows": self.windows,
            "curve": {int(o): float(d) for o, d in zip(self.offsets, self.curve, strict=True)},
        }


def pair_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance over the last axis as ``F.pairwise_distance`` (eps 1e-6) has it."""
    return (a - b + 1e-6).norm(dim=-1)


def window_distances(video: torch.Tensor, audio: torch.Tensor, vshift: int) -> torch.Tensor:
    """(N, 2 vshift + 1) distances: column ``k`` compares video window ``i`` with audio window
    ``i + k - vshift`` (zero vectors outside the clip), i.e. offset ``vshift - k``."""
    n, width = video.shape[0], 2 * vshift + 1
    padded = torch.nn.functional.pad(audio, (0, 0, vshift, vshift))  # (N + 2 vshift, D)
    shifted = padded.unfold(0, width, 1)[:n].transpose(1, 2)  # (N, width, D)
    return pair_distance(video[:, None], shifted)


def score_distances(dists: torch.Tensor, vshift: int) -> SyncResult:
    """Offset, Sync-D and Sync-C from per-window distances laid out as ``window_distances``."""
    mean = dists.mean(0).double()  # (2 vshift + 1,)
    k = int(torch.argmin(mean))
    low = float(mean[k])
    curve = mean.flip(0).numpy()  # ascending offsets
    return SyncResult(
        offset=vshift - k,
        sync_d=low,
        sync_c=float(torch.median(mean)) - low,
        offsets=np.arange(-vshift, vshift + 1),
        curve=curve,
        windows=int(dists.shape[0]),
    )


def sync_scores(
    model: SyncNet,
    frames: np.ndarray,
    audio: np.ndarray,
    crop: str = "full",
    vshift: int = 15,
    batch: int = 32,
) -> SyncResult:
    """Sync-C, Sync-D and the AV offset of 25 fps uint8 RGB frames (F, H, W, 3) against 16 kHz
    mono audio, by the official protocol (see the module docstring)."""
    if vshift < 1:
        raise ReadtalkError(f"vshift must be at least 1, got {vshift}")
    n = window_count(len(frames), len(audio))
    if n < 1:
        raise ReadtalkError(
            f"too short to score: {len(frames)} frames and {len(audio) / SAMPLE_RATE:.2f} s of "
            f"audio (SyncNet needs at least {WINDOW + 1} frames of both)"
        )
    crops = crop_frames(frames, model.cfg.image_size, crop)
    feats = mfcc(audio)
    video = embed_video(model, crops, n, batch)
    sound = embed_audio(model, feats, n)
    return score_distances(window_distances(video, sound, vshift), vshift)


def score_file(
    model: SyncNet,
    video: str | Path,
    audio: str | Path | None = None,
    crop: str = "full",
    vshift: int = 15,
) -> SyncResult:
    """``sync_scores`` of an mp4 against its own audio track (or a separate audio file)."""

    fps = probe(video).fps
    if abs(fps - 25) > 0.01:
        raise ReadtalkError(f"{video} runs at {fps:g} fps; SyncNet scores 25 fps video")
    return sync_scores(model, read_video(video), load_audio(audio or video), crop, vshift)
