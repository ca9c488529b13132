"""canvas-clip's second training stage (erasure.train.clip) on a tiny random model."""

from __future__ import annotations

import torch


def test_image_tower_tuning_leaves_the_text_tower_bit_for_bit(tiny_clip_dir, tmp_path):
    from transformers import CLIPModel

    from erasure.train.clip import tune_image_tower

    tune_image_tower(tiny_clip_dir, tmp_path, steps=2, batch=8, lr=1e-3, seed=0, seeds=range(1))
    before, after = CLIPModel.from_pretrained(tiny_clip_dir), CLIPModel.from_pretrained(tmp_path)
    after_params = dict(after.named_parameters())
    moved = {n for n, p in before.named_parameters() if not torch.equal(p, after_params[n])}
    assert moved and all(n.startswith(("vision_model.", "visual_projection.")) for n in moved)
    assert "visual_projection.weight" in moved
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (tiny_clip_dir / name).read_bytes()


def test_image_tower_tuning_on_a_generators_samples_labelled_by_its_latent(tiny_clip_dir, tmp_path):
    import pytest
    from transformers import CLIPModel

    from erasure.train.clip import generator_pool, tune_image_tower
    from pipelines.stylegan import Generator, GeneratorConfig, save_generator
    from tests.helpers import SMALL, small_generator

    torch.manual_seed(0)
    latent = Generator(GeneratorConfig(**{**SMALL.__dict__, "latent_classes": (13, 10)}))
    save_generator(latent, tmp_path / "gan")
    images, styles, objects = generator_pool(tmp_path / "gan", 6, seed=3)
    z = torch.randn(6, SMALL.z_dim, generator=torch.Generator().manual_seed(3))
    assert images.shape == (6, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(torch.stack([styles, objects], 1), latent.latent_classes(z))

    tune_image_tower(
        tiny_clip_dir,
        tmp_path / "out",
        2,
        8,
        1e-3,
        0,
        seeds=range(1),
        gan=tmp_path / "gan",
        gan_samples=6,
        gan_share=0.5,
    )
    before, after = CLIPModel.from_pretrained(tiny_clip_dir), CLIPModel.from_pretrained(tmp_path / "out")
    after_params = dict(after.named_parameters())
    moved = {n for n, p in before.named_parameters() if not torch.equal(p, after_params[n])}
    assert moved and all(n.startswith(("vision_model.", "visual_projection.")) for n in moved)

    save_generator(small_generator(), tmp_path / "plain")
    with pytest.raises(SystemExit, match="latent picks a style and an object"):
        generator_pool(tmp_path / "plain", 2, seed=0)


def test_clip_command_refuses_bad_gan_inputs(tiny_clip_dir, tmp_path, capsys):
    import pytest

    from erasure.train.clip import main

    cases = [
        ["--gan", str(tmp_path)],  # without --image-tower-from
        ["--image-tower-from", str(tiny_clip_dir), "--gan", str(tmp_path / "missing")],
        ["--image-tower-from", str(tiny_clip_dir), "--gan", str(tiny_clip_dir), "--gan-share", "1.5"],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as stop:
            main([*argv, "--out", str(tmp_path / "out")])
        assert stop.value.code == 2
        assert capsys.readouterr().err.startswith("error:")
    assert not (tmp_path / "out").exists()
