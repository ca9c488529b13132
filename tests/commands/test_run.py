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
    ],
)
def test_bad_input_exits_2_with_one_sentence_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert cli.main(["--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.endswith(".")
    assert list(tmp_path.iterdir()) == []


def test_the_same_run_twice_records_the_same_delta_hash(tiny_pipeline_dir, tmp_path, capsys):
    """erasure.json's delta_sha256 hashes the tensors, so a reproduction can be confirmed by it."""
    hashes = []
    for name in ("first", "second"):
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
        assert cli.main(argv) == 0
        meta = json.loads((out / "erasure.json").read_text())
        hashes.append(meta["delta_sha256"])
        assert (out / "pipeline" / "model_index.json").exists() and (out / "metrics.json").exists()
    assert hashes[0] == hashes[1]
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
