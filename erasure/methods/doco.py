"""DoCo: concept domain correction with a concept-preserving gradient (Wu et al., AAAI 2025, arXiv 2405.15304).

Only the UNet's cross-attention key/value projections (`attn2.to_k`, `attn2.to_v`) train; the text encoder, the
VAE and a frozen copy of the original UNet (the teacher) do not. Anchor images are generated once by the frozen
pipeline from anchor prompts. Each step: anchor latents are noised to x_t; the teacher sees the anchor prompt,
the trainable UNet the target prompt; both noise predictions become predicted clean latents x0 (scheduler).
After the discriminator's warm-up the UNet steps on g_a, the gradient of BCE(D(x0_target), 0) (pull the concept
into the anchor's domain), corrected by g_b, the gradient of the prior-preservation loss (standard diffusion loss
on anchor latents with anchor prompts). Then the PatchGAN D steps on BCE(D(x0_anchor), 0) + BCE(D(x0_target), 1).

How g_b enters the update, as in the official code (gradient_clip.adjust_gradient, train.py): with surgery, g_a
and g_b are each clipped to `max_grad_norm`, g_a is corrected per tensor where cos(g_a, g_b) < 0, and only the
corrected g_a is applied; g_b steers the update but is not added. Without surgery ('none') the official loss is
L_adv + 0.1 L_prior: g_a + prior_weight * g_b, clipped together. The 'normalized' rule removes lambda|cos| times
the *unit* vector g_b/|g_b| whatever |g_a| is; 'pcgrad' removes exactly g_a's conflicting component.

The retain spring (`retain_weight` > 0; not in the paper, on by default on Canvas) keeps the keys and values that
the request's retain prompts (the other concepts' captions) produce: per projection W with original W0 and C the
retain prompts' token embeddings (every position, or with `spring_tokens='content'` only the prompts' own tokens, so
that the few content words are not outweighed by the padding), L_r = |(W - W0) C|^2 / |W0 C|^2, whose gradient 2 (W
- W0) C^T C / |W0 C|^2 is added, times `retain_weight`, to every update. Every other prompt token's keys and values
then stay near the original's, and with them the UNet's output for other concepts: the shared K/V drift that
otherwise shows up as lower IRA/CRA and a larger FD on the rest of the world. In a chain (an erasure on top of an
earlier one), `hold_erased` > 0 adds the same spring, with its own weight, on the captions of the concepts erased
before: their keys and values stay where the earlier erasure put them, so the new erasure does not bring them back.
`hold_anchors` > 0 adds it on the anchor's own captions (the pairs' anchor prompts): the erasure pulls each
concept into the anchor's domain, and the anchor's captions, which share their object words with the concept's,
must not drift towards the concept instead (on Canvas the anchor 'plain' is also among the retain prompts, but
there one style of many).

Robust DoCo (`robust=True`; not in the paper): every `robust_every` UNet updates, an inner attack
(erasure/methods/adversaries.py) finds soft-prompt and inverted-token embeddings that make the current UNet draw
the concept again, and in `robust_share` of the target samples those embeddings' hidden states replace the target
prompt's, so domain correction also pulls what an attacker would reach into the anchor's domain, as AdvUnlearn and
STEREO do with their own erasers. Keys and values alone may not be able to remove what the UNet can still draw from
a new embedding: `trainable` widens the trained set (ESD's 'xattn' and 'noxattn', or 'full'); the retain spring
then holds the key/value projections among them, the prior loss and the surgery the rest.

Retain distillation (`retain_distill` > 0; not in the paper) holds any trained set, not only keys and values:
`num_retain_images` images of the retain prompts are generated once by the frozen pipeline, and every UNet
update adds `retain_distill` times the (clipped) gradient of |eps_student(x_t, c) - eps_teacher(x_t, c)|^2 on
noised retain images x_t with their own captions c, so the rest of the world keeps the teacher's denoiser.

`salient_share` < 1 (not in the paper; SalUn's weight saliency, Fan et al., ICLR 2024): before training, the
trained entries are ranked by the magnitude of the erasing loss's gradient (noise matching, `saliency_batches`
batches of the erasing latents) and only the top share may change; the rest keep the original's values. A wide
trained set then changes only the weights that matter most to the concept.

`adversarial=False` is the ablation without the discriminator: g_a comes from matching the trainable UNet's noise
prediction for the target prompt to the teacher's for the anchor prompt (Concept Ablation, model-based), with
the same schedule of UNet updates and the same surgery.

`negative_guidance` > 0 (with `adversarial=False`; not in the paper) takes ESD's target instead of the anchor's
prediction: the frozen teacher on the target prompt, guided away from the empty prompt by eta,
eps*(x_t, '') - eta (eps*(x_t, c) - eps*(x_t, '')); with the inner attack, the adversarial prompts are trained
towards the same target, as AdvUnlearn does. A stable signal that does not depend on winning a GAN game.

`erase_on='concept'` (not in the paper) noises the concept's own renders (the frozen pipeline's images of the
target prompts, generated once like the anchors) for the erasing step and the inner attack, instead of the
anchor images: the states a sampler passes through when it draws the concept, which is where a UNet trained
outside the key/value projections has to learn to draw something else. The prior loss keeps the anchor images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from erasure.methods.adversaries import ATTACK_TYPES, AdversarialPrompts
from erasure.methods.base import (
    AnchorData,
    TrainableSet,
    cross_attention_kv,
    frozen_teacher_and_student,
    pipeline_with_unet,
    predicted_x0,
    unet_parameters,
)
from erasure.methods.config import AnchorImagesConfig, option
from erasure.methods.doco_parts import (
    PatchDiscriminator,
    RetainSpring,
    SurgeryRule,
    clip_gradients,
    saliency_masks,
    surgery,
)
from erasure.methods.esd import esd_target
from pipelines.conditioning import encode_prompts, noise_prediction, prompt_token_mask
from pipelines.diffusion import diffusion_target


@dataclass
class DoCoConfig(AnchorImagesConfig):
    """DoCo's settings. The field defaults are the official SD 1.x ones for a style (repo README / scripts);
    `DoCoConfig.sd("object")` and `DoCoConfig.canvas(kind)` give the others."""

    method_name: ClassVar[str] = "DoCo"

    steps: int = option(2000, "total steps, discriminator warm-up included")
    d_warmup: int = option(1000, "steps in which only the discriminator trains")
    batch_size: int = option(8, "target samples per step, plus as many prior-preservation samples")
    learning_rate: float = option(6e-6, "UNet (K/V) AdamW learning rate, before scaling")
    scale_lr: bool = option(
        True, "multiply the learning rate by batch_size x processes (official --scale_lr)"
    )
    weight_decay: float = option(1e-2, "AdamW weight decay on the K/V tensors (diffusers' training scripts)")
    max_grad_norm: float = option(1.0, "each gradient is clipped to this norm before surgery")
    d_learning_rate: float = option(5e-4, "discriminator Adam learning rate: 5e-4 style, 1e-4 object")
    d_betas: tuple[float, float] = option((0.5, 0.999), "discriminator Adam betas")
    surgery: SurgeryRule = option(
        "normalized", "'normalized' (official code now), 'pcgrad' (exact, first release) or 'none'"
    )
    surgery_lambda: float = option(1.0, "lambda of the gradient surgery: 1 for styles, 0.5 for objects")
    prior_weight: float = option(
        0.1, "weight of g_b added to the update when surgery='none' (official 1.0 x 0.1)"
    )
    retain_weight: float = option(
        0.0, "weight of the key/value retain spring (0 = off, as the official code)"
    )
    hold_erased: float = option(
        0.0, "weight of a second spring on the captions of concepts erased before (chains; 0 = off)"
    )
    hold_anchors: float = option(
        0.0, "weight of a third spring on the anchor's own captions, the pairs' anchor prompts (0 = off)"
    )
    spring_tokens: str = option(
        "all", "token positions the springs hold: 'all' 77 or 'content' (the prompts' own, padding left out)"
    )
    adversarial: bool = option(
        True, "False: noise matching to the teacher instead of the discriminator (ablation)"
    )
    negative_guidance: float = option(
        0.0,
        "with adversarial=False, > 0: ESD's negatively guided target with this eta instead of the anchor's",
    )
    erase_on: str = option(
        "anchor", "latents the erasing step and the inner attack noise: 'anchor' (the paper's) or 'concept'"
    )
    discriminator_per_concept: bool = option(
        False, "one discriminator head per erased concept on a shared trunk (not in the paper; k > 1 only)"
    )
    num_anchor_images: int = option(1000, "anchor images generated once by the frozen pipeline")
    retain_distill: float = option(
        0.0, "weight of the retain distillation gradient (module docstring; 0 = off, as the paper)"
    )
    num_retain_images: int = option(
        64, "retain images generated once by the frozen pipeline, for distillation"
    )
    salient_share: float = option(
        1.0, "share of the trained entries that may change, the most salient to the erasing loss (1 = all)"
    )
    saliency_batches: int = option(
        8, "batches of the erasing loss whose gradient magnitudes rank the entries"
    )
    gradient_checkpointing: bool = option(False, "trade compute for memory in the trainable UNet")
    trainable: TrainableSet = option(
        "kv", "UNet parameters that train: 'kv' (the paper's), 'xattn', 'noxattn' or 'full' (TrainableSet)"
    )
    robust: bool = option(False, "put the inner attack in the loop (module docstring; not in the paper)")
    robust_attacks: tuple[str, ...] = option(
        ("soft", "inversion"),
        "inner attack types: 'soft' prefix embeddings, 'inversion' of the concept's token",
    )
    robust_tokens: int = option(
        3, "soft prefix embeddings per prompt (UnlearnDiffAtk's 3 for styles/objects)"
    )
    robust_every: int = option(10, "UNet updates between two refreshes of the inner attack")
    robust_iterations: int = option(10, "Adam iterations of the inner attack per refresh")
    robust_prompts: int = option(4, "prompt pairs attacked per refresh and attack type")
    robust_lr: float = option(0.01, "Adam learning rate of the inner attack's embeddings (soft's)")
    robust_share: float = option(
        0.5, "share of target samples whose prompt is replaced by an adversarial embedding found so far"
    )

    def __post_init__(self):
        super().__post_init__()
        self.d_betas = tuple(self.d_betas)
        self.robust_attacks = tuple(self.robust_attacks)
        for attack in self.robust_attacks:
            if attack not in ATTACK_TYPES:
                raise ValueError(f"robust_attacks must be among {', '.join(ATTACK_TYPES)}, not {attack!r}.")
        if not 0.0 < self.salient_share <= 1.0:
            raise ValueError(f"salient_share must be within (0, 1], not {self.salient_share}.")
        if self.spring_tokens not in ("all", "content"):
            raise ValueError(f"spring_tokens must be 'all' or 'content', not {self.spring_tokens!r}.")
        if self.erase_on not in ("anchor", "concept"):
            raise ValueError(f"erase_on must be 'anchor' or 'concept', not {self.erase_on!r}.")
        if self.negative_guidance < 0 or (self.negative_guidance > 0 and self.adversarial):
            raise ValueError("negative_guidance must be 0, or positive with adversarial=False.")
        if not 0.0 <= self.robust_share <= 1.0:
            raise ValueError(f"robust_share must be within [0, 1], not {self.robust_share}.")

    @classmethod
    def sd(cls, kind: str = "style") -> DoCoConfig:
        """Official SD 1.4 settings: D lr 5e-4 and lambda 1 for styles, D lr 1e-4 and lambda 0.5 for objects."""
        return cls() if kind == "style" else cls(d_learning_rate=1e-4, surgery_lambda=0.5)

    @classmethod
    def canvas(cls, kind: str = "style") -> DoCoConfig:
        """Canvas-sd on 2 CPU cores: one erasure in about 2-2.5 minutes, anchor generation included.

        280 UNet updates after a 70-step warm-up instead of the official 1000, so a ~3x larger learning rate
        and a 2x larger discriminator rate; 64 anchor images cover every caption pair about once; the retain
        spring is on. How each figure was measured: docs/methods.md.
        """
        return replace(
            cls.sd(kind).with_canvas_anchor_images(),
            steps=350,
            d_warmup=70,
            learning_rate=2e-5,
            d_learning_rate=1e-3 if kind == "style" else 2e-4,
            checkpoint_every=100,
            retain_weight=10.0,
        )

    def for_concepts(self, concepts: int) -> DoCoConfig:
        """k concepts at once: k times the anchor images and ceil(sqrt(k)) times the steps (the warm-up keeps its
        share). A single run's steps shared by k concepts leave them drawn; k times its updates erase no more and
        cost the rest of the world more (docs/scale.md)."""
        scaled = super().for_concepts(concepts)
        return scaled.with_steps(self.steps * math.ceil(math.sqrt(max(1, concepts))))

    def with_steps(self, steps: int) -> DoCoConfig:
        """The same schedule over `steps` steps: the warm-up keeps its share of the run."""
        return replace(self, steps=steps, d_warmup=round(steps * self.d_warmup / max(self.steps, 1)))

    def unet_passes(self) -> dict[str, float]:
        """Single-sample UNet passes of a run, anchor generation (with guidance) included: the compute that peers
        are given at least as much of. Warm-up steps: teacher + target forwards; UNet steps: teacher, prior and
        target forwards, prior and target backwards."""
        updates = self.steps - self.d_warmup
        generation = self.num_anchor_images * self.anchor_steps * 2 * (2 if self.erase_on == "concept" else 1)
        forward = generation + self.d_warmup * 2 * self.batch_size + updates * 3 * self.batch_size
        backward = updates * 2 * self.batch_size
        if self.negative_guidance > 0:  # ESD's target: teacher forwards on the empty and the target prompt
            forward += updates * 2 * self.batch_size
        # Retain distillation: the retain images once; then teacher and student forwards, a student backward.
        if self.retain_distill > 0:
            forward += self.num_retain_images * self.anchor_steps * 2 + updates * 2 * self.batch_size
            backward += updates * self.batch_size
        # Saliency's ranking: teacher and student forwards, a student backward per sample.
        if self.salient_share < 1.0:
            forward += self.saliency_batches * self.batch_size * 2
            backward += self.saliency_batches * self.batch_size
        if self.robust:  # each attack iteration: teacher and student forwards, a student backward
            attacked = math.ceil(updates / self.robust_every) * len(self.robust_attacks) * self.robust_prompts
            forward += attacked * self.robust_iterations * 2
            backward += attacked * self.robust_iterations
        return {"forward": float(forward), "backward": float(backward)}


def run(pipeline, request, config: DoCoConfig, session):
    """Train DoCo on `pipeline` for `request`; returns a new pipeline sharing every component but the UNet.

    `session` is the engine's `erasure.engine.session.TrainingRun` (accelerator, generator, progress, checkpoints).
    """
    accelerator, device = session.accelerator, session.device

    # 1. Models: the input UNet becomes the frozen teacher; a copy trains its attn2 key/value projections only
    # (or the wider `trainable` set).
    teacher, unet, params = frozen_teacher_and_student(
        pipeline, device, lambda student: unet_parameters(student, config.trainable)
    )
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config, clip_sample=False, thresholding=False)

    # 2. Data: anchor latents (generated once by the frozen pipeline, see AnchorData) and the text-encoder states
    # of every (target, anchor) prompt pair.
    anchors = AnchorData(pipeline, request, config, session, scheduler)
    erasing = anchors
    if config.erase_on == "concept":
        erasing = AnchorData(pipeline, request, config, session, scheduler, "target")
    target_emb = encode_prompts(pipeline, request.target_prompts, device)
    uncond_emb = encode_prompts(pipeline, [""], device) if config.negative_guidance > 0 else None
    anchor_emb = encode_prompts(pipeline, request.anchor_prompts, device)
    spring = retain = None
    kv = {n: p for n, p in cross_attention_kv(teacher).items() if n in params}  # what the spring can hold
    use_spring = config.retain_weight > 0 and request.retain_prompts and kv
    if use_spring or (config.retain_distill > 0 and request.retain_prompts):
        retain_emb = encode_prompts(pipeline, request.retain_prompts, device)

    def spring_on(prompts, hidden):
        mask = prompt_token_mask(pipeline, prompts) if config.spring_tokens == "content" else None
        return RetainSpring(kv, hidden, mask)

    if use_spring:
        spring = spring_on(request.retain_prompts, retain_emb.hidden)
    held = None
    if config.hold_erased > 0 and request.erased_prompts and kv:
        erased = request.erased_prompts
        held = spring_on(erased, encode_prompts(pipeline, erased, device).hidden)
    if config.retain_distill > 0 and request.retain_prompts:
        retain = AnchorData(pipeline, request, config, session, scheduler, "retain", config.num_retain_images)
    anchored = None
    if config.hold_anchors > 0 and kv:
        own = list(dict.fromkeys(request.anchor_prompts))
        anchored = spring_on(own, encode_prompts(pipeline, own, device).hidden)
    adversaries = None
    if config.robust:
        adversaries = AdversarialPrompts(
            pipeline, request, config.robust_attacks, config.robust_tokens, device, session.generator
        )

    # Saliency (`salient_share` < 1): rank the trained entries by the magnitude of the erasing loss's gradient
    # (noise matching of the target prompt to the teacher's anchor prediction, on the erasing latents) before
    # training; only the top share may change.
    masks = None
    if config.salient_share < 1.0:
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        for _ in range(config.saliency_batches):
            _, _, t, x_t, k = erasing.batch(config.batch_size, config.hflip)
            with torch.no_grad():
                goal = noise_prediction(teacher, x_t, t, anchor_emb[k])
            loss = F.mse_loss(noise_prediction(unet, x_t, t, target_emb[k]), goal)
            for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
                total[n] += g
        masks = saliency_masks(total, config.salient_share)
        original = dict(teacher.named_parameters())  # what the entries outside the masks keep

    # 3. Discriminator and optimizers. Models are not DDP-wrapped: each step runs two backward passes (surgery)
    # and separate real/fake discriminator batches, so gradients are averaged across processes explicitly.
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the global RNG alone
        torch.manual_seed(session.seed)
        heads = len(request.concepts) if config.discriminator_per_concept else 1
        disc = PatchDiscriminator(anchors.latents.shape[1], min(anchors.latents.shape[-2:]), heads=heads)
        disc = disc.to(device).train()
    # The head that judges each prompt pair: its concept's (every pair the one head's when there is one).
    pair_head = torch.tensor(
        [request.concepts.index(c) if heads > 1 else 0 for c in request.pair_concepts], device=device
    )
    lr = config.learning_rate * (config.batch_size * accelerator.num_processes if config.scale_lr else 1)
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=config.weight_decay)
    optimizer_d = torch.optim.Adam(disc.parameters(), lr=config.d_learning_rate, betas=config.d_betas)
    optimizer, optimizer_d = accelerator.prepare(optimizer, optimizer_d)
    state = {f"unet.{n}": p for n, p in params.items()}
    state.update({f"discriminator.{n}": t for n, t in disc.state_dict().items()})
    if adversaries is not None:
        state.update(adversaries.state())
    session.track(state, {"unet": optimizer, "discriminator": optimizer_d})

    def sample_batch():
        return anchors.batch(config.batch_size, config.hflip)

    def gradients(loss) -> list[torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grads = [accelerator.reduce(p.grad, "mean") for p in params.values()]
        return grads if masks is None else [g * masks[n] for n, g in zip(params, grads)]

    def bce(logits, label: float):
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))

    # 4. The loop.
    for step in range(session.start_step(), config.steps):
        update_unet = step >= config.d_warmup
        if not config.adversarial and not update_unet:
            session.end_step(step, {})  # the ablation keeps DoCo's schedule of UNet updates; no discriminator
            continue
        losses = {}
        if adversaries is not None and update_unet and (step - config.d_warmup) % config.robust_every == 0:
            losses["attack"] = adversaries.refresh(
                unet,
                teacher,
                erasing,
                target_emb,
                config.robust_prompts,
                config.robust_iterations,
                config.robust_lr,
                session.generator,
            )
        _, _, t, x_t, k = erasing.batch(config.batch_size, config.hflip)
        emb_target = target_emb[k]
        if adversaries is not None and update_unet:
            emb_target = adversaries.mix(target_emb, k, config.robust_share, session.generator)
        with torch.no_grad(), accelerator.autocast():
            eps_anchor = noise_prediction(teacher, x_t, t, anchor_emb[k])
        x0_anchor = predicted_x0(scheduler, eps_anchor, t, x_t)

        if update_unet:
            # Prior preservation: the standard diffusion loss on other anchor latents with their anchor prompts.
            x0_p, noise_p, t_p, x_p, k_p = sample_batch()
            with accelerator.autocast():
                pred_p = noise_prediction(unet, x_p, t_p, anchor_emb[k_p])
            prior_loss = F.mse_loss(pred_p, diffusion_target(scheduler, x0_p, noise_p, t_p))
            g_b = gradients(prior_loss)

        with torch.set_grad_enabled(update_unet), accelerator.autocast():
            eps_target = noise_prediction(unet, x_t, t, emb_target)
        x0_target = predicted_x0(scheduler, eps_target, t, x_t)

        if update_unet:
            if config.adversarial:
                erase_loss = bce(
                    disc(x0_target, pair_head[k]), 0.0
                )  # the target's outputs should look like the anchor's
            elif config.negative_guidance > 0:
                with accelerator.autocast():
                    goal = esd_target(teacher, x_t, t, target_emb[k], uncond_emb, config.negative_guidance)
                erase_loss = F.mse_loss(eps_target, goal)
            else:
                erase_loss = F.mse_loss(eps_target, eps_anchor)
            g_a = gradients(erase_loss)
            if config.surgery == "none":
                update = clip_gradients(
                    [a + config.prior_weight * b for a, b in zip(g_a, g_b)], config.max_grad_norm
                )
            else:
                g_a, g_b = (
                    clip_gradients(g_a, config.max_grad_norm),
                    clip_gradients(g_b, config.max_grad_norm),
                )
                update = [surgery(a, b, config.surgery, config.surgery_lambda) for a, b in zip(g_a, g_b)]
            for name, each, weight in (
                ("retain", spring, config.retain_weight),
                ("held", held, config.hold_erased),
                ("anchors", anchored, config.hold_anchors),
            ):
                if each is not None:
                    pull = each.gradients(params)
                    update = [
                        u + weight * pull[n].to(u.dtype) if n in pull else u for n, u in zip(params, update)
                    ]
                    losses[name] = each.loss(params)
            if retain is not None:
                _, _, t_r, x_r, k_r = retain.batch(config.batch_size, config.hflip)
                with torch.no_grad(), accelerator.autocast():
                    eps_kept = noise_prediction(teacher, x_r, t_r, retain_emb[k_r])
                with accelerator.autocast():
                    eps_r = noise_prediction(unet, x_r, t_r, retain_emb[k_r])
                distill_loss = F.mse_loss(eps_r, eps_kept)
                g_r = clip_gradients(gradients(distill_loss), config.max_grad_norm)
                update = [u + config.retain_distill * r for u, r in zip(update, g_r)]
                losses["distill"] = distill_loss.item()
            for p, g in zip(params.values(), update):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if masks is not None:  # AdamW's weight decay would move the frozen entries too
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(torch.where(masks[n], p, original[n]))
            losses.update(erase=erase_loss.item(), prior=prior_loss.item())

        if config.adversarial:
            # Discriminator: anchor x0 -> 0 (real), target x0 -> 1.
            head = pair_head[k]
            d_loss = bce(disc(x0_anchor, head), 0.0) + bce(disc(x0_target.detach(), head), 1.0)
            optimizer_d.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            for p in disc.parameters():
                p.grad = accelerator.reduce(p.grad, "mean")
            optimizer_d.step()
            losses["d"] = d_loss.item()
        session.end_step(step, losses)

    if config.gradient_checkpointing:
        unet.disable_gradient_checkpointing()
    return pipeline_with_unet(pipeline, unet)
