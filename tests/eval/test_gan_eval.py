"""The GAN metrics against hand-made cases, and the quality commands on tiny random models."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch

from eval.gan_eval import gamma, object_clarity, rest_tv
from eval.judges.models import Judges
from pipelines.stylegan import (
    save_generator,
)
from tests.helpers import small_generator


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


class _Fixed(torch.nn.Module):
    """A judge whose logits are given per image (the image's first pixel indexes a row of `logits`)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, images):
        return self.logits[images[:, 0, 0, 0].long()]


class _HandJudges(Judges):
    """Judges with hand-set outputs: judge-clip's best pair for image i is `pairs[i]` (one-hot embeddings)."""

    pairs: ClassVar[list[int]] = []

    def clip_text(self, texts):
        return torch.eye(len(texts))

    def clip_image(self, images):
        return torch.eye(130)[[self.pairs[int(i)] for i in images[:, 0, 0, 0]]]


def test_object_clarity_on_hand_made_verdicts():
    """Four images: the object judge is confident (p >= 0.9) on two; judge-clip's object agrees on three, its style
    on two."""
    big, even = [0.0] * 10, [0.0] * 10
    big[3] = 10.0  # softmax top = e^10 / (e^10 + 9) = 0.9996
    confident_cat = [10.0] + [0.0] * 9
    objects = [big, confident_cat, even, [2.0] + [0.0] * 9]  # tops: 3, 0, 0 (tie -> first), 0 (p = 0.45)
    styles = [[0.0] * 13 for _ in range(4)]
    for i, s in enumerate([1, 2, 3, 4]):
        styles[i][s] = 5.0
    judges = _HandJudges(_Fixed(styles), _Fixed(objects), torch.device("cpu"))
    # pairs as style * 10 + object: (1, 3) agrees on both; (5, 0) on the object; (3, 0) on both; (0, 7) on neither
    judges.pairs = [13, 50, 30, 7]
    images = torch.arange(4.0)[:, None, None, None].expand(4, 3, 32, 32)
    clarity = object_clarity(images, judges, batch=3)
    assert clarity == {"object_confident": 0.5, "object_judges_agree": 0.75, "style_judges_agree": 0.5}
