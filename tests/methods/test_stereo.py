"""STEREO on the tiny canvas-shaped pipeline: its target, its two stages, what trains, and its budget."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from erasure.engine import erase
from erasure.methods.base import forward_equivalents, unet_parameters
from erasure.methods.doco import DoCoConfig
from erasure.methods.stereo import STEREOConfig, compositional_target
from tests.helpers import all_tensors, fresh

TINY = {
    "rounds": 2,
    "ste_steps": 2,
    "steps": 2 * 3 + 3,
    "inversion_steps": 3,
    "inversion_batch": 2,
    "batch_size": 2,
    "ddim_steps": 3,
    "ste_learning_rate": 1e-3,
    "learning_rate": 1e-3,
    "adversarial_tokens": 2,
    "num_anchor_images": 4,
    "anchor_steps": 2,
    "anchor_batch": 4,
    "use_request_prompts": True,
}


def test_compositional_target_by_hand():
    e0, n1, n2, anchor = (torch.full((1, 2), v) for v in (1.0, 3.0, 5.0, 2.0))
    # 1 + (-2 - 1) * mean(2, 4) + (2 - 1) * (2 - 1) = 1 - 9 + 1
    assert torch.equal(compositional_target(e0, [n1, n2], anchor, 2.0), torch.full((1, 2), -7.0))


def test_official_defaults_and_bad_values():
    paper = STEREOConfig()
    assert (paper.rounds, paper.ste_steps, paper.reo_steps, paper.adversarial_tokens) == (4, 200, 200, 4)
    assert (paper.ste_learning_rate, paper.learning_rate, paper.inversion_lr, paper.inversion_steps) == (
        5e-6,
        2e-5,
        5e-3,
        3000,
    )
    assert (paper.negative_guidance, paper.compositional_guidance, paper.checkpoint_every) == (2.0, 2.0, 0)
    with pytest.raises(ValueError, match="REO's iterations"):
        STEREOConfig(steps=4 * 201)
    with pytest.raises(ValueError, match="rounds"):
        STEREOConfig(rounds=0)


@pytest.mark.parametrize("kind", ["style", "object"])
def test_canvas_budget_is_at_least_robust_docos(kind):
    ours = forward_equivalents(STEREOConfig.canvas(kind).unet_passes())
    assert ours >= forward_equivalents(replace(DoCoConfig.canvas(kind), robust=True).unet_passes())


def test_both_stages_run_and_only_the_declared_unet_parameters_change(tiny_pipeline, tiny_pipeline_dir):
    result = erase(tiny_pipeline, "van gogh", method="stereo", config=STEREOConfig(**TINY), progress=False)
    stages = [next(k for k in h if k in ("ste", "inversion", "reo")) for h in result.history]
    assert stages == ["ste", "ste", "inversion"] * 2 + ["reo"] * 3
    declared = {f"unet.{n}" for n in unet_parameters(result.pipeline.unet, "noxattn")}
    before, after = all_tensors(fresh(tiny_pipeline_dir)), all_tensors(result.pipeline)
    diff = {n for n in before if not torch.equal(before[n], after[n])}
    assert diff and diff <= declared and set(result.delta) == diff


def test_reo_starts_from_the_original_unet(tiny_pipeline):
    """STE's erasing only serves the search: with REO's learning rate at 0 the result is the original model."""
    config = STEREOConfig(**{**TINY, "learning_rate": 0.0})
    result = erase(tiny_pipeline, "van gogh", method="stereo", config=config, progress=False)
    assert any("ste" in h for h in result.history) and not result.delta
