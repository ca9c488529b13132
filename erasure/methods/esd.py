"""ESD: erasing concepts from diffusion models with negative guidance (Gandikota et al., ICCV 2023).

A frozen copy of the original UNet is the teacher; a trainable copy learns to predict, for the concept prompt c,
what the teacher would predict with the concept *negatively* guided:

    target = eps*(x_t, '') - eta * (eps*(x_t, c) - eps*(x_t, ''))        (eps* = frozen teacher)
    loss   = MSE(eps(x_t, c), target)                                      (eps  = trainable UNet)

x_t is not a noised training image: it comes from partial generation. Each iteration draws a stop index i in
[0, ddim_steps - 1], runs i DDIM steps (classifier-free guidance `sample_guidance`) from pure noise with the
*trainable* UNet and prompt c, and uses the DDIM timestep t_i the latent has reached (the one the sampler would
denoise next). The trainable model sampling its own x_t is the paper's Algorithm 1 and the CompVis training script
(`quick_sample_till_t` with the model being trained); the later diffusers script (esd_sd.py) samples with the
frozen model instead (`sample_with="frozen"`). The CompVis script queries the teacher at a DDPM timestep drawn
near i/ddim_steps * 1000, which is not the noise level x_t is at after i steps; like esd_sd.py we use t_i.

Trainable parameters (`train_method`), as named by the CompVis script: 'xattn' (ESD-x, styles: every parameter
of every cross-attention module), 'noxattn' (ESD-u, objects: every parameter outside cross-attention but the
time-embedding MLP and the output head) or 'full'; `erasure.methods.base.TrainableSet` defines each (and 'kv').
The text encoder and the VAE never train. ESD has no anchor: the concept is guided away from the unconditional
prediction, so `request.anchor` is recorded but unused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from erasure.methods.base import (
    TrainableSet,
    frozen_teacher_and_student,
    pipeline_with_unet,
    unet_parameters,
)
from erasure.methods.config import MethodConfig, option
from pipelines.conditioning import TextConditioning, encode_prompts, noise_prediction


@dataclass
class ESDConfig(MethodConfig):
    """ESD's settings. The field defaults are the paper's SD 1.4 ones for a style (ESD-x); `ESDConfig.sd("object")`
    gives ESD-u and `ESDConfig.canvas(kind)` the Canvas settings.

    Sources: the CompVis script behind the paper (README example 'compvis-word_VanGogh-method_xattn-sg_3-ng_1-
    iter_1000-lr_1e-05': 1000 iterations, lr 1e-5, start guidance 3, negative guidance 1, DDIM 50, batch 1, Adam);
    the later diffusers scripts default to 200 iterations with lr 2e-5 (esd_diffusers.py) or 5e-5 with negative
    guidance 2 (esd_sd.py).
    """

    method_name: ClassVar[str] = "ESD"

    steps: int = option(1000, "iterations (one optimizer step each)")
    batch_size: int = option(1, "partial generations per iteration")
    learning_rate: float = option(1e-5, "Adam learning rate")
    negative_guidance: float = option(1.0, "eta, the negative guidance of the teacher's target")
    train_method: TrainableSet = option(
        "xattn", "'xattn' (ESD-x) for styles, 'noxattn' (ESD-u) for objects, or 'full' (module docstring)"
    )
    ddim_steps: int = option(50, "DDIM schedule of the partial generation")
    sample_guidance: float = option(3.0, "classifier-free guidance while generating x_t ('start_guidance')")
    sample_with: Literal["trainable", "frozen"] = option(
        "trainable", "which UNet generates x_t: 'trainable' (paper, CompVis script) or 'frozen' (esd_sd.py)"
    )
    use_request_prompts: bool = option(
        False, "False: the concept's name is the prompt c (paper); True: the request's target prompts"
    )

    def __post_init__(self):
        super().__post_init__()
        self.require_positive("ddim_steps")

    @classmethod
    def sd(cls, kind: str = "style") -> ESDConfig:
        """The paper's SD 1.4 settings: ESD-x for styles, ESD-u for objects (same iterations and lr)."""
        return cls(train_method="xattn" if kind == "style" else "noxattn")

    @classmethod
    def canvas(cls, kind: str = "style") -> ESDConfig:
        """Canvas-sd, with at least DoCo's canvas compute (`DoCoConfig.canvas(kind).unet_passes()`), counted in
        forward-equivalent single-sample UNet passes (forwards + 2 x backwards, `base.forward_equivalents`):
        105 iterations of batch 8 on the concept's world captions (canvas-sd was trained on captions only), at
        lr 1e-4 for ESD-x and 5e-5 for ESD-u. How each figure was measured: docs/methods.md.
        """
        from erasure.canvas.sd_config import INFERENCE_STEPS

        return replace(
            cls.sd(kind),
            steps=105,
            batch_size=8,
            learning_rate=1e-4 if kind == "style" else 5e-5,
            ddim_steps=INFERENCE_STEPS,
            use_request_prompts=True,
            checkpoint_every=100,
        )

    def unet_passes(self) -> dict[str, float]:
        """Expected single-sample UNet passes of a run: {'forward': ..., 'backward': ...}."""
        samples = self.steps * self.batch_size
        mean_stop = (self.ddim_steps - 1) / 2
        return {"forward": samples * (2 * mean_stop + 3), "backward": float(samples)}


@torch.no_grad()
def sample_until(unet, scheduler, latents, cond, uncond, stop: int, guidance: float) -> torch.Tensor:
    """Run the first `stop` steps of `scheduler`'s DDIM schedule from `latents` with classifier-free guidance.

    `cond` has B rows, `uncond` one (TextConditioning); `scheduler.set_timesteps` must have been called. The same update as
    StableDiffusionPipeline's loop (eta 0): after `stop` steps the latent is at timestep `scheduler.timesteps[stop]`.
    """
    context = TextConditioning.cat([uncond.expand(len(latents)), cond])
    for t in scheduler.timesteps[:stop]:
        x_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        eps_uncond, eps_cond = noise_prediction(unet, x_in, t, context).chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def partial_generation(
    unet, sampler, cond, uncond, guidance: float, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """ESD's x_t: a stop index i drawn uniformly from the sampler's schedule, fresh noise, and `sample_until` for i
    steps; returns (x_t, the timestep t_i it has reached, one per row of `cond`)."""
    steps = len(sampler.timesteps)
    stop = int(torch.randint(steps, (1,), generator=generator, device=generator.device))
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    noise = torch.randn(
        (len(cond), unet.config.in_channels, *size), generator=generator, device=generator.device
    )
    noise = noise.to(cond.hidden.device) * sampler.init_noise_sigma
    x_t = sample_until(unet, sampler, noise, cond, uncond, stop, guidance)
    return x_t, sampler.timesteps[stop].expand(len(cond))


@torch.no_grad()
def esd_target(teacher, x_t, t, cond, uncond, negative_guidance: float) -> torch.Tensor:
    """eps*(x_t, '') - eta * (eps*(x_t, c) - eps*(x_t, '')): the frozen teacher, negatively guided."""
    t = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim else t
    context = TextConditioning.cat([uncond.expand(len(x_t)), cond])
    eps_uncond, eps_cond = noise_prediction(teacher, torch.cat([x_t, x_t]), t, context).chunk(2)
    return eps_uncond - negative_guidance * (eps_cond - eps_uncond)


def run(pipeline, request, config: ESDConfig, session):
    """Train ESD on `pipeline` for `request`; returns a new pipeline sharing every component but the UNet."""
    accelerator, device, gen = session.accelerator, session.device, session.generator

    # 1. Models: the input UNet becomes the frozen teacher; a copy trains the parameters of `train_method`.
    teacher, unet, params = frozen_teacher_and_student(
        pipeline, device, lambda student: unet_parameters(student, config.train_method)
    )
    sampler = DDIMScheduler.from_config(pipeline.scheduler.config)
    sampler.set_timesteps(config.ddim_steps, device=device)
    sampling_unet = unet if config.sample_with == "trainable" else teacher

    # 2. Prompts: the concepts' names (paper), or the request's target prompts (Canvas: world captions).
    prompts = list(request.target_prompts) if config.use_request_prompts else list(request.concepts)
    cond_emb = encode_prompts(pipeline, prompts, device)
    uncond_emb = encode_prompts(pipeline, [""], device)

    # 3. Optimizer (Adam, as both official scripts) and checkpoint state.
    optimizer = accelerator.prepare(torch.optim.Adam(list(params.values()), lr=config.learning_rate))
    session.track({f"unet.{n}": p for n, p in params.items()}, {"unet": optimizer})

    # 4. The loop.
    for step in range(session.start_step(), config.steps):
        k = torch.randint(len(prompts), (config.batch_size,), generator=gen, device=device)
        cond = cond_emb[k]
        with accelerator.autocast():
            x_t, t = partial_generation(sampling_unet, sampler, cond, uncond_emb, config.sample_guidance, gen)
            target = esd_target(teacher, x_t, t, cond, uncond_emb, config.negative_guidance)
            pred = noise_prediction(unet, x_t, t, cond)
        loss = F.mse_loss(pred, target)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        for p in params.values():
            if p.grad is not None:
                p.grad = accelerator.reduce(p.grad, "mean")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        session.end_step(step, {"esd": loss.item()})

    return pipeline_with_unet(pipeline, unet)
