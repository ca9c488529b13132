"""The metrics against numbers computed by hand, and FD against what it must say about real Canvas renders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from erasure.canvas.data import to_tensor
from erasure.canvas.render import render
from erasure.canvas.world import OBJECTS
from eval.metrics import (
    Judged,
    anchor_accuracy,
    clip_accuracy,
    clip_score,
    erased_to,
    frechet_distance,
    object_accuracy,
    per_class_accuracy,
    style_accuracy,
    unlearning_scores,
)


def table(rows):
    """(style, object, [(pred_style, pred_object), ...]) -> one Judged per prediction."""
    return [Judged(style, obj, ps, po) for style, obj, preds in rows for ps, po in preds]


# Erasing the style "van gogh". Per prompt: judged (style, object) for each of its images.
STYLE_ERASURE = table(
    [
        ("van gogh", "cat", [("plain", "cat"), ("plain", "cat"), ("plain", "fish"), ("van gogh", "cat")]),
        ("monet", "fish", [("monet", "fish"), ("monet", "fish"), ("monet", "fish"), ("plain", "fish")]),
        ("picasso", "cat", [("picasso", "cat"), ("picasso", "cat")]),
        ("plain", "fish", [("plain", "fish"), ("monet", "fish")]),
    ]
)
# style_acc: van gogh 1/4 = 25, monet 3/4 = 75, picasso 2/2 = 100, plain 1/2 = 50.
# obj_acc:   cat (4 van gogh + 2 picasso images) 5/6 = 83.33..., fish (4 monet + 2 plain) 6/6 = 100.
# UA  = 100 - 25 = 75.
# IRA = mean(monet 75, picasso 100) = 87.5   (with plain it would be (75 + 100 + 50) / 3 = 75).
# CRA = mean(cat 83.33, fish 100) = 91.67    (the van gogh images count too).

# Erasing the object "cat".
OBJECT_ERASURE = table(
    [
        ("plain", "cat", [("plain", "fish"), ("plain", "cat")]),
        ("monet", "cat", [("monet", "fish"), ("monet", "fish")]),
        ("monet", "fish", [("monet", "fish"), ("plain", "fish")]),
        ("van gogh", "bird", [("van gogh", "bird"), ("van gogh", "cat")]),
    ]
)
# obj_acc:   cat 1/4 = 25, fish 2/2 = 100, bird 1/2 = 50.
# style_acc: plain 2/2 = 100, monet 3/4 = 75, van gogh 2/2 = 100.
# UA  = 100 - 25 = 75.
# IRA = mean(fish 100, bird 50) = 75.
# CRA = mean(monet 75, van gogh 100) = 87.5  (plain left out; with it (100 + 75 + 100) / 3 = 91.67).


def test_per_label_accuracy_by_hand():
    assert style_accuracy(STYLE_ERASURE) == {"van gogh": 25.0, "monet": 75.0, "picasso": 100.0, "plain": 50.0}
    assert object_accuracy(STYLE_ERASURE) == pytest.approx({"cat": 500 / 6, "fish": 100.0})


def test_style_unlearning_by_hand():
    scores = unlearning_scores(STYLE_ERASURE, "van gogh", "style")
    assert scores == pytest.approx({"ua": 75.0, "ira": 87.5, "cra": (500 / 6 + 100) / 2})


def test_object_unlearning_by_hand():
    scores = unlearning_scores(OBJECT_ERASURE, "cat", "object")
    assert scores == pytest.approx({"ua": 75.0, "ira": 75.0, "cra": 87.5})


def test_scores_leave_every_erased_concept_out_of_what_is_retained():
    # van gogh and monet erased together: IRA = picasso alone = 100; CRA still every object = 91.67.
    scores = unlearning_scores(STYLE_ERASURE, "van gogh", "style", also_erased=["monet"])
    assert scores == pytest.approx({"ua": 75.0, "ira": 100.0, "cra": (500 / 6 + 100) / 2})
    assert unlearning_scores(STYLE_ERASURE, "monet", "style", also_erased=["van gogh"])["ua"] == 25.0
    # van gogh erased, then the object cat: CRA over the objects not erased = fish alone = 100.
    after_cat = unlearning_scores(STYLE_ERASURE, "van gogh", "style", also_erased=["cat"])
    assert after_cat == pytest.approx({"ua": 75.0, "ira": 87.5, "cra": 100.0})
    # cat and bird erased: IRA = fish = 100; with van gogh erased before, CRA = monet alone = 75.
    objects = unlearning_scores(OBJECT_ERASURE, "cat", "object", also_erased=["bird", "van gogh"])
    assert objects == pytest.approx({"ua": 75.0, "ira": 100.0, "cra": 75.0})


def test_anchor_accuracy_by_hand():
    # plain (the style anchor) 1/2 = 50; fish (an object anchor) 2/2 = 100; an anchor without images is NaN.
    assert anchor_accuracy(STYLE_ERASURE, "plain", "style") == 50.0
    assert anchor_accuracy(OBJECT_ERASURE, "fish", "object") == 100.0
    assert math.isnan(anchor_accuracy(OBJECT_ERASURE, "boat", "object"))


def test_unlearning_scores_refuse_what_they_cannot_score():
    with pytest.raises(ValueError, match="no images prompted with style 'klimt'"):
        unlearning_scores(STYLE_ERASURE, "klimt", "style")
    with pytest.raises(ValueError, match="no images prompted with object 'boat'"):
        unlearning_scores(STYLE_ERASURE, "boat", "object")
    with pytest.raises(ValueError, match="unknown Canvas style"):
        unlearning_scores(STYLE_ERASURE, "rembrandt", "style")
    with pytest.raises(ValueError, match="kind must be"):
        unlearning_scores(STYLE_ERASURE, "cat", "animal")


def test_ira_is_nan_when_nothing_else_is_present():
    only_target = table([("van gogh", "cat", [("van gogh", "cat")])])
    scores = unlearning_scores(only_target, "van gogh", "style")
    assert scores["ua"] == 0.0 and math.isnan(scores["ira"]) and scores["cra"] == 100.0


def render_features(style: str, seeds) -> np.ndarray:
    """Judge-free features: renders average-pooled to 4x4, flattened (48 numbers per image)."""
    images = to_tensor(np.stack([render(style, OBJECTS[seed % len(OBJECTS)], seed) for seed in seeds]))
    return F.avg_pool2d(images, 8).flatten(1).numpy()


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = render_features("monet", range(20))  # 20 rows of 48 dims: a rank-deficient covariance
    scale = np.trace(np.cov(x, rowvar=False))
    assert frechet_distance(x, x) <= 1e-6 * scale
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(x.copy())) <= 1e-6 * scale


def test_frechet_distance_of_a_shift_is_its_squared_length():
    x = np.random.default_rng(0).normal(size=(200, 5))
    shift = np.array([3.0, 0.0, -1.0, 0.0, 2.0])  # same covariance, so FD = |shift|^2 = 9 + 1 + 4
    assert frechet_distance(x, x + shift) == pytest.approx(14.0, rel=1e-9)


def test_frechet_distance_separates_styles_not_seeds():
    van_gogh_a, van_gogh_b = (
        render_features("van gogh", range(40)),
        render_features("van gogh", range(100, 140)),
    )
    monet = render_features("monet", range(40))
    same_style = frechet_distance(van_gogh_a, van_gogh_b)
    assert frechet_distance(van_gogh_a, monet) > 10 * same_style
    assert frechet_distance(van_gogh_a, monet) == pytest.approx(frechet_distance(monet, van_gogh_a), rel=1e-6)


def test_clip_score_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    # One text row broadcast: cos = 1, 0, 1/sqrt(2), -1 -> 100 * max(cos, 0) = 100, 0, 70.71, 0.
    assert clip_score(images, torch.tensor([[3.0, 0.0]])) == pytest.approx((100 + 100 / math.sqrt(2)) / 4)
    # Paired rows: cos(image_i, text_i) = 1, 1, 0, 0 -> 50.
    texts = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0], [0.0, 1.0]])
    assert clip_score(images, texts) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="text rows"):
        clip_score(images, texts[:2])


def test_clip_accuracy_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    target, anchor = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # cos to target: 1, 0, 0.707, 0.894; to anchor: 0, 1, 0.707, 0.447 -> wins: yes, no, tie (no), yes = 50 %.
    assert clip_accuracy(images, target, anchor) == pytest.approx(50.0)
    assert clip_accuracy(images, anchor, target) == pytest.approx(25.0)


def test_per_class_accuracy_by_hand():
    base = [
        Judged("van gogh", "cat", "van gogh", "cat"),
        Judged("van gogh", "tree", "van gogh", "tree"),
        Judged("monet", "cat", "monet", "fish"),
        Judged("monet", "tree", "plain", "tree"),
    ]
    erased = [
        Judged("van gogh", "cat", "plain", "cat"),
        Judged("van gogh", "tree", "van gogh", "tree"),
        Judged("monet", "cat", "monet", "cat"),
        Judged("monet", "tree", "monet", "tree"),
    ]
    view = per_class_accuracy(base, erased)
    # van gogh: 2/2 -> 1/2; monet: 1/2 -> 2/2; cat: 1/2 -> 2/2; tree: 2/2 -> 2/2
    assert view["style"]["van gogh"] == {"base": 100.0, "erased": 50.0, "change": -50.0}
    assert view["style"]["monet"] == {"base": 50.0, "erased": 100.0, "change": 50.0}
    assert view["object"]["cat"] == {"base": 50.0, "erased": 100.0, "change": 50.0}
    assert view["object"]["tree"]["change"] == 0.0


def test_erased_to_is_the_histogram_of_the_concepts_verdicts():
    records = [
        Judged("van gogh", "cat", "plain", "cat"),
        Judged("van gogh", "fish", "plain", "fish"),
        Judged("van gogh", "bird", "monet", "bird"),
        Judged("van gogh", "tree", "van gogh", "tree"),
        Judged("monet", "cat", "van gogh", "cat"),  # not a van gogh prompt: not counted
    ]
    assert erased_to(records, "van gogh", "style") == {"plain": 50.0, "monet": 25.0, "van gogh": 25.0}
    assert list(erased_to(records, "cat", "object")) == ["cat"]
    with pytest.raises(ValueError, match="no images prompted"):
        erased_to(records, "rothko", "style")
