"""`python -m erasure.run` on diffusion models: bad input is one sentence and exit 2, a run is reproducible."""

from __future__ import annotations

import json

import pytest

from erasure import run as cli


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concept", ""], "the concept is empty"),
        (["--concept", "rembrandt"], "unknown Canvas concept"),
        (["--concept", "van gogh", "--anchor", "cubism"], "unknown Canvas anchor"),
        (
            ["--concept", "van gogh", "--method", "uce", "--steps", "10"],
            "closed-form edit and takes no --steps",
        ),
        (["--concept", "van gogh", "--steps", "0"], "--steps must be a positive"),
        (["--concept", "van gogh", "--model", "./no-such-model"], "no-such-model"),
        (["--concept", "van gogh", "--audit", "--attacks", "jailbreak"], "unknown attack jailbreak"),
        (["--concept", "van gogh", "--audit", "--budget", "uda.iterations=0"], "must be at least 1"),
        (["--concept", "van gogh", "--audit", "--no-eval"], "--audit needs the Canvas world's judges"),
        (["--concept", "van gogh", "--model", "canvas-gan", "--audit"], "canvas-gan has no prompt"),
        (["--concept", "van gogh", "--method", "uce", "--robust"], "--robust is robust DoCo"),
        (["--concept", "van gogh", "--config", "lr=0.1"], "DoCoConfig has no field 'lr'"),
        (["--concept", "van gogh", "--config", "robust=maybe"], "'maybe' is not a valid bool for robust"),
        (["--concept", "van gogh", "--config", "robust_attacks=pgd"], "robust_attacks must be among"),
        (["--concept", "van gogh", "--config", "steps"], "must read field=value"),
        (["--concept", "van gogh", "--threads", "0"], "--threads must be at least 1"),
        (["--concept", "van gogh", "--method", "stereo", "--config", "steps=10"], "REO's iterations"),
        (["--concept", "cat", "--concept", "kitten"], "'cat' is named twice"),
        (["--concept", "van gogh", "--concept", "cat"], "use --mode sequential"),
        (["--concept", "van gogh", "--model", "canvas-gan", "--mode", "sequential"], "unlearns its concepts"),
        (["--concept", "van gogh", "--generator", "assets/canvas-gan"], "use it with --model canvas-gan"),
    ],
)
def test_bad_input_exits_2_with_one_sentence_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert cli.main(["--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.endswith(".")
    assert list(tmp_path.iterdir()) == []


def test_the_same_run_twice_records_the_same_delta_hash(tiny_pipeline_dir, tmp_path, capsys):
    """erasure.json's delta_sha256 hashes the tensors, so a reproduction can be confirmed by it. The tiny folder
    has the world's tokenizer, so it is a Canvas model given by its path and the first run is evaluated."""
    hashes = []
    for name, evaluation in (("first", ["--eval-seeds", "1"]), ("second", ["--no-eval"])):
        out = tmp_path / name
        argv = [
            "--concept",
            "van gogh",
            "--method",
            "uce",
            "--model",
            str(tiny_pipeline_dir),
            "--out",
            str(out),
        ]
        assert cli.main(argv + evaluation) == 0
        meta = json.loads((out / "erasure.json").read_text())
        hashes.append(meta["delta_sha256"])
        assert (out / "pipeline" / "model_index.json").exists() and (out / "metrics.json").exists()
    assert hashes[0] == hashes[1]
    metrics = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert {"ua", "ira", "cra", "fd"} <= set(metrics) and (tmp_path / "first" / "report.html").exists()
    card = (tmp_path / "first" / "README.md").read_text()  # the model card: figures, definitions, loading
    assert "- `ua` = " in card and "unlearning accuracy" in card.lower() and "load_lora_weights" in card
    assert "erased pipeline written to" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "second"]  # no temporary folder left


def test_config_values_are_typed_like_their_defaults():
    from erasure.methods.doco import DoCoConfig
    from erasure.options import parse_option

    assert parse_option(DoCoConfig, "robust", "True") is True
    assert parse_option(DoCoConfig, "learning_rate", "5e-6") == 5e-6
    assert parse_option(DoCoConfig, "steps", "120") == 120
    assert parse_option(DoCoConfig, "robust_attacks", "soft") == ("soft",)
    assert parse_option(DoCoConfig, "d_betas", "0.5, 0.9") == (0.5, 0.9)
    with pytest.raises(ValueError, match="not a valid int for steps"):
        parse_option(DoCoConfig, "steps", "1.5")


def test_an_erasure_on_top_of_another_records_the_chain(tiny_pipeline_dir, tmp_path, capsys):
    """--model an earlier run: the new delta and erasure.json hold the whole chain from the original base."""
    import torch

    from pipelines.delta import load_erased
    from tests.helpers import all_tensors, fresh

    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--method", "uce", "--no-eval"]
    assert (
        cli.main(["--concept", "van gogh", "--model", str(tiny_pipeline_dir), "--out", str(first), *common])
        == 0
    )
    argv = ["--concept", "monet", "--model", str(first / "pipeline"), "--out", str(second), *common]
    assert cli.main(argv) == 0
    meta = json.loads((second / "erasure.json").read_text())
    assert meta["base"] == str(tiny_pipeline_dir) and meta["concepts"] == ["van gogh", "monet"]
    assert [e["concepts"] for e in meta["erasures"]] == [["van gogh"], ["monet"]]
    want = all_tensors(fresh(second / "pipeline"))
    got = all_tensors(load_erased(None, second))  # the base recorded there + the merged delta
    assert all(torch.equal(want[n], got[n]) for n in want)
    # Its LoRA, loaded by plain diffusers on the base, gives the chain's final UNet outputs.
    from pipelines.lora import load_lora

    assert meta["lora"]["written"] and meta["lora"]["max_relative_error"] <= 0.01
    with_lora, erased = load_lora(fresh(tiny_pipeline_dir), second / "lora"), fresh(second / "pipeline")
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        want_out, got_out, base_out = (
            p.unet(x, 500, encoder_hidden_states=text).sample
            for p in (erased, with_lora, fresh(tiny_pipeline_dir))
        )
    assert (got_out - want_out).abs().max() < 0.01 * (want_out - base_out).abs().max()

    # Erasing a concept again, or building on a run whose erasure.json is corrupt: one sentence, exit 2.
    capsys.readouterr()
    again = ["--concept", "van gogh", "--model", str(second), "--out", str(tmp_path / "again"), *common]
    assert cli.main(again) == 2 and "was already erased" in capsys.readouterr().err
    (first / "erasure.json").write_text("{broken")
    argv = ["--concept", "monet", "--model", str(first), "--out", str(tmp_path / "third"), *common]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be built on" in err and "is corrupt" in err and err.count("\n") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "second"]


def test_several_concepts_in_one_run_or_one_after_another(tiny_pipeline_dir, tmp_path):
    runs = {}
    for mode in ("together", "sequential"):
        out = tmp_path / mode
        argv = ["--concept", "van gogh", "--concept", "monet", "--mode", mode, "--method", "uce"]
        assert cli.main([*argv, "--model", str(tiny_pipeline_dir), "--out", str(out), "--no-eval"]) == 0
        runs[mode] = json.loads((out / "erasure.json").read_text())["erasures"]
    assert [e["concepts"] for e in runs["together"]] == [["van gogh", "monet"]]
    assert [e["concepts"] for e in runs["sequential"]] == [["van gogh"], ["monet"]]


def test_a_run_that_diverges_says_so_in_one_sentence_and_writes_nothing(tiny_pipeline_dir, tmp_path, capsys):
    """The divergence guard (here set to trip at any rise of a loss above 1) ends the command with exit code 1, one
    sentence saying what to do, and no output folder."""
    out = tmp_path / "run"
    argv = ["--concept", "van gogh", "--model", str(tiny_pipeline_dir), "--out", str(out), "--no-eval"]
    tiny = [
        "num_anchor_images=4",
        "anchor_steps=2",
        "anchor_batch=4",
        "batch_size=2",
        "divergence_factor=1.0001",
    ]
    argv += ["--steps", "30", *(arg for field in tiny for arg in ("--config", field))]
    assert cli.main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged at step" in errors[0] and "--resume" in errors[0]
    assert not out.exists()
