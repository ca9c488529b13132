"""Two facts of SD-style training that erasure methods and attacks both need: the tokenizer call and the loss target."""

from __future__ import annotations

import torch


def tokenize(pipeline, texts: list[str], tokenizer=None):
    """The pipeline's tokenizer (or `tokenizer`, e.g. SDXL's second) on `texts`, padded to its full length as SD's
    text encoders expect."""
    tokenizer = tokenizer or pipeline.tokenizer
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict for `add_noise(latents, noise, t)`: the standard diffusion loss target."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    return latents
