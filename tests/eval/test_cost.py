"""eval.cost on shrunken random-weight SD 1.5 and SDXL pipelines: the rows, their arithmetic and bad input."""

from __future__ import annotations

import json

import pytest

from eval import cost


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_a_smoke_run_writes_the_table(tmp_path, model):
    out = tmp_path / "cost"
    argv = ["--model", model, "--scale", "0.05", "--probe", "1", "--probe-images", "1", "--out", str(out)]
    methods = "uce,doco,advunlearn" if model == "sdxl" else "uce,doco"  # AdvUnlearn: both encoders, once
    assert cost.main([*argv, "--methods", methods, "--precisions", "fp32"]) == 0
    report = json.loads((out / "cost.json").read_text())
    assert report["model"] == model and report["scale"] == 0.05 and "van gogh" in report["settings"]
    rows = {r["method"]: r for r in report["rows"]}
    doco = rows["doco"]
    assert doco["steps"] == 2000 and doco["anchor_images"] == 1000  # DoCo's official SD settings
    # At this size a step takes milliseconds, so the slope may come out as 0 (it is clamped at 0, never negative).
    assert doco["seconds_per_step"] >= 0 and doco["seconds_per_anchor_image"] > 0
    want = doco["steps"] * doco["seconds_per_step"] + doco["anchor_images"] * doco["seconds_per_anchor_image"]
    assert doco["total_seconds"] == pytest.approx(want)
    assert rows["uce"]["steps"] == 0 and rows["uce"]["total_seconds"] > 0
    if (
        model == "sdxl"
    ):  # AdvUnlearn trains both text encoders: its official 1000 iterations, no anchor images
        assert rows["advunlearn"]["steps"] == 1000 and rows["advunlearn"]["anchor_images"] == 0
    assert "| doco | fp32 | 2000 |" in (out / "cost.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cost"]  # written atomically, nothing else left


@pytest.mark.parametrize(
    "argv",
    [
        ["--methods", "nope"],
        ["--methods", "stereo"],
        ["--precisions", "fp16"],
        ["--scale", "2"],
        ["--probe", "0"],
    ],
)
def test_bad_input_exits_2(tmp_path, capsys, argv):
    assert cost.main([*argv, "--out", str(tmp_path / "cost")]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "cost").exists()
