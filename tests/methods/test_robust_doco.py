"""Robust DoCo: the inner attack (erasure/methods/adversaries.py) and DoCo with it in the loop, on the tiny pipeline."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import DDPMScheduler

from erasure.engine import TrainingRun, erase
from erasure.methods.adversaries import AdversarialPrompts, adversarial_template
from erasure.methods.base import (
    AnchorData,
    frozen_teacher_and_student,
    generate_anchor_latents,
    unet_parameters,
)
from erasure.methods.doco import DoCoConfig
from erasure.methods.doco_parts import saliency_masks
from erasure.methods.esd import esd_target
from erasure.methods.request import build_request
from pipelines.conditioning import encode_prompts, noise_prediction
from pipelines.slots import SLOT
from tests.helpers import TINY_DOCO, fresh, interrupted_after_checkpoint

ROBUST = {**TINY_DOCO, "robust": True, "robust_every": 1, "robust_iterations": 2, "robust_prompts": 2}


def test_adversarial_templates():
    assert adversarial_template("a cat in van gogh style", "van gogh", "soft", 3) == (
        f"{SLOT} {SLOT} {SLOT} a cat in style"
    )
    assert (
        adversarial_template("a cat in Van Gogh style", "van gogh", "inversion", 3)
        == f"a cat in {SLOT} style"
    )
    # Only the first mention becomes the slot; later ones are deleted. A prompt that never names it gets one in front.
    assert adversarial_template("van gogh, by van gogh", "van gogh", "inversion", 3) == f"{SLOT}, by"
    assert adversarial_template("a cat", "van gogh", "inversion", 3) == f"{SLOT} a cat"
    with pytest.raises(ValueError, match="inner attack must be one of"):
        adversarial_template("a cat", "van gogh", "pgd", 3)
    with pytest.raises(ValueError, match="robust_attacks"):
        DoCoConfig(robust_attacks=("pgd",))


def _attack_loss(adversaries, unet, teacher, anchors, target_emb, pairs, session) -> float:
    """The attacker's objective for the kept embeddings of `pairs`, on fixed noised anchor batches."""
    session.generator.manual_seed(123)
    with torch.no_grad():
        return sum(
            adversaries.loss(unet, teacher, anchors, target_emb, "soft", pairs).item() for _ in range(4)
        )


def test_inner_attack_finds_the_concept_before_the_update_and_less_after(tiny_pipeline, tiny_pipeline_dir):
    """On the original model, the refreshed embeddings bring the target prompt's prediction back (lower attack
    loss than their random start); after robust DoCo they bring it back less (higher loss on the erased UNet)."""
    config = DoCoConfig(**{**ROBUST, "steps": 12, "d_warmup": 2, "robust_prompts": 4})
    request = build_request(tiny_pipeline, "van gogh")
    session = TrainingRun({}, 0, config, progress=False)
    teacher, student, _ = frozen_teacher_and_student(tiny_pipeline, "cpu")
    scheduler = DDPMScheduler.from_config(tiny_pipeline.scheduler.config)
    anchors = AnchorData(tiny_pipeline, request, config, session, scheduler)
    target_emb = encode_prompts(tiny_pipeline, request.target_prompts, "cpu")
    adversaries = AdversarialPrompts(tiny_pipeline, request, ["soft"], 3, "cpu", session.generator)

    session.generator.manual_seed(7)
    pairs = torch.randperm(len(target_emb), generator=session.generator)[:4]
    before = _attack_loss(adversaries, student, teacher, anchors, target_emb, pairs, session)
    session.generator.manual_seed(7)
    adversaries.refresh(student, teacher, anchors, target_emb, 4, 30, 0.05, session.generator)
    assert bool((adversaries.found["soft"][pairs] == 1).all())
    found = _attack_loss(adversaries, student, teacher, anchors, target_emb, pairs, session)
    assert found < 0.8 * before
    assert all(
        p.grad is None for p in student.parameters()
    )  # the attacker leaves the model's gradients alone

    erased = erase(fresh(tiny_pipeline_dir), "van gogh", config=config, seed=0, progress=False).pipeline
    after = _attack_loss(adversaries, erased.unet, teacher, anchors, target_emb, pairs, session)
    assert after > 1.5 * found


@pytest.mark.parametrize("trainable", ["kv", "xattn", "noxattn"])
def test_robust_doco_changes_only_its_declared_parameters(tiny_pipeline, trainable):
    config = DoCoConfig(**{**ROBUST, "trainable": trainable, "retain_weight": 1.0})
    result = erase(tiny_pipeline, "van gogh", config=config, seed=0, progress=False)
    changed = {n.removeprefix("unet.") for n in result.delta}
    assert changed and changed <= set(unet_parameters(tiny_pipeline.unet, trainable))
    if trainable == "kv":
        assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)
    elif trainable == "xattn":
        assert any(".attn2.to_q." in n or ".attn2.to_out." in n for n in changed)
    else:  # no K/V among them: the retain spring holds nothing and stays off
        assert not any(".attn2." in n for n in changed)
        assert not any("retain" in h for h in result.history)
    assert any("attack" in h for h in result.history)


def test_robust_run_resumes_to_the_uninterrupted_result(
    tiny_pipeline, tiny_pipeline_dir, tmp_path, monkeypatch
):
    """The inner attack's embeddings are in the checkpoint: a run interrupted at step 4 resumes to the same delta."""
    config = DoCoConfig(**{**ROBUST, "steps": 6, "d_warmup": 2})

    def run(folder, pipeline, resume=False):
        return erase(
            pipeline, "van gogh", config=config, seed=3, checkpoint_dir=folder, resume=resume, progress=False
        )

    whole = run(tmp_path / "a", tiny_pipeline)
    with interrupted_after_checkpoint(monkeypatch, 4):
        run(tmp_path / "b", fresh(tiny_pipeline_dir))
    resumed = run(tmp_path / "b", fresh(tiny_pipeline_dir), resume=True)
    assert all(torch.equal(whole.delta[n], resumed.delta[n]) for n in whole.delta)
    assert [h.get("attack") for h in resumed.history] == [h.get("attack") for h in whole.history]


def _drift(unet, teacher, hidden, seed: int = 0) -> float:
    """Mean squared difference of the two UNets' noise predictions for `hidden` on fixed random x_t, t."""
    generator = torch.Generator().manual_seed(seed)
    channels, size = teacher.config.in_channels, teacher.config.sample_size
    x_t = torch.randn((len(hidden), channels, size, size), generator=generator)
    t = torch.randint(0, 1000, (len(hidden),), generator=generator)
    with torch.no_grad():
        return float(((unet(x_t, t, hidden).sample - teacher(x_t, t, hidden).sample) ** 2).mean())


def test_retain_distillation_holds_the_rest_of_the_world_under_any_trained_set(
    tiny_pipeline, tiny_pipeline_dir
):
    """With the whole UNet but cross-attention training (no keys/values for the spring to hold), the retain
    distillation keeps other concepts' predictions nearer the original's (canvas-sd's figures: docs/robust.md)."""
    config = DoCoConfig(**{**TINY_DOCO, "steps": 8, "trainable": "noxattn", "num_retain_images": 4})
    request = build_request(tiny_pipeline, "van gogh")
    retain = encode_prompts(tiny_pipeline, request.retain_prompts[::40], "cpu").hidden
    target = encode_prompts(tiny_pipeline, request.target_prompts[::10], "cpu").hidden
    original = tiny_pipeline.unet
    plain = erase(fresh(tiny_pipeline_dir), "van gogh", config=config, seed=0, progress=False)
    held = erase(
        fresh(tiny_pipeline_dir),
        "van gogh",
        config=DoCoConfig(**{**config.__dict__, "retain_distill": 3.0}),
        seed=0,
        progress=False,
    )
    assert any("distill" in h for h in held.history) and not any("distill" in h for h in plain.history)
    drift = {
        (name, prompts): _drift(result.pipeline.unet, original, hidden)
        for name, result in (("plain", plain), ("held", held))
        for prompts, hidden in (("retain", retain), ("target", target))
    }
    assert drift["held", "retain"] < 0.7 * drift["plain", "retain"]
    # On this tiny random model every prompt shares most of the UNet, so the concept moves less too, but it moves.
    assert drift["held", "target"] > 0.3 * drift["plain", "target"]


def test_concept_renders_are_the_erasing_latents(tiny_pipeline, tiny_pipeline_dir, tmp_path):
    """`erase_on='concept'` noises the frozen pipeline's renders of the target prompts, cached apart from the
    anchors; the same sampler on the target prompts reproduces them, and they differ from the anchor images."""
    config = DoCoConfig(**{**ROBUST, "adversarial": False, "erase_on": "concept", "trainable": "noxattn"})
    request = build_request(tiny_pipeline, "van gogh")
    session = TrainingRun({}, 0, config, progress=False)
    scheduler = DDPMScheduler.from_config(tiny_pipeline.scheduler.config)
    renders = AnchorData(tiny_pipeline, request, config, session, scheduler, "target")
    anchors = AnchorData(tiny_pipeline, request, config, session, scheduler)
    assert torch.equal(
        renders.pair, anchors.pair
    )  # the same seeded choice of pairs, the other prompt of each
    again = generate_anchor_latents(
        tiny_pipeline,
        [request.target_prompts[i] for i in renders.pair.tolist()],
        config.anchor_steps,
        config.anchor_guidance,
        0,
        config.anchor_batch,
        False,
    )
    assert torch.allclose(renders.latents, again)
    assert not torch.allclose(renders.latents, anchors.latents)
    with pytest.raises(ValueError, match="source must be one of"):
        AnchorData(tiny_pipeline, request, config, session, scheduler, "concept")
    with pytest.raises(ValueError, match="erase_on"):
        DoCoConfig(erase_on="target")

    result = erase(
        fresh(tiny_pipeline_dir), "van gogh", config=config, seed=0, checkpoint_dir=tmp_path, progress=False
    )
    assert (tmp_path / "target_latents.safetensors").exists() and (
        tmp_path / "anchor_latents.safetensors"
    ).exists()
    assert result.delta and not any(".attn2." in n for n in result.delta)
    assert any("attack" in h for h in result.history)


def test_saliency_masks_keep_the_largest_gradients():
    grads = {"a": torch.tensor([0.1, -3.0, 0.5]), "b": torch.tensor([[2.0, -0.2], [0.0, 1.0]])}
    masks = saliency_masks(grads, 3 / 7)  # the three largest |g| of seven: 3.0, 2.0, 1.0
    assert masks["a"].tolist() == [False, True, False]
    assert masks["b"].tolist() == [[True, False], [False, True]]
    assert all(m.all() for m in saliency_masks(grads, 1.0).values())
    with pytest.raises(ValueError, match="salient share"):
        saliency_masks(grads, 0.0)
    with pytest.raises(ValueError, match="salient_share"):
        DoCoConfig(salient_share=1.5)


def test_salient_share_changes_only_the_most_salient_entries(tiny_pipeline_dir):
    """With salient_share 0.05 of a wide trained set, at most about 5% of its entries move (AdamW's weight decay
    included), and a plain run moves far more."""
    config = DoCoConfig(**{**ROBUST, "trainable": "noxattn", "salient_share": 0.05, "saliency_batches": 2})
    original = dict(fresh(tiny_pipeline_dir).unet.named_parameters())
    size = sum(p.numel() for p in unet_parameters(fresh(tiny_pipeline_dir).unet, "noxattn").values())

    def moved(share):
        run = DoCoConfig(**{**config.__dict__, "salient_share": share})
        unet = erase(fresh(tiny_pipeline_dir), "van gogh", config=run, seed=0, progress=False).pipeline.unet
        return sum(int((p != original[n]).sum()) for n, p in unet.named_parameters())

    assert 0 < moved(0.05) <= 0.051 * size
    assert moved(1.0) > 0.5 * size


def test_negative_guidance_pulls_the_concept_towards_esds_target(tiny_pipeline, tiny_pipeline_dir):
    """`negative_guidance` > 0: the target prompts' predictions move towards the teacher's negatively guided
    one (ESD's target), closer than noise matching to the anchor's prediction brings them."""
    config = DoCoConfig(
        **{**TINY_DOCO, "steps": 10, "adversarial": False, "trainable": "noxattn", "learning_rate": 1e-4}
    )
    request = build_request(tiny_pipeline, "van gogh")
    target = encode_prompts(tiny_pipeline, request.target_prompts[::10], "cpu")
    uncond = encode_prompts(tiny_pipeline, [""], "cpu")
    teacher = tiny_pipeline.unet
    generator = torch.Generator().manual_seed(5)
    x_t = torch.randn((len(target.hidden), teacher.config.in_channels, 8, 8), generator=generator)
    t = torch.randint(100, 900, (len(x_t),), generator=generator)
    goal = esd_target(teacher, x_t, t, target, uncond, 1.0)

    def distance(unet) -> float:
        with torch.no_grad():
            return float(((noise_prediction(unet, x_t, t, target) - goal) ** 2).mean())

    runs = {
        eta: erase(
            fresh(tiny_pipeline_dir), "van gogh", config=replace(config, negative_guidance=eta), seed=0
        )
        for eta in (0.0, 1.0)
    }
    guided, anchored = distance(runs[1.0].pipeline.unet), distance(runs[0.0].pipeline.unet)
    assert guided < 0.85 * distance(teacher) and guided < 0.8 * anchored, (
        guided,
        anchored,
        distance(teacher),
    )
    with pytest.raises(ValueError, match="negative_guidance"):
        DoCoConfig(negative_guidance=1.0)  # the discriminator's run has no such target
