"""AdvUnlearn on the tiny canvas-shaped pipeline: what trains, that it erases, its attack, budget and resume."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from erasure.engine import erase
from erasure.methods.advunlearn import AdvUnlearnConfig, text_encoder_parameters
from erasure.methods.base import forward_equivalents
from erasure.methods.doco import DoCoConfig
from erasure.methods.esd import esd_target
from pipelines.conditioning import encode_prompts
from pipelines.delta import load_erased, save_delta
from tests.helpers import all_tensors, fresh, interrupted_after_checkpoint

TINY = {
    "steps": 4,
    "warmup": 2,
    "batch_size": 2,
    "ddim_steps": 3,
    "learning_rate": 1e-3,
    "attack_steps": 3,
    "retain_batch": 2,
    "use_request_prompts": True,
    "checkpoint_every": 2,
}


def test_official_defaults_and_bad_values():
    paper = AdvUnlearnConfig()
    assert (paper.steps, paper.warmup, paper.learning_rate, paper.train_method) == (
        1000,
        200,
        1e-5,
        "text_encoder_full",
    )
    assert (paper.attack_tokens, paper.attack_steps, paper.attack_lr, paper.attack_every) == (1, 30, 1e-3, 1)
    assert (paper.sample_guidance, paper.negative_guidance, paper.ddim_steps, paper.retain_batch) == (
        3,
        1,
        50,
        5,
    )
    with pytest.raises(ValueError, match="train_method"):
        AdvUnlearnConfig(train_method="unet")
    with pytest.raises(ValueError, match="attack_steps"):
        AdvUnlearnConfig(attack_steps=0)


@pytest.mark.parametrize("kind", ["style", "object"])
def test_canvas_budget_is_at_least_robust_docos(kind):
    robust_doco = replace(DoCoConfig.canvas(kind), robust=True)
    assert forward_equivalents(AdvUnlearnConfig.canvas(kind).unet_passes()) >= forward_equivalents(
        robust_doco.unet_passes()
    )


@pytest.mark.parametrize("which", ["text_encoder_full", "text_encoder_layer0"])
def test_only_the_declared_text_encoder_parameters_change(tiny_pipeline, tiny_pipeline_dir, which):
    result = erase(
        tiny_pipeline,
        "van gogh",
        method="advunlearn",
        config=AdvUnlearnConfig(**TINY, train_method=which),
        progress=False,
    )
    declared = {f"text_encoder.{n}" for n in text_encoder_parameters(result.pipeline.text_encoder, which)}
    before, after = all_tensors(fresh(tiny_pipeline_dir)), all_tensors(result.pipeline)
    diff = {n for n in before if not torch.equal(before[n], after[n])}
    assert diff and diff <= declared and set(result.delta) == diff
    assert not any("layer_norm" in n or "embeddings" in n for n in declared)
    if which == "text_encoder_layer0":
        assert all(".layers.0." in n for n in declared)
    assert any("attack" in h for h in result.history) and not any("attack" in h for h in result.history[:2])


def test_it_pulls_the_concept_towards_esds_target_and_loads_from_its_delta(
    tiny_pipeline, tiny_pipeline_dir, tmp_path
):
    """With the erased text encoder, the UNet's prediction for the concept's prompts is nearer ESD's negatively
    guided target (of the original model) than the original's own; the saved delta reproduces the pipeline."""
    config = AdvUnlearnConfig(**{**TINY, "steps": 8, "warmup": 4})
    result = erase(tiny_pipeline, "van gogh", method="advunlearn", config=config, progress=False)
    original = fresh(tiny_pipeline_dir)
    prompts = ["a cat in van gogh style", "a boat in van gogh style", "a tree in van gogh style"]
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn((3, 4, 16, 16), generator=generator)
    t = torch.tensor([800, 500, 200])
    cond, uncond = encode_prompts(original, prompts, "cpu"), encode_prompts(original, [""], "cpu")
    target = esd_target(original.unet, x_t, t, cond, uncond, 1.0)
    with torch.no_grad():
        before = original.unet(x_t, t, encoder_hidden_states=cond.hidden).sample
        after = original.unet(
            x_t, t, encoder_hidden_states=encode_prompts(result.pipeline, prompts, "cpu").hidden
        ).sample
    assert float(((after - target) ** 2).mean()) < 0.9 * float(((before - target) ** 2).mean())
    save_delta(result, tmp_path / "run")
    loaded = load_erased(str(tiny_pipeline_dir), tmp_path / "run")
    torch.testing.assert_close(
        encode_prompts(loaded, prompts, "cpu").hidden, encode_prompts(result.pipeline, prompts, "cpu").hidden
    )


def test_resume_matches_uninterrupted_run(tiny_pipeline, tiny_pipeline_dir, tmp_path, monkeypatch):
    """The attack's prefix is in the checkpoint: an interrupted run resumes to the same delta."""
    config = AdvUnlearnConfig(**{**TINY, "steps": 5})
    kwargs = {"method": "advunlearn", "config": config, "seed": 2, "progress": False}
    whole = erase(tiny_pipeline, "monet", **kwargs)
    with interrupted_after_checkpoint(monkeypatch, 4):
        erase(fresh(tiny_pipeline_dir), "monet", checkpoint_dir=tmp_path, **kwargs)
    resumed = erase(fresh(tiny_pipeline_dir), "monet", checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert resumed.delta.keys() == whole.delta.keys()
    assert all(torch.equal(whole.delta[n], resumed.delta[n]) for n in whole.delta)


def test_with_steps_keeps_the_warm_ups_share():
    """`--steps` and eval.cost's probes shorten the run, not the attack's share of it (as DoCo's warm-up)."""
    paper = AdvUnlearnConfig()
    assert (paper.with_steps(10).steps, paper.with_steps(10).warmup) == (10, 2)
    assert paper.with_steps(2000).warmup == 400
