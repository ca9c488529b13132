"""Text-to-Unlearn on a tiny random generator and canvas-clip: which parameters train, donors, bad input."""

from __future__ import annotations

import pytest
import torch

from erasure.engine import unlearn
from erasure.gan.text_unlearn import (
    TextUnlearnConfig,
    assign_donors,
    trainable_parameters,
)
from tests.helpers import changed, pool_concept, small_generator, snapshot


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
    new, info = unlearn(G, [concept], config, clip_dir=tiny_clip_dir, progress=False)
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


def test_unlearn_rejects_unknown_groups_and_concepts():
    with pytest.raises(ValueError, match="train must be one of"):
        TextUnlearnConfig(train="toRGB")
    with pytest.raises(ValueError, match="object_anchor must be"):
        TextUnlearnConfig(object_anchor="moon")
    with pytest.raises(ValueError, match="critic_real must be"):
        TextUnlearnConfig(critic_real="judges")
    with pytest.raises(ValueError, match="unknown Canvas concept"):
        unlearn(small_generator(), ["rembrandt"], config=TextUnlearnConfig(steps=0))
