"""Real Canvas images in bulk for training and judging: a rendered pool, augmentation, and the check's degradation."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from erasure.canvas.render import render
from erasure.canvas.world import OBJECTS, STYLES

TRAIN_SEEDS = range(60)
# Held-out seeds: never used in training by any model of the repo, so the judge check sees fresh images.
CHECK_SEED_BASE = 1_000_000


def render_pool(seeds, styles=STYLES, objects=OBJECTS):
    """Every (style, object) pair at every seed: uint8 images (N, H, W, 3) and integer style/object labels."""
    images, style_labels, object_labels = [], [], []
    for seed in seeds:
        for si, style in enumerate(styles):
            for oi, obj in enumerate(objects):
                images.append(render(style, obj, seed))
                style_labels.append(STYLES.index(style))
                object_labels.append(OBJECTS.index(obj))
    return np.stack(images), np.array(style_labels), np.array(object_labels)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images with reflect padding."""
    if sigma <= 0:
        return x
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip (N, 3, H, W) images in [0, 1] through JPEG at `quality`."""
    out = []
    for image in (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return to_tensor(np.stack(out))


def degrade(x: torch.Tensor, sigma: float = 1.0, quality: int = 50) -> torch.Tensor:
    """The check's degradation: Gaussian blur of `sigma` px, then JPEG at `quality`."""
    return jpeg(gaussian_blur(x, sigma), quality)


def augment(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Training-time corruption so judges hold up on imperfect generated images: shift, blur, JPEG, noise."""
    dx, dy = rng.randint(-2, 2), rng.randint(-2, 2)
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if rng.random() < 0.6:
        x = gaussian_blur(x, rng.uniform(0.3, 1.6))
    if rng.random() < 0.5:
        x = jpeg(x, rng.randint(25, 95))
    if rng.random() < 0.5:
        x = x + torch.randn_like(x) * rng.uniform(0.0, 0.06)
    return x.clamp(0, 1)


def random_affine(
    x: torch.Tensor, generator: torch.Generator, degrees=15.0, scale=0.2, shear=0.15, shift=0.15
):
    """Shape-deforming corruption of (N, C, H, W) images: rotation, zoom, shear and shift, edge-padded.

    `augment` only moves and blurs; a GAN also bends outlines, and a classifier that has only seen the renderer's
    exact shapes misreads those objects.
    """
    n = len(x)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * scale
    skew = (torch.rand(n, 2, generator=generator) * 2 - 1) * shear
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / zoom + skew[:, 0]
    theta[:, 0, 1] = -torch.sin(angle) / zoom
    theta[:, 1, 0] = torch.sin(angle) / zoom
    theta[:, 1, 1] = torch.cos(angle) / zoom + skew[:, 1]
    theta[:, :, 2] = (torch.rand(n, 2, generator=generator) * 2 - 1) * shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def multi_positive_clip_loss(logits: torch.Tensor, pair_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss where every row with the same (style, object) pair counts as a positive.

    The world has only 130 pairs, so a batch holds repeats; the plain CLIP loss would push them apart as negatives.
    """
    same = (pair_ids[:, None] == pair_ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    per_image = torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
    per_text = torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean()
    return 0.5 * (per_image + per_text)
