"""Every number the evaluation reports, one function each; every docstring states the formula it computes.

Percentages are 0-100. Accuracies come from judged answer sets (`Judged` records); FD from judge features; CLIP
score and CLIP accuracy from judge-clip embeddings. DESIGN.md section 4 is the protocol (UnlearnCanvas, adapted).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from erasure.canvas.world import PLAIN, check_object, check_style


@dataclass(frozen=True)
class Judged:
    """One judged image: the style and object it was prompted with, and the judges' top-1 predictions."""

    style: str
    object: str
    pred_style: str
    pred_object: str


def _mean(values: Iterable[float]) -> float:
    """Arithmetic mean; NaN for no values (a score over an empty set is undefined, not 0)."""
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _per_label_accuracy(pairs: Iterable[tuple[str, str]]) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for label, pred in pairs:
        hits[label].append(pred == label)
    return {label: 100.0 * sum(h) / len(h) for label, h in hits.items()}


def style_accuracy(records: Iterable[Judged]) -> dict[str, float]:
    """style_acc[s] = 100 * #{images prompted with s and judged s} / #{images prompted with s}, for styles present."""
    return _per_label_accuracy((r.style, r.pred_style) for r in records)


def object_accuracy(records: Iterable[Judged]) -> dict[str, float]:
    """obj_acc[o] = 100 * #{images prompted with o and judged o} / #{images prompted with o}, for objects present."""
    return _per_label_accuracy((r.object, r.pred_object) for r in records)


def unlearning_scores(
    records: Iterable[Judged], concept: str, kind: str, also_erased: Iterable[str] = ()
) -> dict[str, float]:
    """UA, IRA, CRA (UnlearnCanvas) for erasing `concept` of `kind` 'style' or 'object'; higher is better for all.

    Style s*:  UA = 100 - style_acc[s*];  IRA = mean style_acc[s] over artist styles s not erased;
               CRA = mean obj_acc[o] over objects o not erased (s* images included).
    Object o*: UA = 100 - obj_acc[o*];    IRA = mean obj_acc[o] over objects o not erased;
               CRA = mean style_acc[s] over artist styles s not erased.
    "Erased" is s* or o* and every name in `also_erased` (the other concepts erased with it or before it, styles
    or objects): what was erased is not retained. `plain` is left out of every mean over styles: it is the erasure
    anchor (erased styles are pulled towards it), not a style concept, and UnlearnCanvas has no unstyled class. A
    mean over an empty set is NaN.
    """
    records = list(records)
    erased = {concept, *also_erased}
    styles, objects = style_accuracy(records), object_accuracy(records)
    artist_styles = {s: acc for s, acc in styles.items() if s != PLAIN and s not in erased}
    kept_objects = {o: acc for o, acc in objects.items() if o not in erased}
    if kind == "style":
        concept = check_style(concept)
        if concept not in styles:
            raise ValueError(f"no images prompted with style {concept!r}; cannot score its erasure.")
        return {
            "ua": 100.0 - styles[concept],
            "ira": _mean(artist_styles.values()),
            "cra": _mean(kept_objects.values()),
        }
    if kind == "object":
        concept = check_object(concept)
        if concept not in objects:
            raise ValueError(f"no images prompted with object {concept!r}; cannot score its erasure.")
        return {
            "ua": 100.0 - objects[concept],
            "ira": _mean(kept_objects.values()),
            "cra": _mean(artist_styles.values()),
        }
    raise ValueError(f"kind must be 'style' or 'object', not {kind!r}.")


def anchor_accuracy(records: Iterable[Judged], anchor: str, kind: str) -> float:
    """The anchor's own accuracy: style_acc[anchor] for a style erasure, obj_acc[anchor] for an object erasure
    (NaN when no image was prompted with it). IRA leaves `plain` out, so a style erasure that draws the anchor's
    own captions in the erased style shows only here."""
    accuracy = style_accuracy(records) if kind == "style" else object_accuracy(records)
    return accuracy.get(anchor, math.nan)


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (N, d) with N >= 2, got shape {x.shape}.")
    return x


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (real part, symmetrised)."""
    root = np.real(scipy.linalg.sqrtm(matrix))
    return (root + root.T) / 2


def frechet_distance(x, y) -> float:
    """FD = |mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr((S_x^1/2 S_y S_x^1/2)^1/2), over (N, d) feature rows.

    The last trace is computed as the sum of singular values of S_x^1/2 S_y^1/2 (equal by definition). Unlike
    sqrtm(S_x S_y) this stays exact for rank-deficient covariances (N < d), so FD(X, X) is 0 to rounding.
    float64 throughout; the result is clamped at 0.
    """
    x, y = _as_float64(x), _as_float64(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}.")
    cov_x, cov_y = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    trace_sqrt = np.linalg.svd(_psd_sqrt(cov_x) @ _psd_sqrt(cov_y), compute_uv=False).sum()
    distance = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cov_x) + np.trace(cov_y) - 2.0 * trace_sqrt
    return max(float(distance), 0.0)


def _cosine(a, b) -> torch.Tensor:
    """Row-wise cosine of (N, d) against (N, d) or a single (1, d) / (d,) row broadcast to all N."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    if len(b) not in (1, len(a)):
        raise ValueError(f"{len(a)} image rows but {len(b)} text rows; pass one text row or one per image.")
    return F.cosine_similarity(a, b.expand_as(a), dim=-1)


def clip_score(image_emb, text_emb) -> float:
    """CLIP score = mean over rows of 100 * max(cos(image_i, text_i), 0) (the torchmetrics definition)."""
    return float((100.0 * _cosine(image_emb, text_emb).clamp(min=0)).mean())


def clip_accuracy(image_emb, target_emb, anchor_emb) -> float:
    """CLIP accuracy (Concept Ablation) = 100 * share of rows with cos(image, target) > cos(image, anchor)."""
    target, anchor = _cosine(image_emb, target_emb), _cosine(image_emb, anchor_emb)
    return float(100.0 * (target > anchor).double().mean())


def per_class_accuracy(
    base: Iterable[Judged], erased: Iterable[Judged]
) -> dict[str, dict[str, dict[str, float]]]:
    """The class-level view (Unlearning Comparator): for every style and every object present, its judged accuracy
    on the base and on the erased model and the difference,
    {"style": {s: {"base": style_acc_base[s], "erased": style_acc_erased[s], "change": erased - base}},
     "object": {o: ...}}."""
    base, erased = list(base), list(erased)
    view = {}
    for axis, accuracy in (("style", style_accuracy), ("object", object_accuracy)):
        before, after = accuracy(base), accuracy(erased)
        view[axis] = {
            label: {"base": before[label], "erased": after[label], "change": after[label] - before[label]}
            for label in before
            if label in after
        }
    return view


def erased_to(records: Iterable[Judged], concept: str, kind: str) -> dict[str, float]:
    """Where the erased concept's images land: for the images prompted with `concept`, the share (%) of each
    verdict of the judge of its kind, 100 * #{judged label} / #{concept images}, largest first."""
    if kind not in ("style", "object"):
        raise ValueError(f"kind must be 'style' or 'object', not {kind!r}.")
    verdicts = [
        r.pred_style if kind == "style" else r.pred_object
        for r in records
        if (r.style if kind == "style" else r.object) == concept
    ]
    if not verdicts:
        raise ValueError(f"no images prompted with {kind} {concept!r}.")
    counts = defaultdict(int)
    for v in verdicts:
        counts[v] += 1
    return {
        label: 100.0 * n / len(verdicts)
        for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    }
