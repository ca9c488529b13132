"""canvas-gan's StyleGAN2-lite (pipelines.stylegan): shapes, the modulated convolution, files."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.stylegan import (
    Discriminator,
    load_generator,
    modulated_conv2d,
    modulated_conv2d_grouped,
    save_generator,
)
from tests.helpers import SMALL, SMALL_D, SMALL_D_HEADS, small_generator


def test_mapping_and_synthesis_shapes():
    G = small_generator()
    z = torch.randn(3, SMALL.z_dim)
    w = G.mapping(z)
    assert w.shape == (3, SMALL.w_dim)
    assert G.synthesis(w).shape == (3, 3, 32, 32)
    ws = w[:, None].repeat(1, SMALL.num_ws, 1)
    assert G.synthesis(ws, noise_mode="none").shape == (3, 3, 32, 32)
    assert SMALL.num_ws == 11  # conv + ToRGB at 4 px, then 2 convs + ToRGB at 8, 16, 32 px
    torch.testing.assert_close(G.synthesis(w, "none"), G.synthesis(ws, "none"))
    torch.testing.assert_close(G(z, noise_mode="const"), G(z, noise_mode="const"))
    assert Discriminator(SMALL_D)(torch.randn(4, 3, 32, 32)).shape == (4,)
    logits, (styles, objects) = Discriminator(SMALL_D_HEADS).forward_with_classes(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4,) and styles.shape == (4, 13) and objects.shape == (4, 10)


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_equals_grouped_form(demodulate):
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(3, 5, 9, 9, generator=g), torch.randn(7, 5, 3, 3, generator=g)
    styles = torch.randn(3, 5, generator=g)
    torch.testing.assert_close(
        modulated_conv2d(x, weight, styles, demodulate),
        modulated_conv2d_grouped(x, weight, styles, demodulate),
        rtol=1e-4,
        atol=1e-5,
    )


def test_demodulation_gives_unit_variance_for_unit_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 64, 64, generator=g)
    weight, styles = torch.randn(8, 16, 3, 3, generator=g), torch.rand(2, 16, generator=g) * 3 + 0.1
    y = modulated_conv2d(x, weight, styles)[:, :, 1:-1, 1:-1]  # interior: zero padding lowers the border
    std = y.std(dim=(2, 3))
    assert std.shape == (2, 8)
    assert torch.allclose(std, torch.ones_like(std), atol=0.06), std


def test_save_load_roundtrip(tmp_path):
    G = small_generator()
    save_generator(G, tmp_path / "g", extra={"note": "test"})
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_generator(tmp_path / "g")
    assert loaded.config == SMALL
    z = torch.randn(2, SMALL.z_dim)
    torch.testing.assert_close(G.eval()(z, noise_mode="const"), loaded(z, noise_mode="const"))
    assert json.loads((tmp_path / "g" / "config.json").read_text())["extra"] == {"note": "test"}
