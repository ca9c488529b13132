"""`python -m eval.evaluate`: any Canvas-world pipeline folder scored against a base, and its bad inputs."""

from __future__ import annotations

import json

import pytest

from eval import evaluate


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concept", "rembrandt"], "unknown Canvas concept"),
        (["--concept", "van gogh", "--anchor", "cat"], "must be a style too"),
        (["--concept", "van gogh", "--seeds", "0"], "--seeds must be at least 1"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(tiny_pipeline_dir, capsys, argv, message):
    assert evaluate.main(["--pipeline", str(tiny_pipeline_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.endswith(".")


def test_a_folder_that_is_not_a_pipeline_exits_2(tmp_path, capsys):
    assert evaluate.main(["--pipeline", str(tmp_path), "--concept", "van gogh"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0


def test_a_model_scored_against_itself_matches_its_base_numbers(tiny_pipeline_dir, capsys):
    folder = str(tiny_pipeline_dir)
    argv = ["--pipeline", folder, "--base", folder, "--concept", "kitty", "--seeds", "1", "--json"]
    assert evaluate.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["concept"] == "cat"  # the alias names its concept
    for key in ("ua", "ira", "cra"):
        assert result[key] == result[f"base_{key}"], key
    assert result["fd"] == result["base_fd"] and result["clip_score"] == result["base_clip_score"]
    assert set(result["definitions"]) >= {"ua", "ira", "cra", "fd", "answer_set"}
    assert (
        "130 prompts" in result["definitions"]["answer_set"]
        and "seeds [0]" in result["definitions"]["answer_set"]
    )


def test_every_erased_concept_is_left_out_of_what_is_retained(tiny_pipeline, random_judges, monkeypatch):
    """Two styles erased: IRA is the accuracy of the one artist style left (picasso), FD skips both styles' images."""
    import eval.evaluate
    from eval.answer_set import world_items
    from eval.evaluate import EvalSettings, evaluate_erasure

    small = world_items(styles=["plain", "van gogh", "monet", "picasso"], objects=["cat", "fish"])
    monkeypatch.setattr(eval.evaluate, "world_items", lambda: small)
    monkeypatch.setattr(eval.evaluate, "REAL_SEEDS", 1)
    settings = EvalSettings(seeds=(0, 1), num_inference_steps=2, batch_size=16)
    numbers, definitions = evaluate_erasure(
        tiny_pipeline, tiny_pipeline, ["van gogh", "monet"], "style", random_judges, settings=settings
    )
    each = numbers["per_concept"]
    assert list(each) == ["van gogh", "monet"] and "per_concept" in definitions
    assert numbers["ua"] == pytest.approx((each["van gogh"]["ua"] + each["monet"]["ua"]) / 2)
    picasso = numbers["per_class"]["style"]["picasso"]["erased"]
    assert each["van gogh"]["ira"] == each["monet"]["ira"] == numbers["ira"] == pytest.approx(picasso)
    objects = numbers["per_class"]["object"]
    assert numbers["cra"] == pytest.approx((objects["cat"]["erased"] + objects["fish"]["erased"]) / 2)
    assert numbers["fd"] == numbers["base_fd"]  # the same model: the same images after the same exclusions
    one, _ = evaluate_erasure(
        tiny_pipeline, tiny_pipeline, "van gogh", "style", random_judges, settings=settings
    )
    assert "per_concept" not in one and one["erased_to"] == each["van gogh"]["erased_to"]
