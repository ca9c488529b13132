"""End to end on the shipped canvas-sd: DoCo erases a style, the judges see it go, and the rest stays."""

from __future__ import annotations

import pytest
import torch

from erasure.canvas.world import caption
from erasure.erase import erase
from eval.answer_set import generate_answer_set
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
