"""End to end on the shipped models: DoCo (canvas-sd) and Text-to-Unlearn (canvas-gan) erase a style, the judges
see it go, and the rest stays."""

from __future__ import annotations

import pytest
import torch

from erasure.canvas.world import caption
from erasure.erase import erase
from erasure.gan.stylegan import load_generator
from erasure.gan.text_unlearn import unlearn
from eval.answer_set import generate_answer_set
from eval.gan_eval import GAN_DIR, evaluate_gan
from eval.judges.models import load_judges
from eval.metrics import style_accuracy
from pipelines.loading import REGISTRY, load_pipeline

TARGET = "van gogh"
OTHERS = ("monet", "mondrian", "warhol", "hokusai")
OBJECTS = ("cat", "fish", "house", "boat", "star")

pytestmark = pytest.mark.skipif(
    not REGISTRY["canvas-sd"].exists(), reason="canvas-sd is not shipped in assets/"
)


def judged_style_accuracy(pipe, judges) -> dict[str, float]:
    items = [(caption(s, o), s, o) for s in (TARGET, *OTHERS) for o in OBJECTS]
    answers = generate_answer_set(pipe, items, [0, 1], judges, batch_size=50, desc="test answer set")
    return style_accuracy(answers.records())


def test_doco_erases_van_gogh_and_keeps_other_styles():
    torch.set_num_threads(2)
    judges = load_judges()
    base = load_pipeline("canvas-sd")
    before = judged_style_accuracy(base, judges)
    result = erase(load_pipeline("canvas-sd"), TARGET, method="doco", seed=0, progress=False)
    after = judged_style_accuracy(result.pipeline, judges)
    assert before[TARGET] - after[TARGET] >= 50, (before, after)
    for style in OTHERS:
        assert before[style] - after[style] <= 10, (style, before, after)


@pytest.mark.skipif(not (GAN_DIR / "config.json").exists(), reason="canvas-gan is not shipped in assets/")
def test_text_to_unlearn_removes_van_gogh_from_canvas_gan_and_keeps_the_rest():
    """Default Text-to-Unlearn on the shipped generator, judged on 600 fixed latents the guide never saw."""
    torch.set_num_threads(2)
    base = load_generator(GAN_DIR)
    new, _ = unlearn(base, [TARGET], progress=False)
    numbers, _ = evaluate_gan(base, new, [TARGET], load_judges(), n=600)
    assert numbers["concept_share_before"] >= 0.05, numbers  # the base draws van gogh often enough to test
    assert numbers["concept_share_after"] <= 0.2 * numbers["concept_share_before"], numbers
    assert numbers["rest_tv"] <= 0.10, numbers


@pytest.mark.skipif(not (GAN_DIR / "config.json").exists(), reason="canvas-gan is not shipped in assets/")
def test_text_to_unlearn_removes_most_trees_from_canvas_gan_and_keeps_the_rest():
    """An object, with the donor term: the judges' tree share falls at least by half (2,000 latents: 7.75% -> under
    2%), the other objects' histogram stays."""
    torch.set_num_threads(2)
    base = load_generator(GAN_DIR)
    new, _ = unlearn(base, ["tree"], progress=False)
    numbers, _ = evaluate_gan(base, new, ["tree"], load_judges(), n=600)
    assert numbers["concept_share_before"] >= 0.05, numbers
    assert numbers["concept_share_after"] <= 0.5 * numbers["concept_share_before"], numbers
    assert numbers["rest_tv"] <= 0.10, numbers
