"""Helpers shared by the method tests: a pipeline reloaded from its folder, and all of a pipeline's tensors."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline


def fresh(folder) -> StableDiffusionPipeline:
    """The pipeline saved in `folder`, loaded anew (the untouched original to compare an erasure against)."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def all_tensors(pipe) -> dict[str, torch.Tensor]:
    """Every UNet, text-encoder and VAE tensor of `pipe`, named '<component>.<parameter>'."""
    return {
        f"{c}.{n}": v
        for c in ("unet", "text_encoder", "vae")
        for n, v in getattr(pipe, c).state_dict().items()
    }
