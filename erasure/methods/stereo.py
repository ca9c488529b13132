"""STEREO: search thoroughly enough, then robustly erase once (Srivatsan et al., CVPR 2025,
koushiksrivats/robust-concept-erasing).

Stage 1, STE: `rounds` times, erase the current concept from the current UNet with ESD's objective (x_t from a
partial generation by the model being trained, target eps(x_t, c) - (s - 1) (eps(x_t, c) - eps(x_t, '')) from the
model as it was at the round's start, s = `negative_guidance`), then attack the result with concept inversion: a
new token embedding learnt by textual inversion on a gallery of the concept's images (generated once by the
original pipeline from the concept's prompts, as the official code generates its gallery). The next round erases
that token. Every token found is kept.

Stage 2, REO: from the *original* UNet, erase the concept and the first `adversarial_tokens` tokens at once with
compositional guidance: x_t from a partial generation of one of them (in turn), target
    eps(x_t, '') + (-g - 1) mean_i (eps(x_t, neg_i) - eps(x_t, '')) + (g - 1) (eps(x_t, anchor) - eps(x_t, ''))
from the original model, g = `compositional_guidance`, one anchor concept per step (here: a retain prompt, the
other concepts' captions, standing in for the official anchor_prompts.json). The official code writes both
targets with adaptive projected guidance at eta 1 without momentum, which is this plain guidance.

The text encoder never trains: a token enters the prompt as an input embedding in the concept name's place
("a cat in <v> style"). The returned pipeline is REO's UNet; the tokens are the method's own attack, not shipped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from erasure.methods.adversaries import adversarial_template
from erasure.methods.base import (
    AnchorData,
    TrainableSet,
    frozen_teacher_and_student,
    pipeline_with_unet,
    unet_parameters,
)
from erasure.methods.config import AnchorImagesConfig, option
from erasure.methods.esd import partial_generation
from pipelines.conditioning import TextConditioning, encode_prompts, noise_prediction
from pipelines.diffusion import diffusion_target
from pipelines.slots import SlotPrompts


@dataclass
class STEREOConfig(AnchorImagesConfig):
    """STEREO's settings. The field defaults are the official SD 1.4 ones (train.py's arguments: 4 rounds of 200
    ESD iterations at lr 5e-6 with negative guidance 2, textual inversion for 3000 steps at lr 5e-3, REO for 200
    iterations at lr 2e-5 with compositional guidance 2 over 4 adversarial tokens; AdamW, DDIM 50, start guidance
    3, batch 1; the README's example uses 2 rounds and 2 tokens). The gallery is `num_anchor_images` images of
    the concept's prompts (the official README generates 500). `STEREOConfig.canvas(kind)` gives canvas-sd's."""

    method_name: ClassVar[str] = "STEREO"
    uniform_steps: ClassVar[bool] = False

    steps: int = option(
        1004, "session steps: rounds x (ste_steps + 1 inversion) + REO's iterations (the official 200)"
    )
    checkpoint_every: int = option(0, "0: STEREO runs its stages in one go, without checkpoints")
    rounds: int = option(4, "STE rounds of erasing then inverting ('n_iterations')")
    ste_steps: int = option(200, "erasing iterations per STE round ('iterations')")
    ste_learning_rate: float = option(5e-6, "AdamW learning rate of STE's erasing")
    learning_rate: float = option(2e-5, "AdamW learning rate of REO ('reo_lr')")
    negative_guidance: float = option(2.0, "s of STE's target e_c - (s - 1)(e_c - e_0)")
    compositional_guidance: float = option(2.0, "g of REO's compositional target (module docstring)")
    adversarial_tokens: int = option(
        4, "STE tokens erased in REO besides the concept ('num_of_adv_concepts')"
    )
    inversion_steps: int = option(3000, "textual-inversion steps per STE round ('ti_max_train_steps')")
    inversion_lr: float = option(5e-3, "AdamW learning rate of textual inversion ('ci_lr', x batch)")
    inversion_batch: int = option(1, "gallery images per textual-inversion step")
    initializer: str = option("art", "word whose embedding starts each token (official: person/object/art)")
    train_method: TrainableSet = option("noxattn", "UNet parameters that train (the README's 'noxattn')")
    batch_size: int = option(1, "partial generations per erasing iteration")
    ddim_steps: int = option(50, "DDIM schedule of the partial generations")
    sample_guidance: float = option(3.0, "classifier-free guidance of the partial generations")
    use_request_prompts: bool = option(
        False, "False: the concept's name is the prompt (paper); True: the request's target prompts"
    )

    def __post_init__(self):
        super().__post_init__()
        self.require_positive(
            "rounds", "ste_steps", "inversion_steps", "ddim_steps", "inversion_batch", "batch_size"
        )
        if self.reo_steps < 1:
            raise ValueError(
                f"steps ({self.steps}) must exceed rounds x (ste_steps + 1) = {self.steps - self.reo_steps}: "
                "the rest are REO's iterations."
            )

    @property
    def reo_steps(self) -> int:
        """REO's iterations: the session steps left after STE's rounds."""
        return self.steps - self.rounds * (self.ste_steps + 1)

    @classmethod
    def canvas(cls, kind: str = "style") -> STEREOConfig:
        """Canvas-sd: the world's captions, its 20-step schedule and 64 gallery images; 2 rounds (the README's
        example) of 40 erasing steps of batch 4 and 100 inversion steps of batch 8 (the audit's inversion rate),
        then 125 REO iterations of batch 4 over 2 tokens, at 5x the official erasing rates (as ESD-u's canvas rate);
        the initializer is 'art' for a style, 'object' for an object; at least robust DoCo's canvas compute
        (`unet_passes`). Measured in docs/robust.md."""
        from erasure.canvas.sd_config import INFERENCE_STEPS

        return replace(
            cls().with_canvas_anchor_images(),
            steps=2 * 41 + 125,
            rounds=2,
            ste_steps=40,
            ste_learning_rate=2.5e-5,
            learning_rate=1e-4,
            adversarial_tokens=2,
            inversion_steps=100,
            inversion_batch=8,
            initializer="art" if kind == "style" else "object",
            batch_size=4,
            ddim_steps=INFERENCE_STEPS,
            use_request_prompts=True,
        )

    def unet_passes(self) -> dict[str, float]:
        """Expected single-sample UNet passes: the gallery, then per erasing step a partial generation (two passes
        per step), the teacher's predictions and the student's forward and backward; per inversion step a
        forward and a backward."""
        generation = 2 * (self.ddim_steps - 1) / 2
        tokens = min(self.adversarial_tokens, self.rounds)
        ste = self.rounds * self.ste_steps * self.batch_size * (generation + 2 + 1)
        inversion = self.rounds * self.inversion_steps * self.inversion_batch
        reo = self.reo_steps * self.batch_size * (generation + 1 + (1 + tokens) + 1 + 1)
        forward = self.num_anchor_images * self.anchor_steps * 2 + ste + inversion + reo
        backward = (
            self.rounds * self.ste_steps * self.batch_size + inversion + self.reo_steps * self.batch_size
        )
        return {"forward": float(forward), "backward": float(backward)}


def compositional_target(e_uncond, e_negatives, e_anchor, guidance: float) -> torch.Tensor:
    """eps('') + (-g - 1) mean_i (eps(neg_i) - eps('')) + (g - 1) (eps(anchor) - eps('')): REO's target."""
    negative = torch.stack([e - e_uncond for e in e_negatives]).mean(0)
    return e_uncond + (-guidance - 1) * negative + (guidance - 1) * (e_anchor - e_uncond)


def run(pipeline, request, config: STEREOConfig, session):
    """Train STEREO on `pipeline` for `request`; returns a new pipeline sharing every component but the UNet."""
    accelerator, device, gen = session.accelerator, session.device, session.generator
    if config.checkpoint_every:
        raise ValueError("STEREO runs its stages in one go: checkpoint_every must be 0.")
    original, unet, params = frozen_teacher_and_student(
        pipeline, device, lambda student: unet_parameters(student, config.train_method)
    )
    sampler = DDIMScheduler.from_config(pipeline.scheduler.config)
    sampler.set_timesteps(config.ddim_steps, device=device)
    noising = DDPMScheduler.from_config(pipeline.scheduler.config)

    # Prompts: plain (concept named) and with the concept's name as a slot for a token.
    prompts = list(request.target_prompts) if config.use_request_prompts else list(request.concepts)
    named = request.pair_concepts if config.use_request_prompts else request.concepts
    slotted = [adversarial_template(p, c, "inversion", 1) for p, c in zip(prompts, named)]
    slot_prompts = SlotPrompts(pipeline, slotted)
    plain = encode_prompts(pipeline, prompts, device)
    uncond = encode_prompts(pipeline, [""], device)
    anchors = list(request.retain_prompts) or [""]
    anchor_emb = encode_prompts(pipeline, anchors, device)
    initializer = pipeline.tokenizer(config.initializer, add_special_tokens=False).input_ids[0]
    start = slot_prompts.token_vectors(torch.tensor(initializer)).to(device)
    gallery = AnchorData(
        pipeline, replace(request, anchor_prompts=prompts, anchor_latents=None), config, session, noising
    )

    def token_states(token: torch.Tensor, rows: torch.Tensor) -> TextConditioning:
        return slot_prompts.encode(token.unsqueeze(0), rows)

    def step_on(optimizer, loss):
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    session.start_step()
    tokens: list[torch.Tensor] = []
    step = 0

    # Stage 1: STE.
    for round_index in range(config.rounds):
        teacher = copy.deepcopy(unet).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(list(params.values()), lr=config.ste_learning_rate)
        for _ in range(config.ste_steps):
            k = torch.randint(len(prompts), (config.batch_size,), generator=gen, device=gen.device)
            cond = plain[k.to(device)] if not tokens else token_states(tokens[-1], k)
            with accelerator.autocast():
                x_t, t = partial_generation(unet, sampler, cond, uncond, config.sample_guidance, gen)
                with torch.no_grad():
                    e_cond = noise_prediction(teacher, x_t, t, cond)
                    e_uncond = noise_prediction(teacher, x_t, t, uncond.expand(len(k)))
                target = e_cond - (config.negative_guidance - 1) * (e_cond - e_uncond)
                loss = F.mse_loss(noise_prediction(unet, x_t, t, cond), target)
            step_on(optimizer, loss)
            session.end_step(step, {"ste": loss.item(), "round": round_index})
            step += 1
        del teacher

        # Concept inversion on the erased UNet: one new token from the gallery, its captions with the slot.
        token = start.clone().requires_grad_(True)
        inverter = torch.optim.AdamW([token], lr=config.inversion_lr * config.inversion_batch)
        unet.requires_grad_(False)
        for _ in range(config.inversion_steps):
            x0, noise, t, x_t, k = gallery.batch(config.inversion_batch, config.hflip)
            with accelerator.autocast():
                pred = noise_prediction(unet, x_t, t, token_states(token, k))
            loss = F.mse_loss(pred, diffusion_target(noising, x0, noise, t))
            (token.grad,) = torch.autograd.grad(loss, [token])
            inverter.step()
        for p in params.values():
            p.requires_grad_(True)
        tokens.append(token.detach())
        session.end_step(step, {"inversion": loss.item(), "round": round_index})
        step += 1

    # Stage 2: REO, from the original UNet, against the concept and the tokens found.
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(dict(original.named_parameters())[name])
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.learning_rate)
    erased = [None, *tokens[: config.adversarial_tokens]]  # None: the concept's own prompt
    for i in range(config.reo_steps):
        k = torch.randint(len(prompts), (config.batch_size,), generator=gen, device=gen.device)
        negatives = [plain[k.to(device)] if e is None else token_states(e, k) for e in erased]
        cond = negatives[i % len(erased)]
        a = torch.randint(len(anchors), (config.batch_size,), generator=gen, device=gen.device)
        with accelerator.autocast():
            x_t, t = partial_generation(unet, sampler, cond, uncond, config.sample_guidance, gen)
            with torch.no_grad():
                e_uncond = noise_prediction(original, x_t, t, uncond.expand(len(k)))
                e_negatives = [noise_prediction(original, x_t, t, n) for n in negatives]
                e_anchor = noise_prediction(original, x_t, t, anchor_emb[a.to(device)])
            target = compositional_target(e_uncond, e_negatives, e_anchor, config.compositional_guidance)
            loss = F.mse_loss(noise_prediction(unet, x_t, t, cond), target)
        step_on(optimizer, loss)
        session.end_step(step, {"reo": loss.item()})
        step += 1
    return pipeline_with_unet(pipeline, unet)
