"""The inner attack of robust erasure: embeddings that bring the concept back from the model being trained.

Robust erasers put an attacker inside the training loop. AdvUnlearn (Zhang et al., NeurIPS 2024) refreshes an
adversarial soft prompt against the current model before each update; STEREO (Srivatsan et al., CVPR 2025)
alternates erasing with concept inversion and keeps what the inversion found. Here the two audit attacks that
reach furthest through the text channel have an in-loop counterpart, found with the eraser's own information (the
frozen original UNet and the anchor latents; never real renders, never a judge):

  'soft':      `tokens` free prefix embeddings before the target prompt with the concept's name deleted (the
               audit's `soft`, UnlearnDiffAtk without the projection to the vocabulary);
  'inversion': one embedding in the place of the concept's name (the audit's `inversion`, concept inversion).

Every (prompt pair, attack type) keeps its own embeddings, warm-started from one refresh to the next as
AdvUnlearn does. A refresh picks `prompts` pairs per attack type and runs Adam on their embeddings only,
minimising |eps_student(x_t, adversarial prompt) - eps_teacher(x_t, target prompt)|^2 on noised anchor latents:
the attacker wants the model being erased to draw, from its new prompt, what the original model drew for the
concept. The eraser then uses the hidden states of every embedding found so far in place of the target prompt's
in a share of its target samples. The text encoders are frozen, so the conditioning depends on the embeddings
alone and is recomputed when used; the embeddings and the record of which were found are what a checkpoint keeps.
On SDXL an embedding is one input embedding per text encoder (`pipelines.slots.SlotPrompts`).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from pipelines.conditioning import TextConditioning, noise_prediction
from pipelines.slots import SLOT, SlotPrompts

ATTACK_TYPES = ("soft", "inversion")


def adversarial_template(prompt: str, concept: str, attack: str, tokens: int) -> str:
    """`prompt` with learnable slots: 'soft' puts `tokens` slots in front of the prompt with every mention of the
    concept deleted; 'inversion' puts one slot in the first mention's place (in front when it is not named)."""
    if attack not in ATTACK_TYPES:
        raise ValueError(f"the inner attack must be one of {', '.join(ATTACK_TYPES)}, not {attack!r}.")
    pattern = re.compile(re.escape(concept), re.IGNORECASE)
    if attack == "inversion":
        if not pattern.search(prompt):
            return f"{SLOT} {prompt}"
        first = pattern.sub(SLOT, prompt, count=1)
        head, tail = first.split(SLOT, 1)
        return " ".join(f"{head}{SLOT}{pattern.sub(' ', tail)}".split())
    return " ".join([SLOT] * tokens + pattern.sub(" ", prompt).split())


class AdversarialPrompts:
    """The inner attack's embeddings for every prompt pair of a request, per attack type (module docstring)."""

    def __init__(self, pipeline, request, attacks, tokens: int, device, generator: torch.Generator):
        if not attacks:
            raise ValueError("a robust erasure needs at least one inner attack type.")
        self.attacks, self.device = tuple(attacks), device
        vocabulary = pipeline.text_encoder.get_input_embeddings().weight.shape[0]
        n_pairs = len(request.target_prompts)
        self.prompts, self.vectors, self.found = {}, {}, {}
        for attack in self.attacks:
            texts = [
                adversarial_template(p, c, attack, tokens)
                for p, c in zip(request.target_prompts, request.pair_concepts)
            ]
            self.prompts[attack] = SlotPrompts(pipeline, texts)
            slots = self.prompts[attack].slots
            # Start from random vocabulary tokens, as the audit's attacks do.
            start = torch.randint(vocabulary, (n_pairs, slots), generator=generator, device=generator.device)
            self.vectors[attack] = self.prompts[attack].token_vectors(start).to(device)
            self.found[attack] = torch.zeros(n_pairs, device=device)

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint keeps (restored in place on resume)."""
        state = {f"adversary.{a}.vectors": v for a, v in self.vectors.items()}
        state.update({f"adversary.{a}.found": f for a, f in self.found.items()})
        return state

    def conditioning(self, attack: str, pairs: torch.Tensor, vectors=None) -> TextConditioning:
        """The UNet's conditioning of `attack`'s prompts for `pairs` (with `vectors`, or the kept ones)."""
        vectors = self.vectors[attack][pairs] if vectors is None else vectors
        return self.prompts[attack].encode(vectors, pairs)

    def loss(self, student, teacher, anchors, target_emb, attack: str, pairs, vectors=None) -> torch.Tensor:
        """The attacker's objective on one batch of noised anchor latents: student on the adversarial prompt vs
        teacher on the target prompt (mean squared error)."""
        _, _, t, x_t, _ = anchors.batch(len(pairs), False)
        with torch.no_grad():
            goal = noise_prediction(teacher, x_t, t, target_emb[pairs])
        pred = noise_prediction(student, x_t, t, self.conditioning(attack, pairs, vectors))
        return F.mse_loss(pred, goal)

    def refresh(
        self, student, teacher, anchors, target_emb, prompts: int, iterations: int, lr: float, generator
    ) -> float:
        """Attack the current `student` for `prompts` pairs per attack type; returns the last attack loss."""
        last = float("nan")
        n_pairs = len(target_emb)
        for attack in self.attacks:
            pairs = torch.randperm(n_pairs, generator=generator, device=generator.device)[:prompts]
            pairs = pairs.to(self.device)
            vectors = self.vectors[attack][pairs].clone().requires_grad_(True)
            optimizer = torch.optim.Adam([vectors], lr=lr)
            for _ in range(iterations):
                loss = self.loss(student, teacher, anchors, target_emb, attack, pairs, vectors)
                # Gradients of the embeddings only: the student's parameters keep no .grad from the attacker.
                (vectors.grad,) = torch.autograd.grad(loss, [vectors])
                optimizer.step()
                last = loss.item()
            self.vectors[attack][pairs] = vectors.detach()
            self.found[attack][pairs] = 1.0
        return last

    @torch.no_grad()
    def mix(self, target_emb: TextConditioning, k: torch.Tensor, share: float, generator) -> TextConditioning:
        """Conditioning for target samples of pairs `k`: each sample whose pair has adversarial embeddings takes
        one of them (a random attack type among those found) with probability `share`, else the target prompt's."""
        emb = target_emb[k]
        hidden = emb.hidden.clone()
        pooled = None if emb.pooled is None else emb.pooled.clone()
        n = len(k)
        draw = torch.rand(n, generator=generator, device=generator.device).to(self.device) < share
        which = torch.randint(len(self.attacks), (n,), generator=generator, device=generator.device)
        for index, attack in enumerate(self.attacks):
            rows = draw & (which.to(self.device) == index) & (self.found[attack][k] > 0)
            if rows.any():
                found = self.conditioning(attack, k[rows])
                hidden[rows] = found.hidden.to(hidden.dtype)
                if pooled is not None:
                    pooled[rows] = found.pooled.to(pooled.dtype)
        return TextConditioning(hidden, pooled, emb.time_ids)
