"""The portrait check: a portrait unlike the model's training faces (its VAE cannot redraw it)
gives one warning, in the Python API (PortraitWarning), the CLI (one line) and the server."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from readtalk import Pipeline
from readtalk.data.synthtalk import reference_portrait
from readtalk.errors import PortraitWarning
from readtalk.media import save_wav, write_image
from test_pipeline import _face, _speech, _write_models


@pytest.fixture(scope="module")
def demo():
    return Pipeline.from_pretrained()


def _astronaut():
    data = pytest.importorskip("skimage.data")
    return data.astronaut()


def test_demo_model_knows_synthtalk_faces_not_photos(demo):
    held_out = [reference_portrait(1000 + s, 0, demo.size) for s in range(3)]
    for face in held_out:
        assert demo.portrait_fit(face).ok
    photo = demo.prepare_image(_astronaut())
    fit = demo.portrait_fit(photo)
    assert not fit.ok and fit.psnr < fit.threshold - 2
    with pytest.warns(PortraitWarning, match="unlike the faces the model was trained on"):
        demo.stream(photo)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PortraitWarning)
        demo.stream(held_out[0])  # no warning
        demo.stream(photo, check_portrait=False)


def test_model_folder_sets_the_threshold(tmp_path):
    root = _write_models(tmp_path / "m")
    (root / "pipeline.json").write_text(json.dumps({"portrait": {"psnr_min": -100}}))
    assert Pipeline.from_pretrained(root).portrait_fit(_face()[:64, :64]).ok
    (root / "pipeline.json").write_text(json.dumps({"portrait": {"psnr_min": 200}}))
    fit = Pipeline.from_pretrained(root).portrait_fit(_face()[:64, :64])
    assert not fit.ok and fit.threshold == 200


def test_cli_warns_in_one_line(tmp_path):
    root = _write_models(tmp_path / "m")
    (root / "pipeline.json").write_text(json.dumps({"portrait": {"psnr_min": 200}}))
    write_image(tmp_path / "face.png", _face())
    save_wav(tmp_path / "s.wav", _speech(3000))
    r = subprocess.run(
        [sys.executable, "-m", "readtalk.cli", "generate", "--model", str(root), "--image",
         str(tmp_path / "face.png"), "--audio", str(tmp_path / "s.wav"), "--out",
         str(tmp_path / "o.mp4"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if "portrait" in x]
    assert len(lines) == 1 and lines[0].startswith("warning: this portrait is unlike")
    assert "PortraitWarning" not in r.stderr and ".py:" not in r.stderr
    assert np.isfinite(Pipeline.from_pretrained(root).portrait_fit(_face()[:64, :64]).psnr)
