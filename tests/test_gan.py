"""canvas-gan, its training step, Text-to-Unlearn and the GAN metrics, on tiny random models (seconds each)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from erasure import run as cli
from erasure.canvas.tokenizer import build_tokenizer
from erasure.canvas.train_clip import canvas_clip_config
from erasure.canvas.train_gan import (
    discriminator_step,
    generator_step,
    init_weights,
    make_optimizers,
    save_checkpoint,
    spread_loss,
    update_ema,
)
from erasure.gan.stylegan import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    load_generator,
    modulated_conv2d,
    modulated_conv2d_grouped,
    save_generator,
)
from erasure.gan.text_unlearn import (
    CanvasClip,
    TextUnlearnConfig,
    assign_donors,
    trainable_parameters,
    unlearn,
)
from eval.gan_eval import gamma, rest_tv

SMALL = GeneratorConfig(z_dim=16, w_dim=32, mapping_layers=2, channels=(32, 16, 16, 8))
SMALL_D = DiscriminatorConfig(channels=(8, 16, 16, 16))
SMALL_D_HEADS = DiscriminatorConfig(channels=(8, 16, 16, 16), class_counts=(13, 10))


def small_generator(seed=0) -> Generator:
    torch.manual_seed(seed)
    return Generator(SMALL)


def snapshot(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before: dict, module) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


# --- architecture ------------------------------------------------------------------------------------------------
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


# --- one training iteration of train_gan -------------------------------------------------------------------------
@pytest.mark.parametrize("spread_weight", [0.0, 1.0])
def test_training_step_changes_only_declared_parameters(spread_weight):
    G, D = small_generator(), Discriminator(SMALL_D_HEADS if spread_weight else SMALL_D)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G, opt_D = make_optimizers(G, D, lr=0.01, r1_interval=4)
    g0, d0, e0 = snapshot(G), snapshot(D), snapshot(G_ema)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    labels = torch.tensor([[0, 1], [2, 3], [4, 5], [12, 9]]) if spread_weight else None

    g_out, fake = generator_step(G, D, opt_G, 4, "cpu", spread_weight)
    assert ("spread" in g_out) == bool(spread_weight)
    assert changed(g0, G) == set(g0), "the G step must update every generator parameter"
    assert not changed(d0, D), "the G step must leave D alone"
    assert all(p.requires_grad for p in D.parameters())

    g1 = snapshot(G)
    out = discriminator_step(D, opt_D, real, fake, r1_gamma=1.0, r1_interval=4, do_r1=True, labels=labels)
    assert "r1" in out and out["r1"] > 0
    assert ("cls" in out) == bool(spread_weight)
    assert changed(d0, D) == set(d0), "the D step must update every discriminator parameter, heads included"
    assert not changed(g1, G), "the D step must leave G alone"

    update_ema(G_ema, G, beta=0.5)
    assert changed(e0, G_ema) == set(e0)
    assert not changed(g1, G)


def test_init_from_a_checkpoint_without_heads_keeps_its_weights_and_adds_fresh_heads(tmp_path):
    G, D = small_generator(), Discriminator(SMALL_D)
    opt_G, opt_D = make_optimizers(G, D, lr=0.01, r1_interval=4)
    models = {"G": G, "G_ema": copy.deepcopy(G), "D": D}
    save_checkpoint(tmp_path / "step-000010", 10, models, {"G": opt_G, "D": opt_D}, {"history": []})

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


# --- Text-to-Unlearn ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised canvas-clip-shaped CLIPModel with the world tokenizer, saved like the real one."""
    from transformers import CLIPModel

    root = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = build_tokenizer(root)
    torch.manual_seed(0)
    model = CLIPModel(canvas_clip_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    model.save_pretrained(root, safe_serialization=True)
    tokenizer.save_pretrained(root)
    return root


def pool_concept(G, clip_dir, pool) -> tuple[str, float]:
    """A style and a canvas-clip probability threshold that split the pool (random canvas-clip) in two halves."""
    from erasure.canvas.world import STYLES
    from erasure.gan.text_unlearn import POOL_SEED

    clip = CanvasClip(clip_dir)
    z = torch.randn(pool, G.config.z_dim, generator=torch.Generator().manual_seed(POOL_SEED))
    with torch.no_grad():
        logits = clip.pair_logits(clip.image(G(z, noise_mode="const")), clip.pair_texts())
    p_style = logits.logsumexp(2).softmax(-1)
    concept = STYLES[1]
    threshold = float(p_style[:, 1].median())
    assert float(p_style[:, 1].min()) < threshold, "the random canvas-clip must tell the pooled samples apart"
    return concept, threshold


@pytest.mark.parametrize(
    "group, critic_real", [("synthesis", "rest"), ("mapping", "rest"), ("synthesis", "anchor")]
)
def test_unlearn_step_changes_only_the_declared_group(tiny_clip_dir, group, critic_real):
    G = small_generator().eval()
    concept, threshold = pool_concept(G, tiny_clip_dir, 64)
    before = snapshot(G)
    config = TextUnlearnConfig(
        steps=1,
        pool=64,
        batch=4,
        train=group,
        concept_threshold=threshold,
        rest_threshold=threshold,
        critic_real=critic_real,
    )
    new, info = unlearn(G, [concept], clip_dir=tiny_clip_dir, config=config, progress=False)
    assert not changed(before, G), "unlearn must not touch the generator it was given"
    declared = set(trainable_parameters(new, group))
    assert declared and declared == set(info["trainable"])
    assert changed(before, new) == declared
    assert 0 < info["pool_concept_share"] < 1 and len(info["history"]) == 1
    assert all(not p.requires_grad for p in new.parameters())


def test_donors_are_the_nearest_preserved_samples_of_the_target_class():
    # W on a line; (style, object) per sample. Samples 0 and 1 show the concept (object 4); 2-5 are preserved.
    w = torch.tensor([[0.0], [10.0], [1.0], [2.0], [9.0], [50.0]])
    source = torch.tensor([[0, 4], [3, 4], [0, 7], [0, 2], [3, 2], [5, 2]])
    target = torch.tensor([[0, 7], [3, 2], [0, 7], [0, 2], [3, 2], [5, 2]])
    # 0 -> 2, the only (0, 7) sample, though 3 is as near. 1 -> 4, the only (3, 2) sample; 3 and 5 draw object 2
    # in other styles.
    assert assign_donors(w, source, target, [0, 1], [2, 3, 4, 5]) == {0: 2, 1: 4}
    # Without a (0, 7) sample, sample 0 takes the nearest preserved sample with object 7 in any style: none either,
    # so the nearest preserved sample of all, 3.
    assert assign_donors(w, source, target, [0], [3, 4, 5]) == {0: 3}
    target[0] = torch.tensor([0, 2])  # now object 2 in style 0 is wanted: 3, at distance 2, beats 4 and 5
    assert assign_donors(w, source, target, [0], [4, 5, 3]) == {0: 3}
    source[5, 0], target[0] = (
        9,
        torch.tensor([9, 4]),
    )  # a style change with no (9, 4) sample: any style-9 sample
    assert assign_donors(w, source, target, [0], [2, 3, 4, 5]) == {0: 5}


def test_image_tower_tuning_leaves_the_text_tower_bit_for_bit(tiny_clip_dir, tmp_path):
    from transformers import CLIPModel

    from erasure.canvas.train_clip import tune_image_tower

    tune_image_tower(tiny_clip_dir, tmp_path, steps=2, batch=8, lr=1e-3, seed=0, seeds=range(1))
    before, after = CLIPModel.from_pretrained(tiny_clip_dir), CLIPModel.from_pretrained(tmp_path)
    after_params = dict(after.named_parameters())
    moved = {n for n, p in before.named_parameters() if not torch.equal(p, after_params[n])}
    assert moved and all(n.startswith(("vision_model.", "visual_projection.")) for n in moved)
    assert "visual_projection.weight" in moved
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (tiny_clip_dir / name).read_bytes()


def test_random_affine_is_the_identity_at_zero_and_deforms_otherwise():
    from erasure.canvas.data import random_affine

    x = torch.rand(4, 3, 32, 32)
    still = random_affine(x, torch.Generator().manual_seed(0), degrees=0, scale=0, shear=0, shift=0)
    assert torch.allclose(still, x, atol=1e-5)
    bent = random_affine(x, torch.Generator().manual_seed(0))
    assert bent.shape == x.shape and (bent - x).abs().mean() > 0.05
    assert bent.min() >= x.min() - 1e-6 and bent.max() <= x.max() + 1e-6  # bilinear: no new extremes


def test_unlearn_rejects_unknown_groups_and_concepts():
    with pytest.raises(ValueError, match="train must be one of"):
        TextUnlearnConfig(train="toRGB")
    with pytest.raises(ValueError, match="object_anchor must be"):
        TextUnlearnConfig(object_anchor="moon")
    with pytest.raises(ValueError, match="critic_real must be"):
        TextUnlearnConfig(critic_real="judges")
    with pytest.raises(ValueError, match="unknown Canvas concept"):
        unlearn(small_generator(), ["rembrandt"], config=TextUnlearnConfig(steps=0))


# --- metrics -----------------------------------------------------------------------------------------------------
def test_gamma_is_wasserstein_1_on_hand_made_distributions():
    assert gamma([0.0, 1.0, 3.0], [5.0, 6.0, 8.0]) == pytest.approx(5.0)  # a pure shift by 5
    # sorted pairs (0, 0), (0, 1), (1, 1): mean |difference| = 1/3
    assert gamma([1.0, 0.0, 0.0], [0.0, 1.0, 1.0]) == pytest.approx(1 / 3)
    assert gamma([2.0, 2.0], [2.0, 2.0]) == 0.0
    # unequal sizes: P uniform on {0, 1}, Q = {0.5}: |F_P - F_Q| = 1/2 on [0, 1] -> 1/2
    assert gamma([0.0, 1.0], [0.5]) == pytest.approx(0.5)


def test_rest_tv_on_a_hand_made_histogram():
    classes = ["a", "b", "c", "d"]
    before = ["a"] * 2 + ["b"] * 4 + ["c"] * 2 + ["d"] * 2  # over b, c, d: 1/2, 1/4, 1/4
    after = ["b"] * 3 + ["c"] * 3 + ["d"] * 2  # 3/8, 3/8, 1/4
    assert rest_tv(before, after, classes, ["a"]) == pytest.approx(0.5 * (1 / 8 + 1 / 8 + 0))
    # the erased samples moving elsewhere in proportion leaves the renormalised histogram unchanged
    assert rest_tv(before, ["b"] * 6 + ["c"] * 3 + ["d"] * 3, classes, ["a"]) == pytest.approx(0.0)
    assert rest_tv(before, before, classes, []) == 0.0


# --- the CLI -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concept", ""], "the concept is empty"),
        (["--concept", "   "], "the concept is empty"),
        (["--concept", "rembrandt"], "unknown Canvas concept"),
        (["--concept", "van gogh", "--concept", "dali"], "unknown Canvas concept"),
        (["--concept", "van gogh", "--resume"], "--resume does not apply"),
    ],
)
def test_cli_bad_inputs_exit_2_without_output(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert cli.main(["--model", "canvas-gan", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.endswith(".")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_existing_output_and_missing_generator_exit_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli.main(["--model", "canvas-gan", "--concept", "van gogh", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and (out / "keep.txt").read_text() == "x"

    import eval.gan_eval

    monkeypatch.setattr(eval.gan_eval, "GAN_DIR", tmp_path / "no-canvas-gan")
    fresh = tmp_path / "fresh"
    assert cli.main(["--model", "canvas-gan", "--concept", "van gogh", "--out", str(fresh)]) == 2
    err = capsys.readouterr().err.strip()
    assert "canvas-gan not found" in err and err.count("\n") == 0
    assert not fresh.exists()


# --- eval.gan_quality --------------------------------------------------------------------------------------------
def test_gan_quality_shares_and_bad_inputs(tmp_path, capsys):
    from eval import gan_quality

    save_generator(small_generator(), tmp_path / "g")
    assert gan_quality.main(["--generator", str(tmp_path / "g"), "--n", "26"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 26 and sum(result["style_share"].values()) == pytest.approx(1.0)
    assert result["style_ratio_min"] == pytest.approx(min(result["style_share"].values()) * 13)
    assert gan_quality.main(["--generator", str(tmp_path / "missing")]) == 2
    assert gan_quality.main(["--generator", str(tmp_path / "g"), "--n", "5"]) == 2
    assert "error:" in capsys.readouterr().err


def test_canvas_clip_quality_on_a_random_clip_and_bad_inputs(tiny_clip_dir, tmp_path, capsys):
    from eval import canvas_clip_quality

    save_generator(small_generator(), tmp_path / "g")
    argv = ["--clip", str(tiny_clip_dir), "--generator", str(tmp_path / "g"), "--n", "40"]
    assert canvas_clip_quality.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 40 and 0 <= result["renders_object_acc"] <= 1
    # 40 samples: every agreement is a multiple of 1/40
    assert (result["gan_object_agreement"] * 40) == pytest.approx(round(result["gan_object_agreement"] * 40))
    assert canvas_clip_quality.main(["--clip", str(tmp_path / "missing")]) == 2
    assert canvas_clip_quality.main(["--n", "0"]) == 2
    assert "error:" in capsys.readouterr().err
