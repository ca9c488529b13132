"""ESD on the tiny canvas-shaped pipeline: which parameters train, the training target, the partial sampler, budget."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from erasure.engine import erase
from erasure.methods import esd
from erasure.methods.base import forward_equivalents, unet_parameters
from erasure.methods.doco import DoCoConfig
from erasure.methods.esd import ESDConfig, esd_target, sample_until
from pipelines.conditioning import encode_prompts
from tests.helpers import all_tensors, fresh, interrupted_after_checkpoint

TINY = {"steps": 3, "batch_size": 2, "ddim_steps": 4, "learning_rate": 1e-3, "use_request_prompts": True}


def changed(base, edited) -> set[str]:
    before, after = all_tensors(base), all_tensors(edited)
    return {n for n in before if not torch.equal(before[n], after[n])}


# --- which parameters train --------------------------------------------------------------------------------------
def test_esd_x_trains_every_cross_attention_parameter_and_nothing_else(tiny_pipeline, tiny_pipeline_dir):
    result = erase(tiny_pipeline, "van gogh", method="esd", config=ESDConfig(**TINY), progress=False)
    declared = {f"unet.{n}" for n in unet_parameters(result.pipeline.unet, "xattn")}
    diff = changed(fresh(tiny_pipeline_dir), result.pipeline)
    assert diff and diff <= declared and set(result.delta) == diff
    assert all(".attn2." in n for n in declared)
    for part in ("to_q", "to_k", "to_v", "to_out"):
        assert any(f".attn2.{part}" in n for n in diff)
    assert not changed(fresh(tiny_pipeline_dir), tiny_pipeline)  # the input pipeline is untouched
    assert result.method == "esd" and result.steps == 3 and [h["step"] for h in result.history] == [0, 1, 2]


def test_esd_u_trains_only_non_cross_attention_parameters(tiny_pipeline, tiny_pipeline_dir):
    config = ESDConfig(**{**TINY, "train_method": "noxattn", "steps": 2})
    result = erase(tiny_pipeline, "cat", method="esd", config=config, progress=False)
    declared = {f"unet.{n}" for n in unet_parameters(result.pipeline.unet, "noxattn")}
    diff = changed(fresh(tiny_pipeline_dir), result.pipeline)
    assert diff and diff <= declared
    assert not any(".attn2." in n for n in declared)
    skipped = ("unet.time_embedding.", "unet.conv_out.", "unet.conv_norm_out.", "text_encoder.", "vae.")
    assert not any(n.startswith(skipped) for n in diff)
    assert any(".attn1." in n for n in diff) and any(".resnets." in n for n in diff)


def test_esd_defaults_pick_x_for_styles_and_u_for_objects():
    assert ESDConfig.sd("style").train_method == "xattn" and ESDConfig.sd("object").train_method == "noxattn"
    paper = ESDConfig.sd("style")
    assert (paper.steps, paper.learning_rate, paper.negative_guidance, paper.ddim_steps) == (
        1000,
        1e-5,
        1.0,
        50,
    )
    assert paper.sample_guidance == 3.0 and paper.batch_size == 1 and paper.sample_with == "trainable"
    assert ESDConfig.defaults("object", canvas=True).train_method == "noxattn"
    assert ESDConfig.canvas("style").with_steps(7).steps == 7
    with pytest.raises(ValueError, match="train_method"):
        ESDConfig(train_method="everything")


@pytest.mark.parametrize("kind", ["style", "object"])
def test_canvas_budget_is_at_least_docos(kind):
    """Counted as forwards + 2 x backwards: ESD spends its passes generating x_t, DoCo on backwards."""
    ours, doco = ESDConfig.canvas(kind).unet_passes(), DoCoConfig.canvas(kind).unet_passes()
    assert forward_equivalents(ours) >= forward_equivalents(doco)
    assert forward_equivalents(ESDConfig.canvas(kind).with_steps(95).unet_passes()) < forward_equivalents(
        doco
    )


# --- the target and x_t ------------------------------------------------------------------------------------------
def test_target_is_the_papers_formula(tiny_pipeline):
    unet = tiny_pipeline.unet.eval()
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(3, 4, 16, 16, generator=g)
    t = torch.tensor([901, 500, 21])
    cond = encode_prompts(
        tiny_pipeline, ["a cat in van gogh style", "van gogh", "a fish in van gogh style"], "cpu"
    )
    uncond = encode_prompts(tiny_pipeline, [""], "cpu")
    with torch.no_grad():
        e_uncond = unet(x_t, t, encoder_hidden_states=uncond.hidden.expand(3, -1, -1)).sample
        e_cond = unet(x_t, t, encoder_hidden_states=cond.hidden).sample
    for eta in (1.0, 2.0):
        by_hand = e_uncond - eta * (e_cond - e_uncond)
        torch.testing.assert_close(esd_target(unet, x_t, t, cond, uncond, eta), by_hand, rtol=1e-4, atol=1e-5)


def test_training_uses_the_frozen_teachers_target(tiny_pipeline, tiny_pipeline_dir, monkeypatch):
    """Inside a run, the target handed to the loss is the paper's formula on the original UNet at the same x_t, t."""
    calls = []

    def recording(teacher, x_t, t, cond, uncond, eta):
        out = esd_target(teacher, x_t, t, cond, uncond, eta)
        calls.append((x_t.clone(), t.clone(), cond.hidden.clone(), uncond.hidden.clone(), eta, out.clone()))
        return out

    monkeypatch.setattr(esd, "esd_target", recording)
    config = ESDConfig(**{**TINY, "negative_guidance": 1.5})
    erase(tiny_pipeline, "van gogh", method="esd", config=config, progress=False)
    assert len(calls) == 3
    original = fresh(tiny_pipeline_dir).unet.eval()
    sampler = DDIMScheduler.from_config(tiny_pipeline.scheduler.config)
    sampler.set_timesteps(config.ddim_steps)
    for x_t, t, cond, uncond, eta, target in calls:
        assert eta == 1.5 and int(t[0]) in sampler.timesteps.tolist() and len(set(t.tolist())) == 1
        with torch.no_grad():
            e0 = original(x_t, t, encoder_hidden_states=uncond.expand(len(x_t), -1, -1)).sample
            ec = original(x_t, t, encoder_hidden_states=cond).sample
        torch.testing.assert_close(target, e0 - eta * (ec - e0), rtol=1e-4, atol=1e-5)


def test_partial_sampler_runs_the_pipelines_ddim_loop(tiny_pipeline):
    """Run to the end, the partial sampler gives exactly what StableDiffusionPipeline gives for the same noise."""
    cond = encode_prompts(tiny_pipeline, ["a cat in monet style"] * 2, "cpu")
    uncond = encode_prompts(tiny_pipeline, [""], "cpu")
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    sampler = DDIMScheduler.from_config(tiny_pipeline.scheduler.config)
    sampler.set_timesteps(4)
    ours = sample_until(tiny_pipeline.unet, sampler, noise, cond, uncond, 4, 3.0)
    theirs = tiny_pipeline(
        prompt_embeds=cond.hidden,
        negative_prompt_embeds=uncond.hidden.expand(2, -1, -1),
        latents=noise.clone(),
        num_inference_steps=4,
        guidance_scale=3.0,
        output_type="latent",
    ).images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert torch.equal(sample_until(tiny_pipeline.unet, sampler, noise, cond, uncond, 0, 3.0), noise)


def test_resume_matches_uninterrupted_run(tiny_pipeline, tiny_pipeline_dir, tmp_path, monkeypatch):
    config = ESDConfig(**{**TINY, "steps": 4, "checkpoint_every": 2})
    whole = erase(tiny_pipeline, "monet", method="esd", config=config, seed=1, progress=False)
    kwargs = {"method": "esd", "config": config, "seed": 1, "checkpoint_dir": tmp_path, "progress": False}
    with interrupted_after_checkpoint(monkeypatch, 2):
        erase(fresh(tiny_pipeline_dir), "monet", **kwargs)
    resumed = erase(fresh(tiny_pipeline_dir), "monet", resume=True, **kwargs)
    assert resumed.delta.keys() == whole.delta.keys()
    assert all(torch.equal(whole.delta[n], resumed.delta[n]) for n in whole.delta)
