"""AdvUnlearn: adversarial training for robust concept erasure (Zhang et al., NeurIPS 2024, OPTML-Group/AdvUnlearn).

A bi-level loop around ESD's objective. The text encoder trains (the paper's ablation found it the most robust and
the most transferable module to erase in); the UNet and the VAE stay frozen. Each iteration:

1. x_t: a partial DDIM generation of the concept's prompt c by the original model, stopped at a random step i,
   at the timestep t_i it has reached (ESD's data, `erasure.methods.esd.partial_generation`).
2. Attack (after `warmup` iterations, every `attack_every`): `attack_tokens` soft prefix embeddings are put in
   front of c, and `attack_steps` Adam steps move them so that the UNet, fed the *current* text encoder's states of
   "prefix + c", predicts what the original model predicts for c: the attacker brings the concept back. The
   prefix is warm-started from the previous attack ('latest', the official default).
3. Unlearning step: the current text encoder's states of "prefix + c" (plain c during the warm-up) should make
   the UNet predict ESD's negatively guided target eps*(x_t, '') - eta (eps*(x_t, c) - eps*(x_t, '')).
4. Retain step ('iter', the official default): for `retain_batch` retain prompts (the other concepts' captions,
   standing in for the paper's COCO object prompts), a partial generation x_r by the original model, and the
   current text encoder's states should give the UNet the original's prediction for them.

`train_method` names the official choices kept here: 'text_encoder_full' (every encoder layer) and
'text_encoder_layer0' (the first layer only); layer norms and token embeddings stay frozen, as the official
default (`--norm_layer` off; the prefix enters as input embeddings, never through the table).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from erasure.methods.config import MethodConfig, option
from erasure.methods.esd import esd_target, partial_generation
from pipelines.conditioning import (
    TextConditioning,
    conditioning_from_ids,
    encode_prompts,
    noise_prediction,
    text_encoders,
    tokenizers,
)
from pipelines.diffusion import tokenize
from pipelines.slots import SLOT, SlotPrompts

TextEncoderSet = Literal["text_encoder_full", "text_encoder_layer0"]


@dataclass
class AdvUnlearnConfig(MethodConfig):
    """AdvUnlearn's settings. The field defaults are the official SD 1.4 ones (train-scripts/AdvUnlearn.py:
    1000 iterations at lr 1e-5 with Adam, 200 warm-up iterations, a 1-token prefix attacked for 30 steps at lr
    1e-3 before every iteration, start guidance 3, negative guidance 1, DDIM 50, retain batch 5, one retain step
    per iteration); `AdvUnlearnConfig.canvas(kind)` gives the canvas-sd ones."""

    method_name: ClassVar[str] = "AdvUnlearn"

    steps: int = option(1000, "iterations, warm-up included (one unlearning and one retain step each)")
    warmup: int = option(200, "iterations on the plain concept prompt before the attack starts")
    learning_rate: float = option(1e-5, "Adam learning rate of the text encoder")
    train_method: TextEncoderSet = option(
        "text_encoder_full", "'text_encoder_full' (every encoder layer) or 'text_encoder_layer0'"
    )
    batch_size: int = option(1, "partial generations of the concept per iteration")
    negative_guidance: float = option(1.0, "eta of ESD's negatively guided target")
    sample_guidance: float = option(
        3.0, "classifier-free guidance of the partial generations ('start_guidance')"
    )
    ddim_steps: int = option(50, "DDIM schedule of the partial generations")
    attack_tokens: int = option(1, "soft prefix embeddings of the attack ('adv_prompt_num')")
    attack_steps: int = option(30, "Adam steps of each attack")
    attack_lr: float = option(1e-3, "Adam learning rate of the attack's embeddings")
    attack_every: int = option(1, "iterations between two attacks ('adv_prompt_update_step')")
    retain_batch: int = option(5, "retain prompts per retain step")
    use_request_prompts: bool = option(
        False, "False: the concept's name is the prompt c (paper); True: the request's target prompts"
    )

    def __post_init__(self):
        super().__post_init__()
        self.require_positive("ddim_steps", "attack_tokens", "attack_steps", "attack_every", "retain_batch")

    @classmethod
    def canvas(cls, kind: str = "style") -> AdvUnlearnConfig:
        """Canvas-sd: the world's captions as c, its 20-step schedule, 120 iterations of batch 4 (24 of warm-up)
        with 10 attack steps every 2 iterations, at 10x the official rates for the 8x fewer iterations; at
        least robust DoCo's canvas compute (`unet_passes`). Measured in docs/robust.md."""
        from erasure.canvas.sd_config import INFERENCE_STEPS

        return replace(
            cls(),
            steps=120,
            warmup=24,
            learning_rate=1e-4,
            batch_size=4,
            ddim_steps=INFERENCE_STEPS,
            attack_steps=10,
            attack_every=2,
            attack_lr=1e-2,
            retain_batch=4,
            use_request_prompts=True,
            checkpoint_every=40,
        )

    def with_steps(self, steps: int) -> AdvUnlearnConfig:
        """The same schedule over `steps` iterations: the warm-up keeps its share of the run."""
        return replace(self, steps=steps, warmup=round(steps * self.warmup / max(self.steps, 1)))

    def unet_passes(self) -> dict[str, float]:
        """Expected single-sample UNet passes: partial generations (two passes per step, guidance) and ESD's
        target for the concept, the attacks (the original's goal once, a forward and a backward per step), the
        unlearning step, and the retain step (generation, the original's prediction, forward and backward)."""
        mean_stop = (self.ddim_steps - 1) / 2
        attacks = max(0, self.steps - self.warmup) / self.attack_every
        concept = self.steps * self.batch_size * (2 * mean_stop + 2 + 1)
        retain = self.steps * self.retain_batch * (2 * mean_stop + 1 + 1)
        attack = attacks * self.batch_size * (1 + self.attack_steps)
        forward = concept + retain + attack
        backward = (
            self.steps * (self.batch_size + self.retain_batch) + attacks * self.batch_size * self.attack_steps
        )
        return {"forward": float(forward), "backward": float(backward)}


def text_encoder_parameters(text_encoder, which: str) -> dict[str, torch.nn.Parameter]:
    """The encoder-layer parameters of `which` ('text_encoder_full': every layer; 'text_encoder_layer0': the
    first), layer norms left out, by name."""
    params = {}
    for name, p in text_encoder.named_parameters():
        layer = re.search(r"(?:^|\.)encoder\.layers\.(\d+)\.", name)
        if layer is None or "layer_norm" in name:
            continue
        if which == "text_encoder_full" or (which == "text_encoder_layer0" and layer.group(1) == "0"):
            params[name] = p
    if not params:
        raise ValueError(f"the text encoder has no parameters in the trainable set {which!r}.")
    return params


def run(pipeline, request, config: AdvUnlearnConfig, session):
    """Train AdvUnlearn on `pipeline` for `request`; returns a new pipeline sharing every component but the text
    encoder(s): on SDXL both encoders train, and the prefix is one input embedding per encoder."""
    accelerator, device, gen = session.accelerator, session.device, session.generator

    # 1. Models: the UNet and the original text encoders frozen; a copy of each text encoder trains.
    originals = text_encoders(pipeline)
    for module in (pipeline.vae, *originals, pipeline.unet):
        module.requires_grad_(False).to(device)
    unet = pipeline.unet.eval()
    encoders = [copy.deepcopy(e).train() for e in originals]
    components = ["text_encoder", "text_encoder_2"][: len(encoders)]
    params = {
        f"{component}.{name}": p
        for component, encoder in zip(components, encoders)
        for name, p in text_encoder_parameters(encoder, config.train_method).items()
    }
    for p in params.values():
        p.requires_grad_(True)
    sampler = DDIMScheduler.from_config(pipeline.scheduler.config)
    sampler.set_timesteps(config.ddim_steps, device=device)

    # 2. Prompts: c (the concept's name, or the world captions), its prefixed form, the retain prompts.
    prompts = list(request.target_prompts) if config.use_request_prompts else list(request.concepts)
    retain = list(request.retain_prompts) or prompts
    plain_ids = [tokenize(pipeline, prompts, t).input_ids for t in tokenizers(pipeline)]
    retain_ids = [tokenize(pipeline, retain, t).input_ids for t in tokenizers(pipeline)]
    prefixed = SlotPrompts(
        pipeline, [" ".join([SLOT] * config.attack_tokens + [p]) for p in prompts], encoders
    )
    original_cond = encode_prompts(pipeline, prompts, device)
    original_retain = encode_prompts(pipeline, retain, device)
    uncond = encode_prompts(pipeline, [""], device)
    vocabulary = encoders[0].get_input_embeddings().weight.shape[0]
    start = torch.randint(vocabulary, (config.attack_tokens,), generator=gen, device=gen.device)
    prefix = prefixed.token_vectors(start).to(device).clone()

    def states(ids, rows) -> TextConditioning:
        """The trainable text encoders' conditioning of prompts `rows` of `ids` (one id tensor per tokenizer)."""
        return conditioning_from_ids(pipeline, [i[rows.cpu()] for i in ids], encoders)

    # 3. Optimizer (Adam, as the official script) and checkpoint state (the prefix included).
    optimizer = accelerator.prepare(torch.optim.Adam(list(params.values()), lr=config.learning_rate))
    state = dict(params)
    state["adversary.prefix"] = prefix
    session.track(state, {"text_encoder": optimizer})

    # 4. The loop.
    for step in range(session.start_step(), config.steps):
        losses = {}
        k = torch.randint(len(prompts), (config.batch_size,), generator=gen, device=gen.device)
        cond = original_cond[k.to(device)]
        with accelerator.autocast():
            x_t, t = partial_generation(unet, sampler, cond, uncond, config.sample_guidance, gen)
            target = esd_target(unet, x_t, t, cond, uncond, config.negative_guidance)
        attacking = step >= config.warmup
        if attacking and (step - config.warmup) % config.attack_every == 0:
            with torch.no_grad():
                goal = noise_prediction(unet, x_t, t, cond)
            vectors = prefix.clone().requires_grad_(True)
            attack_optimizer = torch.optim.Adam([vectors], lr=config.attack_lr)
            for encoder in encoders:
                encoder.requires_grad_(False)
            for _ in range(config.attack_steps):
                pred = noise_prediction(unet, x_t, t, prefixed.encode(vectors, k))
                attack_loss = F.mse_loss(pred, goal)
                (vectors.grad,) = torch.autograd.grad(attack_loss, [vectors])
                attack_optimizer.step()
            for p in params.values():
                p.requires_grad_(True)
            prefix.copy_(vectors.detach())
            losses["attack"] = attack_loss.item()

        # Unlearning: the (prefixed) concept prompt through the trainable encoder -> ESD's target.
        prompted = prefixed.encode(prefix, k) if attacking else states(plain_ids, k)
        with accelerator.autocast():
            loss = F.mse_loss(noise_prediction(unet, x_t, t, prompted), target)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        losses["esd"] = loss.item()

        # Retain: other prompts through the trainable encoder -> the original model's prediction.
        r = torch.randint(len(retain), (config.retain_batch,), generator=gen, device=gen.device)
        kept = original_retain[r.to(device)]
        with accelerator.autocast():
            x_r, t_r = partial_generation(unet, sampler, kept, uncond, config.sample_guidance, gen)
            with torch.no_grad():
                goal_r = noise_prediction(unet, x_r, t_r, kept)
            retain_loss = F.mse_loss(noise_prediction(unet, x_r, t_r, states(retain_ids, r)), goal_r)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(retain_loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses["retain"] = retain_loss.item()
        session.end_step(step, losses)

    for encoder in encoders:
        encoder.requires_grad_(False).eval()
    return type(pipeline).from_pipe(pipeline, **dict(zip(components, encoders)))
