"""`python -m erasure.run --model canvas-gan`: bad input is one sentence, exit code 2, and nothing written."""

from __future__ import annotations

import pytest

from erasure import run as cli


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concept", ""], "the concept is empty"),
        (["--concept", "   "], "the concept is empty"),
        (["--concept", "rembrandt"], "unknown Canvas concept"),
        (["--concept", "van gogh", "--concept", "dali"], "unknown Canvas concept"),
        (["--concept", "van gogh", "--anchor", "monet"], "takes no --anchor"),
        (["--concept", "van gogh", "--steps", "0"], "--steps must be a positive"),
        (["--concept", "van gogh", "--generator", "no-such-gan"], "canvas-gan not found in no-such-gan"),
        (["--concept", "van gogh", "--config", "train=everything"], "train must be one of"),
        (["--concept", "van gogh", "--config", "no_such_field=1"], "no_such_field"),
        (["--concept", "van gogh", "--config", "train"], "must read field=value"),
    ],
)
def test_cli_bad_inputs_exit_2_without_output(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert cli.main(["--model", "canvas-gan", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.endswith(".")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_existing_output_and_missing_generator_exit_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli.main(["--model", "canvas-gan", "--concept", "van gogh", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and (out / "keep.txt").read_text() == "x"

    import pipelines.stylegan

    monkeypatch.setattr(pipelines.stylegan, "CANVAS_GAN", tmp_path / "no-canvas-gan")
    fresh = tmp_path / "fresh"
    assert cli.main(["--model", "canvas-gan", "--concept", "van gogh", "--out", str(fresh)]) == 2
    err = capsys.readouterr().err.strip()
    assert "canvas-gan not found" in err and err.count("\n") == 0
    assert not fresh.exists()


def test_cli_unlearns_the_generator_it_is_given(tmp_path, capsys):
    """--generator: the run starts from that folder's generator (a small one here) and records it as the base."""
    import json

    from pipelines.stylegan import load_generator, save_generator
    from tests.helpers import small_generator

    save_generator(small_generator(), tmp_path / "small")
    out = tmp_path / "run"
    argv = ["--model", "canvas-gan", "--generator", str(tmp_path / "small"), "--concept", "van gogh"]
    assert cli.main([*argv, "--steps", "2", "--no-eval", "--out", str(out)]) == 0
    assert json.loads((out / "unlearning.json").read_text())["base"] == str(tmp_path / "small")
    assert load_generator(out / "generator").config == load_generator(tmp_path / "small").config


def test_cli_config_sets_text_unlearn_fields(tmp_path):
    """--config reaches TextUnlearnConfig: with train=mapping only the mapping network's weights move."""
    import torch

    from pipelines.stylegan import load_generator, save_generator
    from tests.helpers import small_generator

    save_generator(small_generator(), tmp_path / "small")
    out = tmp_path / "run"
    argv = ["--model", "canvas-gan", "--generator", str(tmp_path / "small"), "--concept", "van gogh"]
    argv += ["--config", "train=mapping", "--config", "lr=0.5", "--steps", "2", "--no-eval"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    before = dict(load_generator(tmp_path / "small").named_parameters())
    after = dict(load_generator(out / "generator").named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(n.startswith("mapping.") for n in moved)
