"""Concept Ablation (model-based, K/V) on the tiny canvas-shaped pipeline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from erasure.engine import erase
from erasure.methods import METHODS
from erasure.methods.base import cross_attention_kv, select_pairs
from erasure.methods.ca import CAConfig
from erasure.methods.doco import DoCoConfig
from erasure.methods.request import build_request
from pipelines.conditioning import encode_prompts
from tests.helpers import all_tensors, fresh

TINY = {
    "steps": 3,
    "batch_size": 2,
    "learning_rate": 1e-3,
    "scale_lr": False,
    "num_anchor_images": 4,
    "anchor_steps": 2,
    "anchor_batch": 4,
}


def test_only_cross_attention_kv_changes(tiny_pipeline, tiny_pipeline_dir):
    result = erase(tiny_pipeline, "van gogh", method="ca", config=CAConfig(**TINY), progress=False)
    base, edited = all_tensors(fresh(tiny_pipeline_dir)), all_tensors(result.pipeline)
    diff = {n for n in base if not torch.equal(base[n], edited[n])}
    kv = {f"unet.{n}" for n in cross_attention_kv(result.pipeline.unet)}
    assert diff and diff <= kv and set(result.delta) == diff
    assert all(torch.equal(v, all_tensors(tiny_pipeline)[k]) for k, v in base.items())  # input untouched
    assert result.method == "ca" and [sorted(h) for h in result.history] == [["ablation", "step"]] * 3


@pytest.mark.parametrize("options", [{"prior_preservation": True}, {"anchor_teacher": "current"}])
def test_variants_run(tiny_pipeline, options):
    result = erase(tiny_pipeline, "cat", method="ca", config=CAConfig(**{**TINY, **options}), progress=False)
    assert result.delta and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in result.delta)
    assert ("prior" in result.history[-1]) == options.get("prior_preservation", False)


def test_ablation_loss_decreases(tiny_pipeline, tiny_pipeline_dir):
    """On a fixed batch: |eps(x_t, target) - eps_frozen(x_t, anchor)|^2 is smaller after a few steps than before."""
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(8, 4, 16, 16, generator=g)
    request = build_request(tiny_pipeline, "van gogh")
    pairs = torch.tensor(select_pairs(request, len(anchors), 0))
    target_emb = encode_prompts(tiny_pipeline, request.target_prompts, "cpu").hidden[pairs]
    anchor_emb = encode_prompts(tiny_pipeline, request.anchor_prompts, "cpu").hidden[pairs]
    scheduler = DDPMScheduler.from_config(tiny_pipeline.scheduler.config)
    t = torch.randint(0, 1000, (len(anchors),), generator=g)
    x_t = scheduler.add_noise(anchors, torch.randn(anchors.shape, generator=g), t)
    teacher = fresh(tiny_pipeline_dir).unet

    def loss(unet):
        with torch.no_grad():
            wanted = teacher(x_t, t, encoder_hidden_states=anchor_emb).sample
            return F.mse_loss(unet(x_t, t, encoder_hidden_states=target_emb).sample, wanted).item()

    before = loss(tiny_pipeline.unet)
    config = CAConfig(**{**TINY, "steps": 12, "batch_size": 8})
    result = erase(
        tiny_pipeline, "van gogh", method="ca", config=config, anchor_latents=anchors, progress=False
    )
    assert loss(result.pipeline.unet) < 0.8 * before
    losses = [h["ablation"] for h in result.history]
    assert sum(losses[-4:]) < sum(losses[:4])


def test_defaults_and_budget():
    paper = CAConfig.sd("style")
    assert (paper.learning_rate, paper.batch_size, paper.scale_lr, paper.prior_preservation) == (
        2e-6,
        4,
        True,
        False,
    )
    assert CAConfig.canvas("object").with_steps(9).steps == 9
    for kind in ("style", "object"):
        ours, doco = CAConfig.canvas(kind).unet_passes(), DoCoConfig.canvas(kind).unet_passes()
        assert ours["forward"] >= doco["forward"] and ours["backward"] >= doco["backward"]
    with pytest.raises(ValueError, match="anchor_teacher"):
        CAConfig(anchor_teacher="someone")


def test_every_method_is_registered_for_the_cli():
    from erasure.run import parse_args

    assert {"doco", "esd", "uce", "ca"} <= set(METHODS)
    for method in ("esd", "uce", "ca"):
        assert parse_args(["--concept", "van gogh", "--method", method]).method == method
        config_cls, _ = METHODS[method]
        assert config_cls.defaults("style", canvas=True) == config_cls.canvas("style")
