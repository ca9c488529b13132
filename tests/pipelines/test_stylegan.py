"""canvas-gan's StyleGAN2-lite (pipelines.stylegan): shapes, the modulated convolution, files."""

from __future__ import annotations

import json

import pytest
import torch

from erasure.train.discriminator import Discriminator, DiscriminatorConfig
from pipelines.stylegan import (
    Generator,
    GeneratorConfig,
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


def test_latent_classes_are_uniform_independent_and_a_function_of_z(tmp_path):
    """z's first coordinates pick a style and an object through the normal CDF: each class 1/count, factors apart."""
    config = GeneratorConfig(**{**SMALL.__dict__, "latent_classes": (13, 10)})
    torch.manual_seed(0)
    G = Generator(config).eval()
    z = torch.randn(130_000, config.z_dim, generator=torch.Generator().manual_seed(3))
    labels = G.latent_classes(z)
    assert labels.shape == (130_000, 2) and labels.min() == 0
    assert labels[:, 0].max() == 12 and labels[:, 1].max() == 9
    for g, count in enumerate((13, 10)):
        shares = torch.bincount(labels[:, g], minlength=count) / len(z)
        assert torch.allclose(shares, torch.full((count,), 1 / count), atol=0.004), shares
    pairs = torch.bincount(labels[:, 0] * 10 + labels[:, 1], minlength=130) / len(z)
    assert torch.allclose(pairs, torch.full((130,), 1 / 130), atol=0.0015)
    # by hand: Phi(0) = 1/2 -> class floor(6.5) = 6 of 13 and 5 of 10; far tails -> first and last class
    hand = torch.zeros(3, config.z_dim)
    hand[1, :2], hand[2, :2] = -9.0, 9.0
    assert G.latent_classes(hand).tolist() == [[6, 5], [0, 0], [12, 9]]
    # the class reaches w: z0 = Phi^-1(7 / 13) = 0.0966 is a style boundary; a step of 0.001 across it moves w
    # far more than the same step inside a class
    base = torch.randn(3, config.z_dim, generator=torch.Generator().manual_seed(5))
    base[:, 0] = torch.tensor([0.0955, 0.0960, 0.0970])
    assert G.latent_classes(base)[:, 0].tolist() == [6, 6, 7]
    base[:, 1:] = base[0, 1:]
    w = G.mapping(base)
    assert (w[2] - w[1]).norm() > 100 * (w[1] - w[0]).norm()
    save_generator(G, tmp_path / "g")
    loaded = load_generator(tmp_path / "g")
    assert loaded.config.latent_classes == (13, 10)
    torch.testing.assert_close(G(z[:4], noise_mode="const"), loaded(z[:4], noise_mode="const"))
    with pytest.raises(ValueError, match="no latent classes"):
        small_generator().latent_classes(z[:2])


def test_projection_discriminator_reads_the_labels():
    torch.manual_seed(0)
    D = Discriminator(DiscriminatorConfig(channels=(8, 16, 16, 16), condition_counts=(13, 10)))
    images = torch.randn(4, 3, 32, 32)
    a, b = torch.tensor([[0, 1]] * 4), torch.tensor([[5, 7]] * 4)
    with torch.no_grad():
        torch.nn.init.normal_(D.project.weight)
        assert not torch.allclose(D(images, a), D(images, b))
        # with a zero projection the logit is the unconditional one
        D.project.weight.zero_()
        torch.testing.assert_close(D(images, a), D.out(D.features(images)).squeeze(1))
    with pytest.raises(ValueError, match="pass the images' labels"):
        D(images)


def test_input_from_w_makes_the_layout_follow_w(tmp_path):
    """With `input_from_w`, the 4x4 input differs between two ws (the constant alone is the same for every w), the
    map's weights are saved and loaded, and a generator without it has no such parameter."""
    config = GeneratorConfig(**{**SMALL.__dict__, "input_from_w": True})
    torch.manual_seed(0)
    G = Generator(config).eval()
    inputs = []
    G.synthesis.convs[0].register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    w = G.mapping(torch.randn(2, config.z_dim, generator=torch.Generator().manual_seed(1)))
    G.synthesis(w, noise_mode="const")
    assert inputs[0].shape == (2, config.channels[0], 4, 4)
    assert (inputs[0][0] - inputs[0][1]).abs().max() > 0.1
    expected = G.synthesis.const + G.synthesis.input_map(w).view(2, config.channels[0], 4, 4)
    torch.testing.assert_close(inputs[0], expected)
    save_generator(G, tmp_path / "g")
    loaded = load_generator(tmp_path / "g")
    assert loaded.config.input_from_w
    z = torch.randn(3, config.z_dim, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(G(z, noise_mode="const"), loaded(z, noise_mode="const"))
    assert small_generator().synthesis.input_map is None
