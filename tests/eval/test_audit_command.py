"""`python -m eval.audit`: every attack on a pipeline folder, audit.json's shape, and its bad inputs."""

from __future__ import annotations

import json

import pytest

from eval import audit

TINY_BUDGET = [
    f"{attack}.{field}={value}"
    for attack, fields in {
        "inversion": {"images": 4, "steps": 2, "batch_size": 2},
        "uda": {"timesteps": 2, "iterations": 1, "check_steps": 1},
        "soft": {"timesteps": 2, "iterations": 1, "check_steps": 1},
        "noise": {"etas": 2},
        "relearn": {"images": 2, "checkpoints": "0,1", "batch_size": 2},
        "probe": {"images": 4, "probe_steps": 5},
    }.items()
    for field, value in {**fields, "eval_seeds": 1, "num_inference_steps": 2}.items()
]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concept", "van gogh", "--attacks", "inversion,jailbreak"], "unknown attack jailbreak"),
        (["--concept", "van gogh", "--budget", "inversion.steps=0"], "must be at least 1"),
        (["--concept", "van gogh", "--budget", "uda.tokens=x"], "is not a valid int"),
        (
            ["--concept", "van gogh", "--attacks", "uda", "--budget", "noise.etas=3"],
            "which --attacks does not run",
        ),
        (["--concept", "rembrandt"], "unknown Canvas concept"),
    ],
)
def test_bad_input_is_one_sentence_exit_2_and_writes_nothing(
    tiny_pipeline_dir, tmp_path, capsys, argv, message
):
    out = tmp_path / "audit"
    assert audit.main(["--pipeline", str(tiny_pipeline_dir), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.endswith(".")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_pipeline_and_an_existing_out_exit_2(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    assert audit.main(["--pipeline", str(tmp_path), "--concept", "van gogh", "--out", str(out)]) == 2
    assert "not a diffusers pipeline" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    assert audit.main(["--pipeline", str(tiny_pipeline_dir), "--concept", "van gogh", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and list(out.iterdir()) == []


def test_an_oracle_that_does_not_exclude_the_concept_is_refused(tiny_pipeline_dir, tmp_path, capsys):
    argv = ["--pipeline", str(tiny_pipeline_dir), "--concept", "van gogh", "--out", str(tmp_path / "a")]
    assert audit.main([*argv, "--oracle", str(tiny_pipeline_dir)]) == 2
    assert "is not an oracle for 'van gogh'" in capsys.readouterr().err


def test_the_audit_writes_every_attack_and_prints_the_same_json(
    tiny_pipeline_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(audit, "CACHE", tmp_path / "cache")
    out = tmp_path / "audit"
    folder = str(tiny_pipeline_dir)
    argv = [
        "--pipeline",
        folder,
        "--base",
        folder,
        "--concept",
        "van gogh",
        "--out",
        str(out),
        "--json",
        "--threads",
        "1",
    ]
    argv += [x for item in TINY_BUDGET for x in ("--budget", item)]
    assert audit.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "audit.json").read_text())
    assert printed == written
    optimising = {"inversion", "uda", "soft", "noise", "relearn"}
    for key in ("asr", "control_asr"):
        assert set(written[key]) == optimising, key
    assert set(written["base_asr"]) == optimising - {"relearn"}  # relearn's reference is the oracle
    assert set(written["seconds"]) == optimising | {"probe"}
    assert set(written["probe_accuracy"]) == {"base", "erased"}
    assert {"asr", "base_asr", "control_asr", "inversion", "probe_accuracy", "steps_to_50"} <= set(
        written["definitions"]
    )
    # the base is the pipeline itself: the same attack, budget and seed give the same numbers on both
    assert {n: written["asr"][n] for n in written["base_asr"]} == written["base_asr"]
    assert (
        (out / "grid.png").is_file()
        and (out / "audit.html").is_file()
        and (out / "embeddings.safetensors").is_file()
    )
    assert len(list((tmp_path / "cache").iterdir())) == len(written["base_asr"])  # one base run per attack
    page = (out / "audit.html").read_text()
    assert "Where the erasure changed the UNet" in page and "steps to 50% ASR" in page
