"""canvas-gan's training (erasure.train.gan): one step of each network, warm starts and the spread loss."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from erasure.engine.checkpoint import save_checkpoint
from erasure.train.discriminator import Discriminator, DiscriminatorConfig
from erasure.train.gan import (
    discriminator_step,
    generator_step,
    init_weights,
    make_optimizers,
    spread_loss,
    update_ema,
)
from pipelines.stylegan import (
    Generator,
    GeneratorConfig,
)
from tests.helpers import SMALL, SMALL_D, SMALL_D_HEADS, changed, small_generator, snapshot


@pytest.mark.parametrize("recipe", ["plain", "spread", "latent"])
def test_training_step_changes_only_declared_parameters(recipe):
    spread_weight, class_weight = (1.0 if recipe == "spread" else 0.0), (1.0 if recipe == "latent" else 0.0)
    latent = recipe == "latent"
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(**{**SMALL.__dict__, "latent_classes": (13, 10) if latent else ()}))
    d_config = SMALL_D_HEADS if recipe != "plain" else SMALL_D
    if latent:
        d_config = DiscriminatorConfig(**{**d_config.__dict__, "condition_counts": (13, 10)})
    D = Discriminator(d_config)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G, opt_D = make_optimizers(G, D, lr=0.01, r1_interval=4)
    g0, d0, e0 = snapshot(G), snapshot(D), snapshot(G_ema)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    labels = torch.tensor([[0, 1], [2, 3], [4, 5], [12, 9]])

    g_out, fake, fake_labels = generator_step(G, D, opt_G, 4, "cpu", spread_weight, class_weight)
    assert ("spread" in g_out) == (recipe == "spread") and ("cls_g" in g_out) == latent
    assert (fake_labels is not None) == latent
    assert changed(g0, G) == set(g0), "the G step must update every generator parameter"
    assert not changed(d0, D), "the G step must leave D alone"
    assert all(p.requires_grad for p in D.parameters())

    g1 = snapshot(G)
    out = discriminator_step(D, opt_D, real, fake, 1.0, 4, True, labels=labels, fake_labels=fake_labels)
    assert "r1" in out and out["r1"] > 0
    assert ("cls" in out) == (recipe != "plain")
    assert changed(d0, D) == set(d0), "the D step must update every discriminator parameter, heads included"
    assert not changed(g1, G), "the D step must leave G alone"

    update_ema(G_ema, G, beta=0.5)
    assert changed(e0, G_ema) == set(e0)
    assert not changed(g1, G)


def test_init_from_a_checkpoint_without_heads_keeps_its_weights_and_adds_fresh_heads(tmp_path):
    G, D = small_generator(), Discriminator(SMALL_D)
    opt_G, opt_D = make_optimizers(G, D, lr=0.01, r1_interval=4)
    models = {"G": G, "G_ema": copy.deepcopy(G), "D": D}
    weights = {name: model.state_dict() for name, model in models.items()}
    save_checkpoint(tmp_path, 10, weights, {"G": opt_G, "D": opt_D}, state={"history": []})

    G2, D2 = small_generator(seed=1), Discriminator(SMALL_D_HEADS)
    G2_ema = copy.deepcopy(G2)
    init_weights(tmp_path / "step-000010", G2, G2_ema, D2)
    assert not changed(snapshot(G), G2) and not changed(snapshot(G), G2_ema)
    assert D2.classify is not None
    for name, p in D.named_parameters():
        torch.testing.assert_close(p, dict(D2.named_parameters())[name])

    other = Discriminator(DiscriminatorConfig(channels=(8, 8, 16, 16), class_counts=(13, 10)))
    with pytest.raises(SystemExit, match="another shape"):
        init_weights(tmp_path / "step-000010", small_generator(), small_generator(), other)
    with pytest.raises(SystemExit, match="not a train_gan checkpoint"):
        init_weights(tmp_path, small_generator(), small_generator(), D2)


def test_spread_loss_on_hand_made_predictions():
    """Minus the mutual information between sample and predicted class, worked out by hand for three cases."""
    big = 50.0  # logits this far apart give one-hot softmaxes to float precision
    confident_spread = torch.tensor([[big, 0.0], [0.0, big]])
    assert spread_loss(confident_spread).item() == pytest.approx(-math.log(2), abs=1e-6)  # 0 - log 2
    collapsed = torch.tensor([[big, 0.0], [big, 0.0]])
    assert spread_loss(collapsed).item() == pytest.approx(0.0, abs=1e-6)  # 0 - 0
    unsure = torch.zeros(3, 4)
    assert spread_loss(unsure).item() == pytest.approx(0.0, abs=1e-6)  # log 4 - log 4
    # p = (0.75, 0.25) and (0.25, 0.75): per-sample entropy H(0.75) = 0.5623, mean prediction (0.5, 0.5)
    mixed = torch.log(torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert spread_loss(mixed).item() == pytest.approx(h - math.log(2), abs=1e-6)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    """train_gan's main loop on a tiny network: 2 steps, then --resume to 3, equals 3 steps in one go."""
    from erasure.train.gan import main
    from pipelines.stylegan import load_generator

    tiny = ["--batch", "4", "--g-channels", "16,8,8,8", "--d-channels", "8,8,8,8", "--train-seeds", "1"]
    tiny += [
        "--spread-weight",
        "0",
        "--log-samples",
        "13",
        "--final-samples",
        "13",
        "--max-minutes",
        "0",
        "--checkpoint-every",
        "1",
    ]

    def run(name: str, steps: int, *extra: str):
        folder = tmp_path / name
        argv = [
            *tiny,
            "--steps",
            str(steps),
            "--checkpoint-dir",
            str(folder / "ck"),
            "--out",
            str(folder / "out"),
        ]
        main([*argv, *extra])
        return folder

    whole = run("whole", 3)
    run("parts", 2)
    parts = run("parts", 3, "--resume")
    assert sorted(p.name for p in (parts / "ck").iterdir()) == ["step-000003"]
    a, b = load_generator(whole / "out"), load_generator(parts / "out")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_the_reader_loss_is_canvas_clips_cross_entropy_and_teaches_the_generator(tiny_clip_dir):
    """ReaderLoss without a shift is the cross-entropy of canvas-clip's zero-shot style and object logits against
    the picks; generator steps with it lower it on fixed latents, and the reader's weights never change."""
    import torch.nn.functional as F

    from erasure.train.gan import ReaderLoss
    from pipelines.canvas_clip import CanvasClip

    clip = CanvasClip(tiny_clip_dir)
    reader, still = ReaderLoss(clip, shift=0), ReaderLoss(clip, shift=2)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    labels = torch.tensor([[0, 1], [5, 9], [12, 0]])
    style, obj = clip.style_object_logits(clip.pair_logits(clip.image(images), reader.pair_text))
    by_hand = F.cross_entropy(style, labels[:, 0]) + F.cross_entropy(obj, labels[:, 1])
    assert reader(images, labels).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert still(images, labels).item() != pytest.approx(by_hand.item(), rel=1e-5)  # shifted views

    z = torch.randn(32, SMALL.z_dim, generator=torch.Generator().manual_seed(1))
    clip0 = snapshot(clip.model)

    def fall(weight: float) -> float:
        """How much 20 generator steps with the reader at `weight` lower its loss on fixed latents."""
        torch.manual_seed(0)
        G = Generator(GeneratorConfig(**{**SMALL.__dict__, "latent_classes": (13, 10)}))
        D = Discriminator(DiscriminatorConfig(**{**SMALL_D_HEADS.__dict__, "condition_counts": (13, 10)}))
        opt_G, _ = make_optimizers(G, D, lr=0.01, r1_interval=4)
        read = [reader(G(z), G.latent_classes(z)).item()]
        for _ in range(20):
            out, _, _ = generator_step(G, D, opt_G, 16, "cpu", 0.0, 0.0, still, weight)
            assert ("reader" in out) == (weight > 0)
        read.append(reader(G(z), G.latent_classes(z)).item())
        return read[0] - read[1]

    # The random tiny reader's logits span little, so its loss can only fall a little (from log 13 + log 10).
    taught, untaught = fall(10.0), fall(0.0)
    assert taught > 0.05 and taught > 3 * untaught
    assert not changed(clip0, clip.model), "the reader is frozen"


def test_bad_reader_inputs_exit_with_one_sentence(tmp_path, capsys):
    from erasure.train.gan import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            ["--reader-weight", "1", "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(tmp_path / "out")]
        )
    assert exit_info.value.code == 2 and "positive with --latent-classes" in capsys.readouterr().err
    argv = ["--latent-classes", "--reader-weight", "1", "--reader", str(tmp_path / "nowhere")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "holds no canvas-clip" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_recipe_names_the_reader_relative_to_the_repository(tmp_path):
    """A reader inside the repository is recorded by its relative path (the same on every clone); one outside keeps
    its absolute path."""
    from erasure.train.gan import ROOT, reader_name

    assert reader_name(ROOT / "assets" / "canvas-clip") == "assets/canvas-clip"
    assert reader_name(tmp_path / "clip") == str((tmp_path / "clip").resolve())
