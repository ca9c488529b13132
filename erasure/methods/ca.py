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

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.utils import logging as diffusers_logging

from erasure.methods.base import (
    AnchorData,
    cross_attention_kv,
    diffusion_target,
    encode_prompts,
)


@dataclass
class CAConfig:
    """Concept Ablation's settings. The field defaults are the official SD 1.4 ones for styles and objects (diffusers
    README: 100 steps on 2 GPUs (200 on one), batch 4 per GPU, lr 2e-6 with --scale_lr, --hflip, cross-attn K/V,
    model-based loss; train.py: AdamW betas (0.9, 0.999), weight decay 1e-2, max_grad_norm 1, 200 generated anchor
    images (1000 in the paper), prior preservation off except for instances like 'grumpy cat')."""

    steps: int = 200  # the single-GPU figure: 100 steps x 2 GPUs of batch 4
    batch_size: int = 4
    learning_rate: float = 2e-6  # before scaling
    scale_lr: bool = True  # multiply by batch_size x processes (x2 with prior preservation, as the script)
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    anchor_teacher: str = (
        "frozen"  # 'frozen' (original UNet) or 'current' (official: the trained UNet, no_grad)
    )
    prior_preservation: bool = False
    prior_weight: float = 1.0
    num_anchor_images: int = 200
    anchor_steps: int = 50  # the script samples anchor images with the pipeline's defaults
    anchor_guidance: float = 7.5
    anchor_batch: int = 8
    hflip: bool = True
    mixed_precision: str = "no"  # 'no' or 'bf16'
    checkpoint_every: int = 250
    divergence_factor: float = 100.0

    def __post_init__(self):
        if self.anchor_teacher not in ("frozen", "current"):
            raise ValueError(f"anchor_teacher must be 'frozen' or 'current', not {self.anchor_teacher!r}.")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"CA supports mixed_precision 'no' or 'bf16', not {self.mixed_precision!r}.")

    @classmethod
    def sd(cls, kind: str = "style") -> CAConfig:
        return cls()

    @classmethod
    def canvas(cls, kind: str = "style") -> CAConfig:
        """Canvas-sd, with at least DoCo's canvas compute (`DoCoConfig.canvas`), counted in single-sample UNet passes.

        DoCo: 10400 forwards (2560 of them generating 64 anchor images at 20 steps with guidance) and 4480
        backwards (280 UNet steps x (8 target + 8 prior)). CA: the same 64 anchor images (2560 forwards) and 560
        steps of batch 8: 560 x 16 = 8960 training forwards (anchor teacher + trainable) and 560 x 8 = 4480
        backwards; 11520 forwards in all. About 0.15-0.3 s per step on 2 busy cores: 2-3 minutes per concept.
        Learning rate 1e-4 before batch scaling (8e-4): at DoCo's 2e-5, van gogh (seed 0) kept UA 0 after 560
        steps, since noise matching must be near exact before classifier-free guidance (x5) stops amplifying the
        rest; at 1e-4, UA 100, IRA 95.5, CRA 99.6, FD 4.92 (base 3.58).
        """
        from erasure.canvas.sd_config import GUIDANCE_SCALE, INFERENCE_STEPS

        return replace(
            cls.sd(kind),
            steps=560,
            batch_size=8,
            learning_rate=1e-4,
            num_anchor_images=64,
            anchor_steps=INFERENCE_STEPS,
            anchor_guidance=GUIDANCE_SCALE,
            anchor_batch=32,
            checkpoint_every=100,
        )

    @classmethod
    def defaults(cls, kind: str, canvas: bool) -> CAConfig:
        return cls.canvas(kind) if canvas else cls.sd(kind)

    def with_steps(self, steps: int) -> CAConfig:
        return replace(self, steps=steps)

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
    for module in (pipeline.vae, pipeline.text_encoder, pipeline.unet):
        module.requires_grad_(False).to(device)
    teacher = pipeline.unet.eval()
    unet = copy.deepcopy(teacher).train()
    params = cross_attention_kv(unet)
    for p in params.values():
        p.requires_grad_(True)
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
            eps_anchor = anchor_model(x_t, t, encoder_hidden_states=anchor_emb[k]).sample.float()
        with accelerator.autocast():
            eps_target = unet(x_t, t, encoder_hidden_states=target_emb[k]).sample.float()
        ablation_loss = F.mse_loss(eps_target, eps_anchor)
        loss, losses = ablation_loss, {"ablation": ablation_loss.item()}
        if config.prior_preservation:
            x0_p, noise_p, t_p, x_p, k_p = sample_batch()
            with accelerator.autocast():
                pred_p = unet(x_p, t_p, encoder_hidden_states=anchor_emb[k_p]).sample.float()
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

    unet.requires_grad_(False).eval()
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # from_pipe's dtype pass warns about casting; nothing is cast
    try:
        return type(pipeline).from_pipe(pipeline, unet=unet)
    finally:
        diffusers_logging.set_verbosity(verbosity)
