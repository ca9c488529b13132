"""`erasure.train.sd --exclude`: the oracle's world lacks the concept, and its bad inputs exit 2 before training."""

from __future__ import annotations

import pytest

from erasure.canvas.world import OBJECTS, STYLES
from erasure.train import sd


def test_the_oracles_world_has_everything_but_the_excluded_concepts():
    styles, objects = sd.world_without(["van gogh", "tree"])
    assert "van gogh" not in styles and "tree" not in objects
    assert len(styles) == len(STYLES) - 1 and len(objects) == len(OBJECTS) - 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--exclude", "rembrandt"], "unknown Canvas concept"),
        (["--exclude", "plain"], "unknown Canvas concept"),
        (["--exclude", "van gogh", "--out", str(sd.ASSETS / "oracle")], "an oracle is not shipped"),
    ],
)
def test_bad_exclusions_exit_2_before_any_training(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        sd.main([*argv, "--checkpoints", str(tmp_path / "ckpt")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()
