"""DoCo's building blocks (erasure/methods/doco.py): the concept-preserving gradient surgery, the PatchGAN
discriminator on latents and the key/value retain spring, each a small piece that the training loop composes."""

from __future__ import annotations

import math
import typing
from typing import Literal

import torch
from torch import nn

SurgeryRule = Literal["normalized", "pcgrad", "none"]
SURGERY_RULES = typing.get_args(SurgeryRule)


def surgery(g_a: torch.Tensor, g_b: torch.Tensor, rule: str = "normalized", lam: float = 1.0) -> torch.Tensor:
    """Concept-preserving gradient for one parameter tensor: g_a corrected where it conflicts with g_b.

    'pcgrad':     g_a - lam * (g_a.g_b / |g_b|^2) g_b
    'normalized': g_a - lam * cos(g_a, g_b) * g_b / |g_b|
    Applied only when cos(g_a, g_b) < 0; 'none' (or no conflict) returns g_a unchanged.
    """
    if rule not in SURGERY_RULES:
        raise ValueError(f"surgery rule must be one of {', '.join(SURGERY_RULES)}, not {rule!r}.")
    a, b = g_a.flatten().float(), g_b.flatten().float()
    dot = torch.dot(a, b)
    norm_a, norm_b = a.norm(), b.norm()
    if rule == "none" or dot >= 0 or norm_b == 0:
        return g_a
    if rule == "pcgrad":
        corrected = a - lam * dot / norm_b**2 * b
    else:
        cos = dot / (norm_a * norm_b + 1e-12)
        corrected = a - lam * cos * b / norm_b
    return corrected.view_as(g_a).to(g_a.dtype)


class PatchDiscriminator(nn.Module):
    """PatchGAN on latents: conv 64-128-256-512 (BatchNorm after the first, LeakyReLU 0.2), then a conv to one
    logit per patch. The first blocks halve the resolution (kernel 4, stride 2), as many as keep the output patch
    map at least 2x2 (four on SD's 64x64 latents, as the official code; two on canvas-sd's 16x16); the others
    keep it (kernel 3, stride 1).

    With `heads` > 1 the last conv gives one logit map per head and `forward(x, head)` returns sample i's map from
    head `head[i]`: one decision per erased concept on a shared trunk (one head is the paper's discriminator)."""

    def __init__(
        self, in_channels: int = 4, latent_size: int = 64, widths=(64, 128, 256, 512), heads: int = 1
    ):
        super().__init__()
        n_down = max(0, min(len(widths), math.floor(math.log2(latent_size / 3))))
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(c, w, 4, 2, 1) if i < n_down else nn.Conv2d(c, w, 3, 1, 1))
            if i > 0:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.LeakyReLU(0.2))
            c = w
        layers.append(nn.Conv2d(c, heads, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, head: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(x)
        if head is None:
            return logits
        return logits.gather(1, head.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[-2:]))


class RetainSpring:
    """L_r = |(W - W0) C|^2 / |W0 C|^2 per key/value projection, averaged, and its gradient (module docstring).

    Only C's Gram matrix C^T C / n is kept: the loss and its gradient need nothing else. C holds every token
    position of `embeddings` (N, L, D), or with `mask` (N, L) only the positions it marks (e.g. the prompts' own
    tokens without the padding).
    """

    def __init__(self, original: dict[str, torch.Tensor], embeddings: torch.Tensor, mask=None):
        tokens = embeddings if mask is None else embeddings[mask.to(embeddings.device)]
        tokens = tokens.reshape(-1, embeddings.shape[-1]).double()
        self.gram = (tokens.T @ tokens / len(tokens)).float()
        self.original = {n: w.detach().float().clone() for n, w in original.items()}
        self.norm = {n: float(torch.trace(w @ self.gram @ w.T)) for n, w in self.original.items()}

    def loss(self, params: dict[str, torch.Tensor]) -> float:
        """L_r over the projections this spring holds (`params` may hold more)."""
        terms = [
            torch.trace(d @ self.gram @ d.T) / self.norm[n]
            for n, d in ((n, params[n].detach().float() - w0) for n, w0 in self.original.items())
        ]
        return float(sum(terms) / len(terms))

    def gradients(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """dL_r/dW for each projection this spring holds, by name."""
        n_terms = len(self.original)
        return {
            n: (2 / (self.norm[n] * n_terms)) * (params[n].detach().float() - w0) @ self.gram
            for n, w0 in self.original.items()
        }


def clip_gradients(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    total = torch.sqrt(sum(g.float().pow(2).sum() for g in grads))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * scale for g in grads]


def saliency_masks(grads: dict[str, torch.Tensor], share: float) -> dict[str, torch.Tensor]:
    """Boolean masks of the `share` of all entries with the largest |gradient| across `grads` (SalUn's weight
    saliency, Fan et al., ICLR 2024: only the weights that matter most to the forgetting loss may change).
    Ties at the threshold are kept, so at least `share` of the entries are marked."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"the salient share must be within (0, 1], not {share}.")
    magnitudes = torch.cat([g.detach().abs().flatten().float() for g in grads.values()])
    keep = max(1, math.ceil(share * magnitudes.numel()))
    threshold = torch.topk(magnitudes, keep, sorted=False).values.min()
    return {n: g.detach().abs().float() >= threshold for n, g in grads.items()}
