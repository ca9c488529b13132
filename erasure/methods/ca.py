"""Concept Ablation, model-based (Kumari et al., ICCV 2023; official code nupurkmr9/concept-ablation).

Only the UNet's cross-attention key/value projections (`attn2.to_k`, `attn2.to_v`; the code's `cross-attn` group)
train. Anchor images are generated once by the frozen pipeline from anchor prompts. Each step noises anchor latents
to x_t and matches the trainable UNet's prediction for the *target* prompt to the anchor prompt's prediction:

    loss = MSE(eps(x_t, target prompt), eps_anchor(x_t, anchor prompt).detach())

`anchor_teacher="frozen"` takes eps_anchor from a frozen copy of the original UNet (as DESIGN.md states the
method); the official diffusers script computes it with the UNet being trained under no_grad ('current'); with
K/V-only training and a small learning rate the two stay close. With `prior_preservation` the standard diffusion
loss on other anchor latents with their anchor prompts is added (weight `prior_weight`), and, as in the official
script, the learning rate doubles. Gradients are clipped to `max_grad_norm`; AdamW with the script's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from erasure.methods.base import (
    AnchorData,
    cross_attention_kv,
    frozen_teacher_and_student,
    pipeline_with_unet,
)
from erasure.methods.config import AnchorImagesConfig, option
from pipelines.conditioning import encode_prompts, noise_prediction
from pipelines.diffusion import diffusion_target


@dataclass
class CAConfig(AnchorImagesConfig):
    """Concept Ablation's settings. The field defaults are the official SD 1.4 ones for styles and objects (diffusers
    README: 100 steps on 2 GPUs (200 on one), batch 4 per GPU, lr 2e-6 with --scale_lr, --hflip, cross-attn K/V,
    model-based loss; train.py: AdamW betas (0.9, 0.999), weight decay 1e-2, max_grad_norm 1, 200 generated anchor
    images (1000 in the paper), prior preservation off except for instances like 'grumpy cat')."""

    method_name: ClassVar[str] = "Concept Ablation"

    steps: int = option(200, "optimizer steps: the single-GPU figure of 100 steps x 2 GPUs of batch 4")
    batch_size: int = option(4, "noised anchor latents per step")
    learning_rate: float = option(2e-6, "AdamW learning rate, before scaling")
    scale_lr: bool = option(
        True, "multiply by batch_size x processes (x2 with prior preservation, as the script)"
    )
    weight_decay: float = option(1e-2, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    anchor_teacher: Literal["frozen", "current"] = option(
        "frozen", "'frozen' (original UNet) or 'current' (official script: the trained UNet under no_grad)"
    )
    prior_preservation: bool = option(False, "add the diffusion loss on anchor latents with anchor prompts")
    prior_weight: float = option(1.0, "weight of the prior-preservation loss")

    @classmethod
    def canvas(cls, kind: str = "style") -> CAConfig:
        """Canvas-sd, with at least DoCo's canvas compute (`DoCoConfig.canvas`), counted in single-sample UNet
        passes: the same 64 anchor images and 560 steps of batch 8 (11520 forwards, 4480 backwards), at a
        learning rate of 1e-4 before batch scaling. How each figure was measured: docs/methods.md.
        """
        return replace(
            cls.sd(kind).with_canvas_anchor_images(),
            steps=560,
            batch_size=8,
            learning_rate=1e-4,
            checkpoint_every=100,
        )

    def unet_passes(self) -> dict[str, float]:
        """Single-sample UNet passes of a run (anchor generation included): {'forward': ..., 'backward': ...}."""
        per_step = self.batch_size * (2 if self.prior_preservation else 1)
        generation = self.num_anchor_images * self.anchor_steps * 2
        return {
            "forward": float(generation + self.steps * (self.batch_size + per_step)),
            "backward": float(self.steps * per_step),
        }


def run(pipeline, request, config: CAConfig, session):
    """Train Concept Ablation on `pipeline` for `request`; returns a new pipeline sharing all but the UNet."""
    accelerator, device = session.accelerator, session.device

    # 1. Models: the input UNet is the frozen teacher; a copy trains its attn2 key/value projections only.
    teacher, unet, params = frozen_teacher_and_student(pipeline, device, cross_attention_kv)
    anchor_model = teacher if config.anchor_teacher == "frozen" else unet
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config, clip_sample=False, thresholding=False)

    # 2. Data: anchor latents (generated once by the frozen pipeline, see AnchorData) and the text-encoder states
    # of every (target, anchor) prompt pair.
    anchors = AnchorData(pipeline, request, config, session, scheduler)
    target_emb = encode_prompts(pipeline, request.target_prompts, device)
    anchor_emb = encode_prompts(pipeline, request.anchor_prompts, device)

    # 3. Optimizer: AdamW on K/V, the official script's learning-rate scaling.
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.batch_size * accelerator.num_processes * (2 if config.prior_preservation else 1)
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=config.weight_decay)
    optimizer = accelerator.prepare(optimizer)
    session.track({f"unet.{n}": p for n, p in params.items()}, {"unet": optimizer})

    def sample_batch():
        return anchors.batch(config.batch_size, config.hflip)

    # 4. The loop.
    for step in range(session.start_step(), config.steps):
        _, _, t, x_t, k = sample_batch()
        with torch.no_grad(), accelerator.autocast():
            eps_anchor = noise_prediction(anchor_model, x_t, t, anchor_emb[k])
        with accelerator.autocast():
            eps_target = noise_prediction(unet, x_t, t, target_emb[k])
        ablation_loss = F.mse_loss(eps_target, eps_anchor)
        loss, losses = ablation_loss, {"ablation": ablation_loss.item()}
        if config.prior_preservation:
            x0_p, noise_p, t_p, x_p, k_p = sample_batch()
            with accelerator.autocast():
                pred_p = noise_prediction(unet, x_p, t_p, anchor_emb[k_p])
            prior_loss = F.mse_loss(pred_p, diffusion_target(scheduler, x0_p, noise_p, t_p))
            loss = loss + config.prior_weight * prior_loss
            losses["prior"] = prior_loss.item()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        for p in params.values():
            p.grad = accelerator.reduce(p.grad, "mean")
        torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        session.end_step(step, losses)

    return pipeline_with_unet(pipeline, unet)
