"""DoCo on the tiny canvas-shaped pipeline (seconds each), plus one slow SD-1.x-sized run."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from erasure.canvas import world
from erasure.canvas.sd_config import SD_SCHEDULE
from erasure.engine import erase
from erasure.methods.base import cross_attention_kv, predicted_x0
from erasure.methods.doco import DoCoConfig, PatchDiscriminator, RetainSpring
from erasure.methods.request import build_request
from pipelines.conditioning import encode_prompts, prompt_token_mask
from tests.helpers import TINY_DOCO, all_tensors, fresh, pipeline_of, world_text_encoder

# --- predicted x0 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("clip_sample", [False, True])
def test_x0_matches_ddpm_step(prediction_type, clip_sample):
    scheduler = DDPMScheduler(**SD_SCHEDULE, prediction_type=prediction_type, clip_sample=clip_sample)
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(4, 4, 8, 8, generator=g) * 2, torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 17, 500, 999])
    ours = predicted_x0(scheduler, eps, t, x_t)
    for i in range(4):
        ref = scheduler.step(eps[i : i + 1], int(t[i]), x_t[i : i + 1], generator=g).pred_original_sample
        torch.testing.assert_close(ours[i : i + 1], ref, rtol=1e-5, atol=1e-5)


def test_x0_matches_ddim_step():
    scheduler = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(20)
    g = torch.Generator().manual_seed(1)
    t = scheduler.timesteps[[0, 7, 19]]
    x_t, eps = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    ours = predicted_x0(scheduler, eps, t, x_t)
    for i in range(3):
        ref = scheduler.step(eps[i : i + 1], int(t[i]), x_t[i : i + 1]).pred_original_sample
        torch.testing.assert_close(ours[i : i + 1], ref, rtol=1e-5, atol=1e-5)


# --- requests and the discriminator ----------------------------------------------------------------------------


def test_canvas_requests(tiny_pipeline):
    style = build_request(tiny_pipeline, "van gogh")
    assert style.canvas and style.kind == "style" and style.anchors == [world.PLAIN]
    assert (
        len(style.target_prompts)
        == len(style.anchor_prompts)
        == len(world.OBJECTS) * len(world.STYLE_TEMPLATES)
    )
    assert all("van gogh" in p for p in style.target_prompts)
    assert not any(s in p for p in style.anchor_prompts for s in world.ARTIST_STYLES)
    held_out = world.STYLE_ALIASES["van gogh"]
    assert not any(a in p for p in style.target_prompts + style.anchor_prompts for a in held_out)

    obj = build_request(tiny_pipeline, "cat", anchor="fish")
    assert obj.kind == "object" and obj.anchors == ["fish"]
    assert all(" cat" in p for p in obj.target_prompts) and all(" fish" in p for p in obj.anchor_prompts)
    assert build_request(tiny_pipeline, "kitten").concepts == ["cat"]  # an alias trains its main name

    # Retain prompts: every caption of the other concepts of the kind, never the concept or its aliases.
    others = len(world.STYLES) - 1
    assert len(style.retain_prompts) == others * len(world.OBJECTS) * len(world.STYLE_TEMPLATES)
    assert not any(n in p for p in style.retain_prompts for n in ("van gogh", *held_out))
    assert set(style.anchor_prompts) <= set(style.retain_prompts)
    assert not any(" cat" in p for p in obj.retain_prompts) and any(" fish" in p for p in obj.retain_prompts)

    with pytest.raises(world.UnknownConceptError, match="valid styles"):
        build_request(tiny_pipeline, "rembrandt")
    with pytest.raises(ValueError, match="empty"):
        build_request(tiny_pipeline, "  ")


def test_requests_for_several_concepts(tiny_pipeline):
    both = build_request(tiny_pipeline, ["van gogh", "monet"])
    per_concept = len(world.OBJECTS) * len(world.STYLE_TEMPLATES)
    assert both.concepts == ["van gogh", "monet"] and both.anchors == [world.PLAIN, world.PLAIN]
    assert both.pair_concepts == ["van gogh"] * per_concept + ["monet"] * per_concept
    assert all(c in t for t, c in zip(both.target_prompts, both.pair_concepts))
    # Neither erased style is retained; every other style is.
    assert not any(n in p for p in both.retain_prompts for n in ("van gogh", "monet"))
    assert len(both.retain_prompts) == (len(world.STYLES) - 2) * per_concept

    # tree's world anchor is flower; erased together, flower cannot be it, nor can an earlier erasure's object.
    objects = build_request(tiny_pipeline, ["tree", "flower"])
    assert objects.anchors[0] == objects.anchors[1] == "house"
    after = build_request(tiny_pipeline, "tree", erased_before=["flower", "house"])
    assert after.anchors == ["boat"]
    with pytest.raises(ValueError, match="must not be a concept that is erased"):
        build_request(tiny_pipeline, ["tree", "cat"], anchor="cat")
    with pytest.raises(ValueError, match="listed twice"):
        build_request(tiny_pipeline, ["cat", "kitten"])
    with pytest.raises(ValueError, match="one kind"):
        build_request(tiny_pipeline, ["van gogh", "cat"])
    with pytest.raises(ValueError, match="one anchor per concept"):
        build_request(tiny_pipeline, ["tree", "cat"], anchor=["fish"])


def test_real_model_requests_use_the_template_bank(tiny_pipeline):
    tiny_pipeline.tokenizer.add_tokens(["<not-canvas>"])  # no longer the world's vocabulary
    style = build_request(tiny_pipeline, "van gogh")
    assert not style.canvas and style.anchors == ["painting"] and len(style.target_prompts) > 50
    assert all(
        "van gogh" in t and "van gogh" not in a for t, a in zip(style.target_prompts, style.anchor_prompts)
    )
    assert style.retain_prompts and not any("van gogh" in p for p in style.retain_prompts)
    obj = build_request(tiny_pipeline, "parachute", anchor="airplane", kind="object")
    assert all("airplane" in a for a in obj.anchor_prompts)
    assert obj.retain_prompts and not any("parachute" in p for p in obj.retain_prompts)
    with pytest.raises(ValueError, match="anchor"):
        build_request(tiny_pipeline, "parachute", kind="object")


def test_retain_spring_matches_autograd():
    torch.manual_seed(0)
    original = {"a": torch.randn(5, 3), "b": torch.randn(4, 3)}
    embeddings = torch.randn(6, 7, 3)  # 6 prompts x 7 tokens
    spring = RetainSpring(original, embeddings)
    params = {n: (w + 0.1 * torch.randn_like(w)).requires_grad_(True) for n, w in original.items()}
    tokens = embeddings.reshape(-1, 3)
    by_hand = sum(
        ((params[n] - original[n]) @ tokens.T).square().sum() / (original[n] @ tokens.T).square().sum()
        for n in params
    ) / len(params)
    assert spring.loss(params) == pytest.approx(by_hand.item(), rel=1e-5)
    by_hand.backward()
    pull = spring.gradients(
        {**params, "other": torch.zeros(2)}
    )  # a tensor the spring does not hold is ignored
    assert pull.keys() == params.keys()
    for n, p in params.items():
        torch.testing.assert_close(pull[n], p.grad, rtol=1e-4, atol=1e-6)
    assert spring.loss(original) == 0
    # With a mask only the marked positions count: the same as a spring on those tokens alone.
    mask = torch.zeros(6, 7, dtype=torch.bool)
    mask[:, :2], mask[0, :5] = True, True
    masked = RetainSpring(original, embeddings, mask)
    alone = RetainSpring(original, embeddings[mask][None])
    assert masked.loss(params) == pytest.approx(alone.loss(params), rel=1e-6)
    assert masked.loss(params) != pytest.approx(spring.loss(params), rel=1e-3)


def test_prompt_token_mask_marks_each_prompt_up_to_its_end(tiny_pipeline):
    mask = prompt_token_mask(tiny_pipeline, ["a cat", "a cat in van gogh style"])
    ids = tiny_pipeline.tokenizer(
        ["a cat", "a cat in van gogh style"]
    ).input_ids  # start, words, end; no padding
    assert mask.shape == (2, tiny_pipeline.tokenizer.model_max_length)
    assert mask.sum(1).tolist() == [len(i) for i in ids]
    assert mask[:, 0].all() and not mask[:, -1].any()


def test_retain_spring_keeps_other_prompts_keys(tiny_pipeline):
    """With the spring, the K/V of the other concepts' prompts move less than without it (same seed), whether it
    counts every position or only the prompts' own tokens ('content', measured on those tokens)."""
    request = build_request(tiny_pipeline, "van gogh")
    hidden = encode_prompts(tiny_pipeline, request.retain_prompts, "cpu").hidden
    tokens = hidden.reshape(-1, 32)
    content = hidden[prompt_token_mask(tiny_pipeline, request.retain_prompts)]
    drift, content_drift = {}, {}
    for weight, positions in ((0.0, "all"), (100.0, "all"), (100.0, "content")):
        config = DoCoConfig(
            **{**TINY_DOCO, "learning_rate": 1e-2, "retain_weight": weight, "spring_tokens": positions}
        )
        kv = cross_attention_kv(erase(tiny_pipeline, "van gogh", config=config, progress=False).pipeline.unet)
        base = cross_attention_kv(tiny_pipeline.unet)
        drift[weight, positions] = sum(float(((kv[n] - base[n]) @ tokens.T).norm()) for n in kv)
        content_drift[weight, positions] = sum(float(((kv[n] - base[n]) @ content.T).norm()) for n in kv)
    assert drift[100.0, "all"] < 0.8 * drift[0.0, "all"]
    assert content_drift[100.0, "content"] < 0.8 * content_drift[0.0, "all"]


@pytest.mark.parametrize("size, down", [(64, 4), (16, 2), (8, 1)])
def test_discriminator_patch_map(size, down):
    disc = PatchDiscriminator(4, size)
    assert sum(m.stride == (2, 2) for m in disc.modules() if isinstance(m, torch.nn.Conv2d)) == down
    out = disc(torch.randn(2, 4, size, size))
    assert out.shape[1] == 1 and out.shape[-1] >= 2 and out.shape[-2] >= 2


# --- a short DoCo run -------------------------------------------------------------------------------------------


def test_only_cross_attention_kv_changes(tiny_pipeline, tiny_pipeline_dir):
    result = erase(
        tiny_pipeline, "van gogh", config=TINY_DOCO, progress=False
    )  # a dict overrides the defaults
    assert result.config["retain_weight"] == DoCoConfig.canvas().retain_weight > 0
    base, edited = all_tensors(fresh(tiny_pipeline_dir)), all_tensors(result.pipeline)
    kv = {f"unet.{n}" for n in cross_attention_kv(result.pipeline.unet)}
    changed = {n for n in base if not torch.equal(base[n], edited[n])}
    assert changed and changed <= kv
    assert set(result.delta) == changed
    assert all(
        torch.equal(v, all_tensors(tiny_pipeline)[k]) for k, v in base.items()
    )  # the input is untouched
    assert (
        result.method == "doco"
        and result.kind == "style"
        and result.anchors == ["plain"]
        and result.steps == 4
    )
    assert result.config["surgery"] == "normalized" and result.seconds > 0
    assert [h["step"] for h in result.history] == [0, 1, 2, 3] and "erase" in result.history[-1]


@pytest.mark.parametrize("options", [{"surgery": "pcgrad"}, {"surgery": "none"}, {"adversarial": False}])
def test_variants_run(tiny_pipeline, options):
    result = erase(tiny_pipeline, "cat", config=DoCoConfig(**{**TINY_DOCO, **options}), progress=False)
    assert result.delta and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in result.delta)


@pytest.mark.slow
def test_two_doco_steps_on_an_sd1_shaped_unet(tmp_path):
    """SD 1.4's UNet config (860M parameters, 64x64 latents, 768-d cross-attention), random weights, on CPU."""
    from diffusers import PNDMScheduler, UNet2DConditionModel

    from erasure.canvas.sd_config import build_vae
    from erasure.canvas.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(tmp_path / "tok")
    tokenizer.add_tokens(["<sd>"])  # not the Canvas vocabulary: prompts come from the template bank
    tokenizer.model_max_length = 77
    text_encoder = world_text_encoder(tokenizer, 768, 3072, 1, 12)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
    )
    scheduler = PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, steps_offset=1)
    pipe = pipeline_of(build_vae(scale=0.25), text_encoder, tokenizer, unet, scheduler)
    before = {
        n: p.detach().clone()
        for n, p in unet.named_parameters()
        if "attn2" in n or "down_blocks.0.resnets" in n
    }
    config = DoCoConfig(steps=2, d_warmup=0, batch_size=1)
    anchors = torch.randn(
        2, 4, 64, 64
    )  # stands in for generated anchor images (anchor_latents skips generation)
    result = erase(pipe, "van gogh", config=config, anchor_latents=anchors, progress=False)
    kv = {f"unet.{n}" for n in cross_attention_kv(result.pipeline.unet)}
    assert len(kv) == 32 and set(result.delta) == kv
    edited = dict(result.pipeline.unet.named_parameters())
    assert all(torch.equal(before[n], edited[n]) for n in before if f"unet.{n}" not in kv)
    assert [sorted(h) for h in result.history] == [["d", "erase", "prior", "step"]] * 2
