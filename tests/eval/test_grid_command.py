"""`python -m eval.grid`: any models side by side on the same seeds, and its bad inputs."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from eval import grid


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "either --concept or --prompts"),
        (["--concept", "van gogh", "--prompts", "p.txt"], "either --concept or --prompts"),
        (["--concept", "rembrandt"], "unknown Canvas concept"),
        (["--concept", "van gogh", "--seeds", "0,x"], "comma-separated integers"),
        (["--prompts", "missing.txt"], "does not exist"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(tiny_pipeline_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "grid.png"
    assert grid.main(["--model", str(tiny_pipeline_dir), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.endswith(".")
    assert not out.exists()


def test_prompts_times_seeds_rows_and_one_column_per_model(tiny_pipeline_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_dir, copy)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat in monet style\n\na painting of a fish\n")
    sizes = {}
    for seeds in ("0", "0,1"):
        out = tmp_path / f"grid-{len(seeds)}.png"
        argv = ["--model", str(tiny_pipeline_dir), "--model", str(copy), "--prompts", str(prompts)]
        assert grid.main([*argv, "--seeds", seeds, "--out", str(out)]) == 0
        image = Image.open(out)
        assert image.format == "PNG" and image.mode == "RGB"
        sizes[seeds] = image.size
    assert sizes["0,1"][1] > sizes["0"][1]  # twice the rows (the labels then name their seed)
