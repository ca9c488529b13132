"""The world's image data helpers (erasure.canvas.data)."""

from __future__ import annotations

import torch


def test_random_affine_is_the_identity_at_zero_and_deforms_otherwise():
    from erasure.canvas.data import random_affine

    x = torch.rand(4, 3, 32, 32)
    still = random_affine(x, torch.Generator().manual_seed(0), degrees=0, scale=0, shear=0, shift=0)
    assert torch.allclose(still, x, atol=1e-5)
    bent = random_affine(x, torch.Generator().manual_seed(0))
    assert bent.shape == x.shape and (bent - x).abs().mean() > 0.05
    assert bent.min() >= x.min() - 1e-6 and bent.max() <= x.max() + 1e-6  # bilinear: no new extremes
