"""readtalk export: a model folder with half-precision weights that loads as float32 and
generates (nearly) the same video as the float32 originals."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from readtalk.cli import main
from readtalk.errors import ReadtalkError
from readtalk.export import export_model
from readtalk.pipeline import Pipeline
from test_pipeline import _face, _speech, _write_models


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return _write_models(tmp_path_factory.mktemp("export") / "src")


def _dtypes(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}, f.metadata()  # noqa: SIM118


def test_export_half_loads_and_matches(src, tmp_path, capsys):
    out = tmp_path / "m"
    assert main([
        "export", "--vae", str(src / "vae.safetensors"), "--speech", str(src),
        "--dit", str(src / "dit.safetensors"), "--out", str(out), "--set", "steps=2",
        "--set", "guidance=joint",
    ]) == 0  # fmt: skip
    assert "MB" in capsys.readouterr().out
    for name in ("vae", "speechae", "dit"):
        dts, meta = _dtypes(out / f"{name}.safetensors")
        half = [k for k, d in dts.items() if d == "F16"]
        assert half and meta["stored_dtype"] == "float16"
        # statistics stay float32; the original metadata is carried over
        assert all(dts[k] == "F32" for k in dts if k.endswith(("_mean", "_std")))
        assert _dtypes(src / f"{name}.safetensors")[1].items() <= meta.items()
        assert (out / f"{name}.safetensors").stat().st_size < (
            src / f"{name}.safetensors"
        ).stat().st_size * 0.6
    assert json.loads((out / "pipeline.json").read_text()) == {"steps": 2, "guidance": "joint"}

    a, b = Pipeline.from_pretrained(src), Pipeline.from_pretrained(out)
    for m in (b.vae, b.speechae, b.dit):
        assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in m.parameters())
    x = a(_face(), _speech(8000), seed=1, progress=False).frames.astype(np.float32)
    y = b(_face(), _speech(8000), seed=1, guidance="split", progress=False).frames
    y = y.astype(np.float32)
    assert x.shape == y.shape
    assert np.abs(x - y).mean() < 2.0  # uint8 levels: fp16 rounding of the weights only


def test_export_errors(src, tmp_path):
    with pytest.raises(ReadtalkError, match="not found"):
        export_model(tmp_path / "m", tmp_path / "nope.safetensors", src, src)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(ReadtalkError, match="not a safetensors"):
        export_model(tmp_path / "m", bad, src, src)
    with pytest.raises(ReadtalkError, match="dtype"):
        export_model(tmp_path / "m", src / "vae.safetensors", src, src, dtype="int8")
    # the speech weights in the place of the DiT's: the folder does not load
    with pytest.raises(ReadtalkError, match=r"not 'readtalk\.dit'"):
        export_model(tmp_path / "m2", src / "vae.safetensors", src, src / "speechae.safetensors")
    with pytest.raises(ReadtalkError, match=r"unknown pipeline\.json key"):
        export_model(tmp_path / "m", src / "vae.safetensors", src, src, defaults={"step": 4})
    assert main(["export", "--vae", "x", "--speech", "y", "--dit", "z", "--out",
                 str(tmp_path / "o"), "--set", "oops"]) == 2  # fmt: skip
