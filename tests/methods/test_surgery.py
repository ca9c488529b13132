"""DoCo's concept-preserving gradient surgery on hand-made vectors; every expected vector is worked out by hand."""

from __future__ import annotations

import pytest
import torch

from erasure.methods.doco import surgery


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# Conflicting: g_a = (2, 0), g_b = (-1, 1); g_a.g_b = -2, |g_b|^2 = 2, |g_a| = 2, cos = -2 / (2 sqrt 2) = -1/sqrt 2.
#   pcgrad:     g_a - lam * (-2 / 2) * g_b                 = (2, 0) + lam * (-1, 1)
#   normalized: g_a - lam * (-1/sqrt 2) * g_b / sqrt 2     = (2, 0) + lam * 0.5 * (-1, 1)
@pytest.mark.parametrize(
    "rule, lam, expected",
    [
        ("pcgrad", 1.0, (1.0, 1.0)),
        ("pcgrad", 0.5, (1.5, 0.5)),
        ("normalized", 1.0, (1.5, 0.5)),
        ("normalized", 0.5, (1.75, 0.25)),
    ],
)
def test_conflicting(rule, lam, expected):
    out = surgery(t(2, 0), t(-1, 1), rule, lam)
    torch.testing.assert_close(out, t(*expected))


def test_conflicting_3d():
    # g_a = (3, 4, 0), g_b = (0, -1, 0): g_a.g_b = -4, |g_b| = 1, |g_a| = 5, cos = -0.8.
    # pcgrad: (3, 4, 0) + 4 * (0, -1, 0) = (3, 0, 0); normalized: (3, 4, 0) + 0.8 * (0, -1, 0) = (3, 3.2, 0).
    torch.testing.assert_close(surgery(t(3, 4, 0), t(0, -1, 0), "pcgrad", 1.0), t(3, 0, 0))
    torch.testing.assert_close(surgery(t(3, 4, 0), t(0, -1, 0), "normalized", 1.0), t(3, 3.2, 0))


def test_pcgrad_removes_the_conflict_exactly():
    g_a, g_b = t(3, 4, 0), t(-1, -2, 2)  # g_a.g_b = -11 < 0
    out = surgery(g_a, g_b, "pcgrad", 1.0)
    assert abs(torch.dot(out, g_b).item()) < 1e-5


@pytest.mark.parametrize("rule", ["pcgrad", "normalized"])
def test_aligned_is_unchanged(rule):
    # (1, 1).(1, 0) = 1 > 0: no conflict.
    assert torch.equal(surgery(t(1, 1), t(1, 0), rule, 1.0), t(1, 1))


@pytest.mark.parametrize("rule", ["pcgrad", "normalized"])
def test_orthogonal_is_unchanged(rule):
    # (0, 1).(1, 0) = 0: cos = 0 is not a conflict.
    assert torch.equal(surgery(t(0, 1), t(1, 0), rule, 1.0), t(0, 1))


@pytest.mark.parametrize("rule", ["pcgrad", "normalized"])
def test_zero_preservation_gradient_is_unchanged(rule):
    assert torch.equal(surgery(t(2, -1), t(0, 0), rule, 1.0), t(2, -1))


def test_none_disables_surgery():
    assert torch.equal(surgery(t(2, 0), t(-1, 1), "none", 1.0), t(2, 0))


def test_per_tensor_on_matrices_keeps_shape():
    # A weight-shaped gradient is treated as one flattened vector: the conflicting example above, padded.
    g_a = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    g_b = torch.tensor([[-1.0, 1.0], [0.0, 0.0]])
    out = surgery(g_a, g_b, "pcgrad", 1.0)
    assert out.shape == (2, 2)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_unknown_rule():
    with pytest.raises(ValueError, match="surgery rule"):
        surgery(t(1, 0), t(-1, 0), "projection", 1.0)
