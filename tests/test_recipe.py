"""scripts/train_demo.sh: the demo model's whole training recipe, end to end at debug sizes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from readtalk.pipeline import Pipeline

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_demo.sh"
STAGES = [
    "data",
    "speechae",
    "frame-vae",
    "packer",
    "packer-chains",
    "frame-decoder-pre",
    "frame-decoder",
    "refiner",
    "refiner-2",
    "cache",
    "dit",
    "export",
]
TINY = {  # every stage at debug size, two steps
    "CLIPS": "6", "SIZE": "64", "FRAMES": "65",
    "SYNTH_ARGS": "--identities 3 --test-fraction 0.34 --workers 1",
    "SPEECH_SIZE": "debug", "SPEECH_STEPS": "2",
    "VAE_PRESET": "debug", "VAE_STEPS": "2", "VAE_EVAL_CLIPS": "1", "VAE_CROP": "32",
    "VAE_FRAME_BANK": "2", "VAE_BATCH": "4", "PHASE3_STEPS": "2",
    "DECODER_PRE_STEPS": "2",
    "PACKER_STEPS": "2", "CHAIN_STEPS": "2", "DECODER_STEPS": "2", "PACKER_WINDOW": "33",
    "PACKER_EVAL_CLIPS": "1", "REFINER_STEPS": "2", "REFINER_CLIPS": "2",
    "REFINER_ROUNDS": "2",
    "WINDOW": "17", "DIT_SIZE": "debug", "DIT_STEPS": "2", "DIT_EVAL_EVERY": "2",
    "DIT_SAMPLES": "1", "QUIET": "1", "THREADS": "1",
}  # fmt: skip


def run(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **TINY,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DATA": str(tmp_path / "data"),
        "RUNS": str(tmp_path / "runs"),
        **extra,
    }
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_recipe_trains_a_model_that_generates_and_resumes(tmp_path):
    r = run(tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    times = (tmp_path / "runs" / "times.tsv").read_text().split("\n")
    assert [line.split("\t")[0] for line in times if line] == STAGES
    runs = tmp_path / "runs"  # the frame VAE trained on crops from a frame bank, no video phases
    frame_vae = (runs / "frame-vae" / "config.yaml").read_text()
    assert "crop: 32\n" in frame_vae and "frame_bank: 2\n" in frame_vae
    assert "crop_mouth: 0.5\n" in frame_vae
    assert str(runs / "frame-vae" / "vae.safetensors") in (runs / "packer/config.yaml").read_text()
    model = tmp_path / "runs" / "model"
    pipe = Pipeline.from_pretrained(model)
    assert pipe.settings().steps == 4  # the shipped model's sampling default
    assert pipe.models.vae.refiner is not None  # the model folder's VAE has the refiner
    round2 = (runs / "refiner-2" / "log.txt").read_text()
    assert "continuing the VAE's own refiner" in round2
    assert "reconstructions reused from" in round2  # round 1's, not made again
    # a second run skips every finished stage
    again = run(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count(": done (") == len(STAGES)

    # an interrupted stage resumes: drop the DiT's release, keep its checkpoints
    (tmp_path / "runs" / "dit" / "dit.safetensors").unlink()
    (model / "pipeline.json").unlink()
    resumed = run(tmp_path, DIT_STEPS="3")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "== dit\n" in resumed.stdout and (model / "pipeline.json").is_file()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_failing_stage_stops_the_recipe(tmp_path):
    r = run(tmp_path, SPEECH_MODE="pretrain", SPEECH_SIZE="no-such-size")
    assert r.returncode != 0
    assert "error: unknown SpeechAE size 'no-such-size'" in r.stderr
    assert not (tmp_path / "runs" / "frame-vae").exists()  # nothing after the failed stage ran


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_shipped_recipe_adds_the_video_phases(tmp_path):
    r = run(tmp_path, RECIPE="shipped", PHASE2_STEPS="2", VAE_CROP="", VAE_FRAME_BANK="")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    times = (tmp_path / "runs" / "times.tsv").read_text().split("\n")
    assert [line.split("\t")[0] for line in times if line] == [
        *STAGES[:3],
        "video-vae-2",
        "video-vae-3",
        *STAGES[3:],
    ]
    # phase 1 on whole frames; phase 3 went on from phase 2, the packer was built on the video
    # VAE's single-frame path, the decoder on the first decoder stage
    runs = tmp_path / "runs"
    frame_vae = (runs / "frame-vae" / "config.yaml").read_text()
    assert "crop: 0\n" in frame_vae and "frame_bank: 0\n" in frame_vae
    assert (
        str(runs / "video-vae-2" / "vae.safetensors")
        in (runs / "video-vae-3" / "config.yaml").read_text()
    )
    assert (
        str(runs / "video-vae-3" / "vae.safetensors")
        in (runs / "packer" / "config.yaml").read_text()
    )
    assert str(runs / "fdec-pre" / "vae.safetensors") in (runs / "fdec" / "config.yaml").read_text()
    Pipeline.from_pretrained(runs / "model")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_an_unknown_recipe_is_refused(tmp_path):
    r = run(tmp_path, RECIPE="slow")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: RECIPE must be fast or shipped, got 'slow'"
    assert not (tmp_path / "runs").exists()  # refused before anything ran
    r = run(tmp_path, VIDEO_PHASES="yes")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: VIDEO_PHASES must be 0 or 1, got 'yes'"
    assert not (tmp_path / "runs").exists()
    r = run(tmp_path, REFINER_ROUNDS="0")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: REFINER_ROUNDS must be a whole number >= 1, got '0'"
    assert not (tmp_path / "runs").exists()
