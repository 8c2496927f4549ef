"""``readtalk cache``: encode a dataset once into shards of VAE latents and speech codes.

    readtalk cache --data data/synthtalk --vae vae.safetensors --speech speechae.safetensors \
        --out cache/synthtalk --frames 121

Every clip (both splits) is cut into non-overlapping windows of ``frames`` (8k+1) frames
starting at frame 0 (a 121-frame clip gives one window of 121). Per window the cache holds

* ``latent`` (C, f, h, w) float16: the VAE posterior mean of the window,
* ``ref`` (C, 1, h, w) float16: the clip's reference portrait encoded as a single frame,
* ``audio`` (f, code_dim) float32: SpeechAE codes of the front-end features of the window's own
  audio (``front_end.video_features(window_audio, frames)``; Whisper features depend on the
  position inside its 30-s window, so they are computed per window, not cut from the clip's),
* ``mouth_open`` / ``gap`` (frames,) float32: SynthTalk ground truth (``mouth.open``,
  ``measures.gap``) per frame, NaN when the track has none.

``--latents-from OLD`` builds a cache for another SpeechAE on the same windows without running the
VAE again: latents, references and ground truth are taken from the finished cache ``OLD`` (made
from the same dataset, frames, size and shard size), only the speech codes are computed. The
SpeechAE ablations (``readtalk train speech --mode random|raw``) are cached this way.

``--augment P`` makes the speech of a fraction ``P`` of the clips sound like another voice, room
or microphone (``data.augment.SpeechAugment``, timing kept) before the front end sees it; which
clips, and how, follow from ``--augment-seed`` and the clip id, so a resumed or rebuilt cache
holds the same audio. With ``--latents-from`` it costs only the speech codes: an augmented copy
of a cache for fine-tuning on voices other than espeak-ng's.

Shards ``shard_00000.pt`` ... hold ``shard_size`` windows each (dicts of stacked tensors plus
``ids``, ``start`` and ``split``), written atomically. ``settings.json`` is written first and
makes the folder resumable: re-running with the same settings skips finished shards; other
settings into a non-empty folder are an error. ``meta.json`` is written last: settings, counts
per split, latent shape, code width, the weights used (path and SHA-256) and the per-channel
latent mean/std over the train split, which the DiT trains with (latents are normalised as
``(z - mean) / std``) and which travel with its release.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from readtalk.data import manifest
from readtalk.data.augment import SpeechAugment
from readtalk.data.manifest import clip_audio_path, load_manifest, load_track, resolve
from readtalk.errors import ReadtalkError
from readtalk.media import fit_size, load_audio, probe, read_video, to_tensor
from readtalk.release import atomic_save, release_path
from readtalk.speech.frontend import load_front_end
from readtalk.speech.rolling import SpeechWindow, codes_for_window
from readtalk.speech.speechae import load_speechae
from readtalk.vae.factorised import load_vae

FORMAT = "readtalk.cache/1"
SHARD = "shard_{:05d}.pt"


@dataclass(frozen=True)
class CacheConfig:
    data: str  # dataset folder (manifest.jsonl)
    vae: str  # vae.safetensors (VideoVAE or FactorisedVAE); "" with latents_from (the old cache's)
    speech: str  # speechae.safetensors (or its run folder)
    frames: int = 121  # window length, 8k+1
    size: int = 0  # frame size in pixels (0: the dataset's own)
    front_end: str = "whisper"  # whisper | logmel
    whisper: str = ""  # whisper-tiny weights ("" = the default copy)
    shard_size: int = 64  # windows per shard
    latents_from: str = ""  # a finished cache of the same windows to take the latents from
    augment: float = 0.0  # fraction of clips whose speech is augmented (data.augment)
    augment_seed: int = 0
    # > 0: per-latent speech codes for the rolling schedule (speech.rolling): a short Whisper
    # pass of this many frames per latent, ending speech_lookahead frames after it
    speech_context: int = 0
    speech_lookahead: int = 2

    def validate(self) -> None:
        if self.frames < 9 or (self.frames - 1) % 8:
            raise ReadtalkError(f"--frames must be 8k+1 and >= 9, got {self.frames}")
        if self.size < 0 or self.size % 32:
            raise ReadtalkError(f"--size must be a multiple of 32 (0: native), got {self.size}")
        if self.shard_size < 1:
            raise ReadtalkError(f"--shard-size must be positive, got {self.shard_size}")
        if self.front_end not in ("whisper", "logmel"):
            raise ReadtalkError(f"--front-end must be whisper or logmel, got {self.front_end!r}")
        if not 0.0 <= self.augment <= 1.0:
            raise ReadtalkError(f"--augment is a fraction of the clips, got {self.augment}")
        if not self.vae and not self.latents_from:
            raise ReadtalkError("give --vae (or --latents-from a cache of the same windows)")
        if self.speech_window is not None:
            self.speech_window.validate()

    @property
    def speech_window(self) -> SpeechWindow | None:
        """The rolling schedule's speech window, or None (one code per clip window's audio)."""
        if not self.speech_context:
            return None
        return SpeechWindow(self.speech_context, self.speech_lookahead)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _windows(records: list[dict], frames: int) -> tuple[list[tuple[dict, int]], int]:
    """All (record, start) windows in manifest order, and the number of clips too short."""
    out, short = [], 0
    for rec in records:
        n = int(rec.get("frames") or 0)
        if n == 0:
            n = probe(resolve(rec, "video")).frames
        if n < frames:
            short += 1
            continue
        out.extend((rec, s) for s in range(0, n - frames + 1, frames))
    return out, short


class ClipSpeech:
    """A clip's speech as the cache's front end hears it: the audio file, augmented
    (``SpeechAugment``) for a fraction ``augment`` of the clips, chosen and drawn from
    ``seed`` and the clip id alone."""

    def __init__(self, augment: float = 0.0, seed: int = 0) -> None:
        self.augment, self.seed = augment, seed
        self.transform = SpeechAugment() if augment else None

    def __call__(self, rec: dict) -> np.ndarray:
        audio = load_audio(clip_audio_path(rec))
        if self.transform is None:
            return audio
        rng = np.random.default_rng([self.seed, zlib.crc32(str(rec["id"]).encode())])
        if rng.uniform() >= self.augment:
            return audio
        return self.transform(audio, rng)[0]


class _ClipReader:
    """Decodes a clip (video, reference, audio, track) once for all its windows."""

    def __init__(self, size: int, speech: ClipSpeech | None = None) -> None:
        self.size = size
        self.speech = speech or ClipSpeech()
        self.key: str | None = None

    def get(self, rec: dict) -> dict:
        if rec["id"] != self.key:
            video = fit_size(read_video(resolve(rec, "video")), self.size)
            ref = manifest.load_reference(rec, video.shape[1])[None]
            try:
                track = load_track(rec)
            except ReadtalkError:
                track = {}
            self.clip = {
                "video": video,
                "ref": ref,
                "audio": self.speech(rec),
                "open": (track.get("mouth") or {}).get("open"),
                "gap": (track.get("measures") or {}).get("gap"),
            }
            self.key = rec["id"]
        return self.clip


def _per_frame(values: list | None, start: int, frames: int) -> torch.Tensor:
    out = torch.full((frames,), float("nan"))
    if values:
        v = torch.tensor(values[start : start + frames], dtype=torch.float32)
        out[: len(v)] = v
    return out


@torch.no_grad()
def _encode_window(clip: dict, start: int, frames: int, vae, front_end, speechae, sw=None) -> dict:

    video = to_tensor(clip["video"][start : start + frames])[None].to(vae.device)
    latent = vae.encode(video)[0]  # (C, f, h, w), posterior mean
    ref = vae.encode(to_tensor(clip["ref"])[None].to(vae.device))[0]  # (C, 1, h, w)
    codes = codes_for_window(speechae, front_end, clip["audio"], start, frames, sw)  # (f, A)
    return {
        "latent": latent.half().cpu(),
        "ref": ref.half().cpu(),
        "audio": codes.float().cpu(),
        "mouth_open": _per_frame(clip["open"], start, frames),
        "gap": _per_frame(clip["gap"], start, frames),
    }


def _latent_source(cfg: CacheConfig, manifest_sha: str) -> tuple[Path, dict]:
    """The finished cache ``cfg.latents_from`` and its settings, checked to hold the windows
    ``cfg`` asks for."""
    root = Path(cfg.latents_from)
    if not (root / "meta.json").is_file():
        raise ReadtalkError(f"--latents-from {root}: not a finished cache (no meta.json)")
    meta = json.loads((root / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ReadtalkError(f"--latents-from {root}: unknown cache format {meta.get('format')!r}")
    old = meta["settings"]
    want = {
        "data": str(Path(cfg.data).resolve()),
        "manifest_sha256": manifest_sha,
        "frames": cfg.frames,
        "size": cfg.size,
        "shard_size": cfg.shard_size,
    }
    diff = [f"{k}: {old.get(k)!r} != {v!r}" for k, v in want.items() if old.get(k) != v]
    if diff:
        raise ReadtalkError(f"--latents-from {root} holds other windows ({', '.join(diff)})")
    if cfg.vae and file_sha256(cfg.vae) != old["vae_sha256"]:
        raise ReadtalkError(f"--latents-from {root} was encoded with another VAE than {cfg.vae}")
    return root, old


@torch.no_grad()
def _recode_shard(
    path: Path, shard: list, frames: int, front_end, speechae, bar, speech: ClipSpeech, sw=None
) -> dict:
    """Shard ``path`` of an older cache with its speech codes replaced by ``speechae``'s."""

    if not path.is_file():
        raise ReadtalkError(f"--latents-from: {path} is missing")
    data = torch.load(path, map_location="cpu", weights_only=False)
    if data["ids"] != [r["id"] for r, _ in shard] or data["start"].tolist() != [
        s for _, s in shard
    ]:
        raise ReadtalkError(f"--latents-from: {path} holds other windows than this dataset's")
    codes, audio, key = [], None, None
    for rec, start in shard:
        if rec["id"] != key:
            audio, key = speech(rec), rec["id"]
        codes.append(codes_for_window(speechae, front_end, audio, start, frames, sw).float().cpu())
        bar.update(1)
    data["audio"] = torch.stack(codes)
    return data


def _weight_paths(cfg: CacheConfig) -> tuple[Path, Path]:
    """The VAE and SpeechAE weight files, checked to exist (the VAE's only when given)."""

    vae_path, speech_path = Path(cfg.vae), release_path(cfg.speech, "speechae.safetensors")
    for what, p in (("VAE", vae_path), ("SpeechAE", speech_path)):
        if (cfg.vae or what != "VAE") and not p.is_file():
            raise ReadtalkError(f"{what} weights not found: {p}")
    return vae_path, speech_path


def _checked_speechae(speech_path: Path, front_end: str, device: str):
    """The SpeechAE, checked to be trained on the kind of features ``front_end`` makes."""

    speechae = load_speechae(speech_path).to(device)
    trained_on = speechae.cfg.front_end
    if (front_end == "logmel") != (trained_on == "logmel"):
        raise ReadtalkError(
            f"SpeechAE {speech_path} was trained on {trained_on!r} features, not "
            f"--front-end {front_end}"
        )
    return speechae


def _checked_front_end(cfg: CacheConfig, speechae, speech_path: Path, device: str):
    """The audio front end, checked to be the one the SpeechAE was trained on."""

    front_end = load_front_end(cfg.front_end, cfg.whisper or None, device=device)
    trained_on = speechae.cfg.front_end
    if front_end.name != trained_on:
        raise ReadtalkError(
            f"SpeechAE {speech_path} was trained on {trained_on!r} features, but the front end "
            f"is {front_end.name!r}"
        )
    return front_end


def _settings(
    cfg: CacheConfig,
    vae_path: Path,
    speech_path: Path,
    manifest_sha: str,
    src: Path | None,
    src_settings: dict,
) -> dict:
    """What the cache depends on (``settings.json``): the config, resolved paths and hashes;
    with ``src`` (``--latents-from``) the VAE is the old cache's."""

    settings = {
        "format": FORMAT,
        **asdict(cfg),
        "data": str(Path(cfg.data).resolve()),
        "vae": src_settings["vae"] if src else str(vae_path.resolve()),
        "speech": str(speech_path.resolve()),
        "vae_sha256": src_settings["vae_sha256"] if src else file_sha256(vae_path),
        "speech_sha256": file_sha256(speech_path),
        "manifest_sha256": manifest_sha,
        "latents_from": str(src.resolve()) if src else "",
    }
    if not src:  # the settings of caches made before --latents-from existed
        del settings["latents_from"]
    if not cfg.augment:  # ... and before --augment
        del settings["augment"], settings["augment_seed"]
    if not cfg.speech_context:  # ... and before the rolling schedule's speech codes
        del settings["speech_context"], settings["speech_lookahead"]
    return settings


def _claim_folder(out: Path, settings: dict) -> None:
    """Make ``out`` the folder of a cache with ``settings``: empty or new, or one made with the
    same settings (resumed); anything else is an error. Writes ``settings.json``."""

    settings_path = out / "settings.json"
    if out.exists() and any(out.iterdir()):
        old = json.loads(settings_path.read_text()) if settings_path.is_file() else None
        if old != settings:
            diff = (
                ", ".join(
                    f"{k}: {old.get(k)!r} != {v!r}" for k, v in settings.items() if old.get(k) != v
                )
                if old
                else "no settings.json"
            )
            raise ReadtalkError(
                f"{out} is not empty and holds a cache made with other settings ({diff}); "
                "choose a new --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(settings, settings_path)


def _encode_shard(
    shard: list, reader: _ClipReader, frames: int, vae, front_end, speechae, bar, sw=None
) -> dict:
    """The windows of ``shard`` encoded with the VAE and the SpeechAE, stacked."""

    items = []
    for rec, start in shard:
        clip = reader.get(rec)
        items.append(_encode_window(clip, start, frames, vae, front_end, speechae, sw))
        bar.update(1)
    data = {key: torch.stack([it[key] for it in items]) for key in items[0]}
    data["ids"] = [rec["id"] for rec, _ in shard]
    data["start"] = torch.tensor([s for _, s in shard])
    data["split"] = [rec["split"] for rec, _ in shard]
    return data


@dataclass
class _ShardMaker:
    """Makes a shard's data: encoded with ``vae``, or with ``src`` (``--latents-from``) the
    old cache's shard of the same name with new speech codes."""

    frames: int
    front_end: Any
    speechae: Any
    vae: Any  # None with src
    src: Path | None
    reader: _ClipReader
    speech_window: SpeechWindow | None = None

    def __call__(self, name: str, shard: list, bar) -> dict:
        if self.src:
            return _recode_shard(
                self.src / name,
                shard,
                self.frames,
                self.front_end,
                self.speechae,
                bar,
                self.reader.speech,
                self.speech_window,
            )
        return _encode_shard(
            shard, self.reader, self.frames, self.vae, self.front_end, self.speechae, bar,
            self.speech_window,
        )  # fmt: skip


def _write_shards(
    out: Path, windows: list, shard_size: int, make: _ShardMaker, progress: bool
) -> list[str]:
    """Write every shard not yet in ``out`` (finished ones are skipped: resume); returns all
    shard names in order."""

    shards = [windows[i : i + shard_size] for i in range(0, len(windows), shard_size)]
    bar = tqdm(total=len(windows), desc="cache", unit="window", disable=not progress)
    names = []
    for k, shard in enumerate(shards):
        name = SHARD.format(k)
        names.append(name)
        if (out / name).is_file():
            bar.update(len(shard))
            continue
        atomic_save(make(name, shard, bar), out / name)
    bar.close()
    return names


@dataclass(frozen=True)
class _LatentStats:
    """Latent shape, code width and the per-channel latent mean / std over the train split."""

    shape: list[int]  # (C, f, h, w)
    code_dim: int
    mean: list[float]
    std: list[float]


def _latent_stats(out: Path, names: list[str], cfg: CacheConfig) -> _LatentStats:
    """Statistics over the train split (float64 sums, one shard at a time)."""

    total = sq = None
    count = 0
    shape = code_dim = None
    for name in names:
        d = torch.load(out / name, map_location="cpu", weights_only=False)
        shape = list(d["latent"].shape[1:])
        code_dim = int(d["audio"].shape[-1])
        keep = torch.tensor([s == "train" for s in d["split"]])
        z = d["latent"][keep].double().transpose(0, 1).reshape(shape[0], -1)  # (C, n)
        total = z.sum(1) if total is None else total + z.sum(1)
        sq = z.pow(2).sum(1) if sq is None else sq + z.pow(2).sum(1)
        count += z.shape[1]
    if count == 0:
        raise ReadtalkError(f"{cfg.data} has no clip of {cfg.frames} frames in the train split")
    mean = total / count
    std = (sq / count - mean.pow(2)).clamp_min(1e-12).sqrt().clamp_min(1e-4)
    return _LatentStats(shape, code_dim, mean.tolist(), std.tolist())


def _meta(
    settings: dict,
    windows: list,
    short: int,
    names: list[str],
    stats: _LatentStats,
    front_end: str,
) -> dict:
    """The contents of ``meta.json`` (module docstring)."""

    counts = {s: sum(r["split"] == s for r, _ in windows) for s in ("train", "test")}
    clips = {s: len({r["id"] for r, _ in windows if r["split"] == s}) for s in ("train", "test")}
    return {
        "format": FORMAT,
        "settings": settings,
        "windows": counts,
        "clips": clips,
        "skipped_short": short,
        "shards": names,
        "frames": settings["frames"],
        "latent_shape": stats.shape,
        "code_dim": stats.code_dim,
        "front_end": front_end,
        "vae": {"path": settings["vae"], "sha256": settings["vae_sha256"]},
        "speechae": {"path": settings["speech"], "sha256": settings["speech_sha256"]},
        "latent_mean": stats.mean,
        "latent_std": stats.std,
        "speech_window": _meta_window(settings),
    }


def _meta_window(settings: dict) -> dict | None:
    """The rolling schedule's speech window the codes were made with (None: clip codes)."""
    ctx = int(settings.get("speech_context") or 0)
    return {"context": ctx, "lookahead": int(settings["speech_lookahead"])} if ctx else None


def build_cache(
    cfg: CacheConfig, out: str | os.PathLike, progress: bool = True, device: str = "cpu"
) -> Path:
    """Encode ``cfg.data`` into ``out`` (resumable); returns the path of ``meta.json``."""

    cfg.validate()
    out = Path(out)
    vae_path, speech_path = _weight_paths(cfg)
    manifest_sha = file_sha256(Path(cfg.data) / "manifest.jsonl")
    src, src_settings = _latent_source(cfg, manifest_sha) if cfg.latents_from else (None, {})
    speechae = _checked_speechae(speech_path, cfg.front_end, device)
    records = load_manifest(cfg.data)
    settings = _settings(cfg, vae_path, speech_path, manifest_sha, src, src_settings)
    _claim_folder(out, settings)

    front_end = _checked_front_end(cfg, speechae, speech_path, device)
    vae = None if src else load_vae(vae_path).to(device).eval()
    windows, short = _windows(records, cfg.frames)
    if not windows:
        raise ReadtalkError(f"no clip in {cfg.data} has {cfg.frames} frames; lower --frames")
    make = _ShardMaker(
        cfg.frames,
        front_end,
        speechae,
        vae,
        src,
        _ClipReader(cfg.size, ClipSpeech(cfg.augment, cfg.augment_seed)),
        cfg.speech_window,
    )
    names = _write_shards(out, windows, cfg.shard_size, make, progress)

    stats = _latent_stats(out, names, cfg)
    meta = _meta(settings, windows, short, names, stats, front_end.name)
    _write_json(meta, out / "meta.json")
    return out / "meta.json"


class CachedLatents:
    """A cache folder in memory: ``latent``/``ref`` (N, C, ...) float16, ``audio`` (N, f, A),
    ``mouth_open``/``gap`` (N, frames), ``ids``, ``split``; optionally one split only."""

    def __init__(self, root: str | os.PathLike, split: str | None = None) -> None:
        root = Path(root)
        if not (root / "meta.json").is_file():
            raise ReadtalkError(
                f"{root} is not a finished cache: no meta.json (run readtalk cache)"
            )
        self.root = root
        self.meta = json.loads((root / "meta.json").read_text())
        if self.meta.get("format") != FORMAT:
            raise ReadtalkError(f"{root}: unknown cache format {self.meta.get('format')!r}")
        if split not in (None, "train", "test"):
            raise ReadtalkError(f"split must be 'train' or 'test', got {split!r}")
        parts = [
            torch.load(root / n, map_location="cpu", weights_only=False)
            for n in self.meta["shards"]
        ]
        self.split_name = split
        keep = [
            torch.tensor([split is None or s == split for s in p["split"]], dtype=torch.bool)
            for p in parts
        ]
        self.tensors = {
            k: torch.cat([p[k][m] for p, m in zip(parts, keep, strict=True)])
            for k in ("latent", "ref", "audio", "mouth_open", "gap", "start")
        }
        mask = [bool(k) for m in keep for k in m]
        self.ids = [i for i, k in zip((i for p in parts for i in p["ids"]), mask, strict=True) if k]
        self.split = [
            s for s, k in zip((s for p in parts for s in p["split"]), mask, strict=True) if k
        ]
        self.latent_mean = torch.tensor(self.meta["latent_mean"], dtype=torch.float32)
        self.latent_std = torch.tensor(self.meta["latent_std"], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def __getattr__(self, name: str) -> torch.Tensor:
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        raise AttributeError(name)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """(N, C, ...) latent -> ``(z - mean) / std`` per channel, float32."""
        view = (1, -1) + (1,) * (z.dim() - 2)
        return (z.float() - self.latent_mean.view(view)) / self.latent_std.view(view)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (z.dim() - 2)
        return z.float() * self.latent_std.view(view) + self.latent_mean.view(view)

    def get(self, index: torch.Tensor | list[int], normalize: bool = True) -> dict:
        """Windows ``index``: latent/ref (normalised float32 unless ``normalize=False``),
        audio codes, ground truth and the index itself."""
        idx = torch.as_tensor(index, dtype=torch.long)
        t = self.tensors
        lat, ref = t["latent"][idx], t["ref"][idx]
        return {
            "latent": self.normalize(lat) if normalize else lat.float(),
            "ref": self.normalize(ref) if normalize else ref.float(),
            "audio": t["audio"][idx].float(),
            "mouth_open": t["mouth_open"][idx],
            "gap": t["gap"][idx],
            "index": idx,
        }

    def sample(self, batch: int, rng: np.random.Generator, normalize: bool = True) -> dict:
        """``batch`` windows drawn uniformly with replacement (a pure function of ``rng``)."""
        if len(self) == 0:
            raise ReadtalkError(f"cache {self.root} has no windows in split {self.split_name!r}")
        return self.get(rng.integers(0, len(self), size=batch).tolist(), normalize)

    def batches(self, batch: int, normalize: bool = True) -> Iterator[dict]:
        """Every window once, in order, ``batch`` at a time."""
        for a in range(0, len(self), batch):
            yield self.get(list(range(a, min(a + batch, len(self)))), normalize)
