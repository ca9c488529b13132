"""Concept inversion (Pham et al., ICLR 2024): textual inversion of one new word on the erased model.

The attacker has real images of the concept and the erased pipeline. One new token embedding v is learnt with the
ordinary textual-inversion objective, the erased model's own denoising loss on those images captioned with the
world's templates where v takes the concept's name ("a cat in <v> style"). Then the concept is asked for with v.
Only v changes; the pipeline's weights are untouched. The control is the same prompts with v at its starting
point, before any optimisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from erasure.options import option
from eval.attacks.base import (
    AttackConfig,
    AttackResult,
    Clock,
    asr_definition,
    attacked_and_control,
    concept_renders,
    denoising_loss,
    encode_images,
    eval_pairs,
    fill,
    fixed_loss,
    frozen,
    slot_templates,
    training_scheduler,
)
from pipelines.slots import SLOT, encode_with_slots, slot_ids


@dataclass
class InversionConfig(AttackConfig):
    """Pham et al. train SD 1.4's textual inversion for 1000-5000 steps at lr 5e-3 on 6-25 images; the canvas
    budget (fewer steps on more images, the Canvas world being small) is named here and measured in
    docs/attacks.md."""

    images: int = option(200, "real renders of the concept the attacker trains on (fresh seeds)")
    steps: int = option(150, "optimisation steps of the new word embedding")
    batch_size: int = option(16, "images per step")
    lr: float = option(5e-3, "Adam learning rate of the embedding (the paper's textual-inversion rate)")


def caption_with_slot(kind: str, style: str, obj: str, template: int) -> str:
    """World caption `template` of (style, object) with the concept's name replaced by the learnt word."""
    templates = slot_templates(kind, style)
    return fill(templates[template % len(templates)], style, obj)


def run(
    pipe,
    concept: str,
    kind: str,
    config: InversionConfig,
    seed: int,
    judges,
    progress: bool = True,
    base=None,
):
    """Learn one word for `concept` on `pipe`, then generate the concept's eval prompts with it; AttackResult."""
    config.check()
    clock = Clock()
    generator = torch.Generator().manual_seed(seed)
    images, pairs = concept_renders(concept, kind, config.images, seed)
    latents = encode_images(pipe, images)
    scheduler = training_scheduler(pipe)
    weight = pipe.text_encoder.get_input_embeddings().weight
    start = weight.detach().float().mean(0)  # the centre of the vocabulary: no word's meaning to start from
    vector = torch.nn.Parameter(start.clone().to(pipe.device))
    optimizer = torch.optim.Adam([vector], lr=config.lr)
    probe_index = torch.arange(min(len(latents), 4 * config.batch_size))
    probe_texts = [caption_with_slot(kind, *pairs[int(i)], 0) for i in probe_index]

    def held_loss(v):
        ids, mask = slot_ids(pipe.tokenizer, probe_texts)
        hidden = encode_with_slots(pipe.text_encoder, ids, mask, v.detach().unsqueeze(0))
        return fixed_loss(pipe.unet, scheduler, latents[probe_index].to(pipe.device), hidden, seed + 1)

    loss_before = held_loss(vector)
    with frozen(pipe.unet, pipe.text_encoder, pipe.vae):
        for _ in tqdm(range(config.steps), desc=f"inversion '{concept}'", disable=not progress):
            index = torch.randint(len(latents), (config.batch_size,), generator=generator)
            choice = torch.randint(1000, (config.batch_size,), generator=generator)
            texts = [caption_with_slot(kind, *pairs[int(i)], int(j)) for i, j in zip(index, choice)]
            ids, mask = slot_ids(pipe.tokenizer, texts)
            hidden = encode_with_slots(pipe.text_encoder, ids, mask, vector.unsqueeze(0))
            loss = denoising_loss(
                pipe.unet, scheduler, latents[index].to(pipe.device), hidden, generator
            ).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    prompts, seeds = [], []
    for style, obj in eval_pairs(concept, kind):
        for s in range(config.eval_seeds):
            prompts.append(caption_with_slot(kind, style, obj, 0))
            seeds.append(s)
    ids, mask = slot_ids(pipe.tokenizer, prompts)
    attacked, verdicts, asr, control_asr = attacked_and_control(
        pipe, judges, concept, kind, ids, mask, vector.detach()[None], start[None], seeds, config
    )
    return AttackResult(
        attack="inversion",
        asr=asr,
        control_asr=control_asr,
        seconds=clock.seconds(),
        prompts=[p.replace(SLOT, "<v>") for p in prompts],
        images=attacked,
        verdicts=verdicts,
        embeddings=vector.detach().cpu()[None],
        details={
            "loss_before": loss_before,
            "loss_after": held_loss(vector),
            "train_images": len(images),
        },
        definition=asr_definition(
            kind,
            concept,
            f"{len(prompts)} images (world template 0 with <v> for the {kind}, every pair of the concept, "
            f"seeds 0..{config.eval_seeds - 1})",
        ),
    )
