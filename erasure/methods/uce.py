"""UCE: unified concept editing, a closed-form edit of the cross-attention projections (Gandikota et al., WACV 2024).

Every cross-attention key and value projection W (`attn2.to_k`, `attn2.to_v`; W maps text-encoder token
embeddings c to keys / values) is replaced by the minimiser of

    erase_scale * sum_e |W c_e - W_old c*_e|^2 + preserve_scale * sum_p |W c_p - W_old c_p|^2 + lamb * |W - W_old|_F^2

which is  W = (es sum_e W_old c*_e c_e^T + ps sum_p W_old c_p c_p^T + lamb W_old)
              (es sum_e c_e c_e^T      + ps sum_p c_p c_p^T      + lamb I)^-1           (`uce_weight`).

c_e are token embeddings of text naming the erased concept, c*_e the matching token embeddings of the guide
(anchor) text, c_p token embeddings of text to preserve. Which tokens (`token_rule`), as in the official code:
  'trailing' (the paper's code, train_erase.py): from each text's last word token to the end of the padded
             sequence (EOS and padding; CLIP's text encoder is causal, so these carry the whole prompt), the erase
             and guide sequences aligned at their last word token and cut to the same length; preserved texts use
             every token of the padded sequence.
  'last'     (the 2024 rewrite, uce_sd_erase.py): only the last word token of every text.
Biases (SD's K/V projections have none) are left unchanged.

Texts. Erase: the concept's name paired with the guide (the anchor's name; towards the unconditional '' for the
Canvas `plain` anchor, as UCE erases when no guide is given), plus, with `expand_prompts`, every (target, anchor)
prompt pair of the request (UCE's optional prompt expansion; on Canvas the world captions). Preserve: on Canvas,
the names of the other concepts of the same kind and, with `expand_prompts`, their world captions and the anchor's
own captions; on real models the anchor prompts of the request, i.e. from the built-in template bank.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch

from erasure.canvas import world
from erasure.methods.base import frozen_teacher_and_student, pipeline_with_unet
from erasure.methods.config import MethodConfig, option
from pipelines.conditioning import encode_prompts
from pipelines.diffusion import tokenize

TokenRule = Literal["trailing", "last"]


@dataclass
class UCEConfig(MethodConfig):
    """UCE's settings. Field defaults: the paper's code (train_erase.py: lamb 0.5 passed to edit_model, erase_scale 1,
    preserve_scale 0.1, keys and values edited, 'replace' technique); the 2024 rewrite (uce_sd_erase.py) uses lamb
    0.5, erase_scale 1, preserve_scale 1 and the last token only. `UCEConfig.canvas(kind)` expands the prompts."""

    method_name: ClassVar[str] = "UCE"
    has_steps: ClassVar[bool] = False

    steps: int = option(1, "a closed form: one step, for the engine's bookkeeping")
    checkpoint_every: int = option(0, "a closed form writes no checkpoints")
    lamb: float = option(0.5, "lambda: pull towards W_old")
    erase_scale: float = option(1.0, "weight of the erase texts")
    preserve_scale: float = option(0.1, "weight of the preserved texts")
    edit_keys: bool = option(
        True, "edit attn2.to_k as well as attn2.to_v (with_to_k=True in the paper's code)"
    )
    token_rule: TokenRule = option(
        "trailing", "'trailing' (paper's code) or 'last' (2024 rewrite); module docstring"
    )
    expand_prompts: bool = option(
        False, "add the request's prompt pairs (and, on Canvas, the captions to preserve)"
    )

    def __post_init__(self):
        super().__post_init__()
        if self.lamb < 0 or self.erase_scale < 0 or self.preserve_scale < 0:
            raise ValueError("lamb, erase_scale and preserve_scale must not be negative.")

    @classmethod
    def canvas(cls, kind: str = "style") -> UCEConfig:
        """Canvas-sd: the paper's scales, with the world captions (a concept's name alone is not a caption canvas-sd
        was trained on)."""
        return replace(cls.sd(kind), expand_prompts=True)


def uce_weight(
    w_old, erase_in, erase_out, preserve_in, lamb: float, erase_scale: float, preserve_scale: float
):
    """The closed-form UCE weight for one projection W_old (out, d), in float64, returned in W_old's dtype.

    erase_in (n_e, d) = c_e, erase_out (n_e, out) = W_old c*_e, preserve_in (n_p, d) = c_p (targets W_old c_p).
    """
    w = w_old.double()
    c_e, v_e, c_p = erase_in.double(), erase_out.double(), preserve_in.double()
    gram_p = c_p.T @ c_p
    left = erase_scale * v_e.T @ c_e + preserve_scale * w @ gram_p + lamb * w  # (out, d)
    right = (
        erase_scale * c_e.T @ c_e
        + preserve_scale * gram_p
        + lamb * torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    )
    # W = left @ right^-1  <=>  right^T W^T = left^T; `right` is symmetric.
    return torch.linalg.solve(right, left.T).T.to(w_old.dtype)


@torch.no_grad()
def token_embeddings(pipeline, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-attention states (N, L, D), index of the last word token per text) for padded `texts`."""
    last = tokenize(pipeline, texts).attention_mask.sum(1) - 2
    return encode_prompts(pipeline, texts, device).hidden, last


def erase_tokens(
    pipeline, pairs: list[tuple[str, str]], rule: str, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_e, c*_e): matching rows of token embeddings of the erase texts and of their guide texts."""
    old, old_last = token_embeddings(pipeline, [a for a, _ in pairs], device)
    new, new_last = token_embeddings(pipeline, [b for _, b in pairs], device)
    length = old.shape[1]
    c_e, c_star = [], []
    for i in range(len(pairs)):
        a, b = int(old_last[i]), int(new_last[i])
        if rule == "last":
            c_e.append(old[i, a : a + 1])
            c_star.append(new[i, b : b + 1])
        else:  # aligned at the last word token, both cut to the shorter remainder
            n = length - max(a, b)
            c_e.append(old[i, a : a + n])
            c_star.append(new[i, b : b + n])
    return torch.cat(c_e), torch.cat(c_star)


def preserve_tokens(pipeline, texts: list[str], rule: str, device) -> torch.Tensor:
    """c_p: every token of each padded text ('trailing') or each text's last word token ('last')."""
    if not texts:
        return torch.zeros(0, pipeline.unet.config.cross_attention_dim, device=device)
    states, last = token_embeddings(pipeline, texts, device)
    if rule == "last":
        return states[torch.arange(len(texts), device=states.device), last.to(states.device)]
    return states.reshape(-1, states.shape[-1])


def edit_texts(request, config: UCEConfig) -> tuple[list[tuple[str, str]], list[str]]:
    """(erase pairs (text, guide text), preserved texts) for `request` (see the module docstring)."""
    pairs = [
        (concept, "" if request.canvas and anchor == world.PLAIN else anchor)
        for concept, anchor in zip(request.concepts, request.anchors)
    ]
    if config.expand_prompts:
        pairs += list(zip(request.target_prompts, request.anchor_prompts))
    if not request.canvas:
        return pairs, list(dict.fromkeys(request.anchor_prompts))
    names = world.ARTIST_STYLES if request.kind == "style" else world.OBJECTS
    others = [c for c in names if c not in request.concepts]
    preserve = others + (list(request.retain_prompts) if config.expand_prompts else [])
    return pairs, list(dict.fromkeys(preserve))


@torch.no_grad()
def run(pipeline, request, config: UCEConfig, session):
    """Edit every attn2 key/value projection of a copy of `pipeline`'s UNet in closed form."""
    device = session.device
    _, unet, _ = frozen_teacher_and_student(pipeline, device)
    unet.eval()
    session.start_step()
    suffixes = ("attn2.to_k", "attn2.to_v") if config.edit_keys else ("attn2.to_v",)
    layers = {
        n: m for n, m in unet.named_modules() if n.endswith(suffixes) and isinstance(m, torch.nn.Linear)
    }
    if not layers:
        raise ValueError("the UNet has no cross-attention key/value projections (attn2.to_k / attn2.to_v).")

    pairs, preserve = edit_texts(request, config)
    c_e, c_star = erase_tokens(pipeline, pairs, config.token_rule, device)
    c_p = preserve_tokens(pipeline, preserve, config.token_rule, device)
    residual = 0.0
    for layer in layers.values():
        w_old = layer.weight.detach()
        v_star = c_star @ w_old.float().T  # W_old c*_e (the original layer's output for the guide tokens)
        w_new = uce_weight(w_old, c_e, v_star, c_p, config.lamb, config.erase_scale, config.preserve_scale)
        layer.weight.copy_(w_new)
        residual += float((c_e @ w_new.float().T - v_star).pow(2).mean())
    session.end_step(0, {"erase_residual": residual / len(layers)})
    return pipeline_with_unet(pipeline, unet)
