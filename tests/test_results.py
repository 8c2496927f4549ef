"""readtalk bench results: generate, score and tabulate on a dataset's test split."""

import json
import math

import pytest

from readtalk.cli import main
from readtalk.errors import ReadtalkError
from readtalk.eval.results import ResultsConfig, results_markdown, run_results
from test_pipeline import _write_models


def test_results_tables_with_a_debug_model(synth_dataset, tmp_path):
    model = _write_models(tmp_path / "m")
    other = _write_models(tmp_path / "m2")
    cfg = ResultsConfig(clips=1, grid_clips=1, steps=(1, 2), ablations={"copy": str(other)})
    res = run_results(model, synth_dataset, tmp_path / "r", cfg, long=synth_dataset, progress=False)
    assert res["main"]["seconds_per_clip"] > 0 and "identity" in res["main"]
    assert [(r["guidance"], r["steps"]) for r in res["grid"]] == [
        ("split", 1), ("split", 2), ("joint", 1), ("joint", 2)
    ]  # fmt: skip
    assert [r["mode"] for r in res["ans"]] == [
        "ans", "ans_no_context", "ans_latents", "plain", "plain_no_context"
    ]  # fmt: skip
    # seams are found at the model's own clip boundaries (17-frame clips here, not 121)
    assert res["clip_frames"] == 17
    assert all(math.isfinite(r["seam_ratio"]) for r in res["ans"])
    assert res["ablations"][0]["name"] == "copy"
    saved = json.loads((tmp_path / "r/results.json").read_text())
    assert saved["main"] == res["main"]
    md = (tmp_path / "r/results.md").read_text()
    assert "## Main table" in md and "## ANS vs plain chunking" in md and "| joint | 2 |" in md
    assert (tmp_path / "r/steps_guidance.png").is_file()
    assert not (tmp_path / "r/split_1").exists()  # grid videos are removed once scored

    # resumable: a second run keeps every row whose inputs are unchanged and computes only the
    # new ablation; changing a model file invalidates that model's rows only
    third = _write_models(tmp_path / "m3")
    cfg2 = ResultsConfig(
        clips=1, grid_clips=1, steps=(1, 2), ablations={"copy": str(other), "new": str(third)}
    )
    again = run_results(model, synth_dataset, tmp_path / "r", cfg2, long=synth_dataset,
                        progress=False)  # fmt: skip
    assert again["reused_rows"] == 1 + 4 + 5 + 1
    assert again["main"] == res["main"] and [a["name"] for a in again["ablations"]] == [
        "copy",
        "new",
    ]
    (other / "pipeline.json").write_text('{"steps": 2}')
    cfg3 = ResultsConfig(clips=1, grid_clips=1, steps=(1, 2), ablations={"copy": str(other)})
    third_run = run_results(model, synth_dataset, tmp_path / "r", cfg3, progress=False)
    assert third_run["reused_rows"] == 1 + 4  # the changed ablation is scored again

    # --tables: only the ANS table, which needs no test split
    only = ResultsConfig(clips=1, grid_clips=1, steps=(1, 2), tables=("ans",))
    ans_only = run_results(model, None, tmp_path / "r", only, long=synth_dataset, progress=False)
    assert "main" not in ans_only and ans_only["grid"] == [] and len(ans_only["ans"]) == 5
    md = (tmp_path / "r/results.md").read_text()
    assert "## ANS vs plain chunking" in md and "## Main table" not in md


def test_results_markdown_marks_missing_values():
    md = results_markdown(
        {"model": "m", "data": "d", "clips": 1, "main": {"mouth_corr": float("nan")}, "grid": []}
    )
    assert "—" in md


def test_results_cli_errors(synth_dataset, tmp_path, capsys):
    base = ["bench", "results", "--model", str(tmp_path), "--data", str(synth_dataset)]
    assert main([*base, "--out", str(tmp_path / "o"), "--ablation", "bad"]) == 2
    assert "name=DIR" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o"), "--steps", "a,b"]) == 2
    with pytest.raises(ReadtalkError, match="lacks"):
        run_results(tmp_path, synth_dataset, tmp_path / "o")
    assert main([*base, "--out", str(tmp_path / "o"), "--tables", "main,seams"]) == 2
    assert "tables must be some of" in capsys.readouterr().err
    no_data = ["bench", "results", "--model", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(no_data) == 2
    assert "need --data" in capsys.readouterr().err
    assert main([*no_data, "--tables", "ans"]) == 2
    assert "needs --long" in capsys.readouterr().err
