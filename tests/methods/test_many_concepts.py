"""Several concepts in one erasure (erase(pipeline, [...])): each concept moves towards its own anchor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from erasure.engine import erase
from erasure.methods.base import seeded_cycle
from erasure.methods.request import build_request
from pipelines.conditioning import encode_prompts
from tests.helpers import TINY_DOCO, fresh

# Enough steps on the tiny pipeline for a noise-matching loss to move (the CA test's budget). DoCo runs its
# noise-matching ablation without the prior's surgery and the spring: on a random UNet the prior loss is ~1000x the
# erasing one and the spring holds every random embedding, so either alone keeps K/V still (test_doco tests them).
TINY_CA = {"steps": 12, "batch_size": 8, "learning_rate": 1e-3, "num_anchor_images": 8, "anchor_steps": 2}
CONFIGS = {
    "ca": TINY_CA,
    "doco": {
        **TINY_DOCO,
        **TINY_CA,
        "d_warmup": 0,
        "adversarial": False,
        "surgery_lambda": 0.0,
        "retain_weight": 0.0,
    },
    "uce": None,
}


def fixed_batch(pipeline):
    """Sixteen anchor latents and their noised versions at fixed timesteps."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(16, 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (16,), generator=g)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    return latents, scheduler.add_noise(latents, torch.randn(latents.shape, generator=g), t), t


def gap(pipeline, unet, teacher, targets, anchors, x_t, t) -> float:
    """|eps(x_t, target prompts) - eps_frozen(x_t, anchor prompts)|^2 over the batch, prompt i for sample i."""
    target, anchor = (
        encode_prompts(pipeline, targets, "cpu").hidden,
        encode_prompts(pipeline, anchors, "cpu").hidden,
    )
    with torch.no_grad():
        wanted = teacher(x_t, t, encoder_hidden_states=anchor).sample
        return F.mse_loss(unet(x_t, t, encoder_hidden_states=target).sample, wanted).item()


@pytest.mark.parametrize("method", ["ca", "doco", "uce"])
def test_one_run_moves_both_concepts_towards_their_anchors(tiny_pipeline, tiny_pipeline_dir, method):
    latents, x_t, t = fixed_batch(tiny_pipeline)
    request = build_request(tiny_pipeline, ["van gogh", "monet"])
    teacher = fresh(tiny_pipeline_dir).unet
    # Latent i trains with prompt pair pairs[i] (AnchorData's seeded pairing); each concept is measured on its own.
    pairs = seeded_cycle(len(request.target_prompts), len(latents), 0)
    samples = {}
    for concept in request.concepts:
        rows = [i for i, k in enumerate(pairs) if request.pair_concepts[k] == concept]
        targets = [request.target_prompts[pairs[i]] for i in rows]
        samples[concept] = (targets, [request.anchor_prompts[pairs[i]] for i in rows], x_t[rows], t[rows])
    assert all(len(s[0]) >= 4 for s in samples.values())
    before = {c: gap(tiny_pipeline, tiny_pipeline.unet, teacher, *s) for c, s in samples.items()}

    result = erase(
        tiny_pipeline,
        ["van gogh", "monet"],
        method=method,
        config=CONFIGS[method],
        anchor_latents=None if method == "uce" else latents,
        progress=False,
    )
    assert result.concepts == ["van gogh", "monet"] and result.anchors == ["plain", "plain"]
    after = {c: gap(tiny_pipeline, result.pipeline.unet, teacher, *s) for c, s in samples.items()}
    assert all(after[c] < 0.8 * before[c] for c in samples), (before, after)


def test_budgets_for_several_concepts():
    from erasure.methods.ca import CAConfig
    from erasure.methods.doco import DoCoConfig
    from erasure.methods.esd import ESDConfig

    one = DoCoConfig.canvas("style")
    six = DoCoConfig.defaults("style", True, 6)
    assert six.num_anchor_images == 6 * one.num_anchor_images and six.steps == 3 * one.steps  # ceil(sqrt(6))
    assert six.d_warmup / six.steps == one.d_warmup / one.steps
    assert DoCoConfig.defaults("style", True, 1) == one
    assert (
        CAConfig.defaults("object", True, 4).num_anchor_images
        == 4 * CAConfig.canvas("object").num_anchor_images
    )
    assert ESDConfig.defaults("style", True, 5) == ESDConfig.canvas("style")


def test_per_concept_discriminator_heads(tiny_pipeline):
    """Head i judges concept i's samples (the others' logits are not read), and a run with them erases both."""
    from erasure.methods import doco

    disc = doco.PatchDiscriminator(4, 16, heads=3)
    x = torch.randn(2, 4, 16, 16)
    full = disc(x)
    assert full.shape[1] == 3
    torch.testing.assert_close(disc(x, torch.tensor([2, 0])), torch.stack([full[0, 2:3], full[1, 0:1]]))
    config = {**TINY_DOCO, "num_anchor_images": 8, "discriminator_per_concept": True}
    result = erase(tiny_pipeline, ["van gogh", "monet"], config=config, progress=False)
    assert result.delta and result.config["discriminator_per_concept"] is True


def test_a_later_erasure_holds_the_earlier_ones_with_hold_erased(tiny_pipeline, tiny_pipeline_dir):
    """A chain's request carries the captions of the concepts erased before; DoCo's `hold_erased` spring keeps
    their keys and values where the first erasure left them (less drift than without it). (Whether the later
    concept is still erased cannot be read on the tiny model, whose random encoder gives every caption nearly the
    same states; docs/scale.md measures it on canvas-sd.)"""
    from erasure.methods.base import cross_attention_kv

    latents, _, _ = fixed_batch(tiny_pipeline)
    first = erase(
        tiny_pipeline, "van gogh", method="ca", config=TINY_CA, anchor_latents=latents, progress=False
    )
    request = build_request(first.pipeline, "monet", erased_before=["van gogh"])
    assert request.erased_prompts and all("van gogh" in p for p in request.erased_prompts)
    assert not build_request(first.pipeline, "monet").erased_prompts
    held_states = encode_prompts(first.pipeline, request.erased_prompts, "cpu").hidden
    kv_first = {n: w.detach().clone() for n, w in cross_attention_kv(first.pipeline.unet).items()}

    def drift(hold: float) -> float:
        """How far the later erasure moves the earlier concept's keys and values, with `hold_erased` = hold."""
        config = {**CONFIGS["doco"], "hold_erased": hold}
        later = erase(
            first.pipeline,
            "monet",
            method="doco",
            config=config,
            anchor_latents=latents,
            erased_before=["van gogh"],
            progress=False,
        )
        after = cross_attention_kv(later.pipeline.unet)
        moved = sum(
            float(((after[n].detach() - w0) @ held_states.reshape(-1, w0.shape[1]).T).norm())
            for n, w0 in kv_first.items()
        )
        return moved

    held, free = drift(100.0), drift(0.0)
    assert held < 0.5 * free


def test_hold_anchors_keeps_the_anchors_own_captions(tiny_pipeline):
    """DoCo's `hold_anchors` spring keeps the keys and values of the anchor's own captions (the pairs' anchor
    prompts) near the original's: the erasure moves them less than without it."""
    from erasure.methods.base import cross_attention_kv

    latents, _, _ = fixed_batch(tiny_pipeline)
    request = build_request(tiny_pipeline, ["van gogh", "monet"])
    anchor_states = encode_prompts(tiny_pipeline, sorted(set(request.anchor_prompts)), "cpu").hidden
    kv0 = {n: w.detach().clone() for n, w in cross_attention_kv(tiny_pipeline.unet).items()}

    def drift(hold: float) -> float:
        config = {**CONFIGS["doco"], "hold_anchors": hold}
        after = cross_attention_kv(
            erase(
                tiny_pipeline, ["van gogh", "monet"], config=config, anchor_latents=latents, progress=False
            ).pipeline.unet
        )
        return sum(
            float(((after[n].detach() - w0) @ anchor_states.reshape(-1, w0.shape[1]).T).norm())
            for n, w0 in kv0.items()
        )

    held, free = drift(100.0), drift(0.0)
    assert free > 0 and held < 0.5 * free
