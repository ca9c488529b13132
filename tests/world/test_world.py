"""The Canvas world: names, captions, the renderer and the contact sheet."""

from __future__ import annotations

import itertools
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from erasure.canvas.render import RESOLUTION, render
from erasure.canvas.sheet import contact_sheet
from erasure.canvas.world import (
    ARTIST_STYLES,
    OBJECT_ALIASES,
    OBJECT_ANCHORS,
    OBJECTS,
    PLAIN,
    PLAIN_TEMPLATES,
    STYLE_ALIASES,
    STYLE_TEMPLATES,
    STYLES,
    UnknownConceptError,
    all_captions,
    canonical,
    caption,
    check_object,
    check_style,
    concept_kind,
    default_anchor,
    random_caption,
)

REPO = Path(__file__).resolve().parents[2]
ALL_ALIASES = [a for aliases in (*STYLE_ALIASES.values(), *OBJECT_ALIASES.values()) for a in aliases]


def _listed(message: str, label: str) -> list[str]:
    """The comma-separated names after 'valid <label>: ' in an error message."""
    match = re.search(rf"valid {label}: (.+?)(?:;|\.$)", message)
    assert match, f"no list of valid {label} in {message!r}"
    return match.group(1).split(", ")


def _has_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![a-z]){re.escape(phrase)}(?![a-z])", text) is not None


# --- names --------------------------------------------------------------------------------------------------


def test_world_sizes():
    assert STYLES[0] == PLAIN and len(ARTIST_STYLES) == 12 and len(set(STYLES)) == len(STYLES)
    assert len(OBJECTS) >= 8 and len(set(OBJECTS)) == len(OBJECTS)
    assert set(STYLE_ALIASES) == set(STYLES) and set(OBJECT_ALIASES) == set(OBJECTS)
    assert all(STYLE_ALIASES[s] for s in ARTIST_STYLES) and all(OBJECT_ALIASES[o] for o in OBJECTS)
    # An alias names one concept only.
    assert len(ALL_ALIASES) == len(set(ALL_ALIASES)) and not set(ALL_ALIASES) & set(STYLES + OBJECTS)


@pytest.mark.parametrize("call", [lambda: check_style("cubism"), lambda: render("cubism", "cat", 0)])
def test_unknown_style_lists_every_style(call):
    with pytest.raises(UnknownConceptError) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert _listed(str(info.value), "styles") == list(STYLES)
    assert "cubism" in str(info.value)


@pytest.mark.parametrize("call", [lambda: check_object("dog"), lambda: render("monet", "dog", 0)])
def test_unknown_object_lists_every_object(call):
    with pytest.raises(UnknownConceptError) as info:
        call()
    assert _listed(str(info.value), "objects") == list(OBJECTS)
    assert "dog" in str(info.value)


def test_unknown_concept_lists_every_style_and_object():
    with pytest.raises(UnknownConceptError) as info:
        concept_kind("dog")
    message = str(info.value)
    assert _listed(message, "styles") == list(ARTIST_STYLES)
    assert _listed(message, "objects") == list(OBJECTS)
    with pytest.raises(UnknownConceptError):
        caption("monet", "dog")


def test_concept_kind_knows_names_and_aliases():
    for style in ARTIST_STYLES:
        assert concept_kind(style) == "style"
        assert all(concept_kind(alias) == "style" for alias in STYLE_ALIASES[style])
    for obj in OBJECTS:
        assert concept_kind(obj) == "object"
        assert all(concept_kind(alias) == "object" for alias in OBJECT_ALIASES[obj])
    assert concept_kind("  Van Gogh ") == "style" and check_style("MONET") == "monet"


def test_canonical_resolves_names_and_aliases_and_default_anchors_are_siblings():
    for main, aliases in {**STYLE_ALIASES, **OBJECT_ALIASES}.items():
        if main == PLAIN:
            continue
        kind = "style" if main in STYLES else "object"
        assert all(canonical(name) == (main, kind) for name in (main, main.upper(), *aliases))
    assert canonical("plain", allow_plain=True) == (PLAIN, "style")
    with pytest.raises(UnknownConceptError, match="valid styles"):
        canonical("plain")
    with pytest.raises(UnknownConceptError):
        canonical("rembrandt")
    assert default_anchor("van gogh", "style") == PLAIN and default_anchor("cat", "object") == "bird"
    assert set(OBJECT_ANCHORS) == set(OBJECTS)
    assert all(anchor in OBJECTS and anchor != obj for obj, anchor in OBJECT_ANCHORS.items())


# --- captions -----------------------------------------------------------------------------------------------


def test_captions_name_their_style_and_object():
    for style, obj in itertools.product(STYLES, OBJECTS):
        templates = PLAIN_TEMPLATES if style == PLAIN else STYLE_TEMPLATES
        for t in range(len(templates)):
            text = caption(style, obj, t)
            assert _has_phrase(text, obj), text
            if style == PLAIN:
                assert not any(_has_phrase(text, s) for s in ARTIST_STYLES), text
            else:
                assert _has_phrase(text, style), text


def test_aliases_never_in_main_name_captions():
    for style, obj in itertools.product(STYLES, OBJECTS):
        for t in range(len(STYLE_TEMPLATES)):
            text = caption(style, obj, t)
            assert not [a for a in ALL_ALIASES if _has_phrase(text, a)], text
    rng = random.Random(0)
    for style, obj in itertools.product(STYLES, OBJECTS):
        text = random_caption(style, obj, rng, alias_prob=0.0)
        assert not [a for a in ALL_ALIASES if _has_phrase(text, a)], text


def test_alias_captions_use_the_alias():
    assert caption("van gogh", "cat", 0, "vincent van gogh", "kitten") == "a kitten in vincent van gogh style"
    captions = set(all_captions())
    for style in ARTIST_STYLES:
        for alias in STYLE_ALIASES[style]:
            assert any(_has_phrase(c, alias) for c in captions), alias


# --- renderer -----------------------------------------------------------------------------------------------


def test_render_shape_dtype_and_determinism():
    for style, obj in itertools.product(STYLES, OBJECTS):
        first = render(style, obj, seed=7)
        assert first.shape == (RESOLUTION, RESOLUTION, 3) and first.dtype == np.uint8
        np.testing.assert_array_equal(first, render(style, obj, seed=7))
        others = [render(style, obj, seed) for seed in (0, 1, 2)]
        assert any(not np.array_equal(first, other) for other in others), (style, obj)


def test_different_seeds_give_different_images():
    renders = [render("monet", "cat", seed).tobytes() for seed in range(20)]
    assert len(set(renders)) == 20


def _colour_histogram(image: np.ndarray, bins: int = 8) -> np.ndarray:
    q = (image.astype(np.int64) * bins // 256).reshape(-1, 3)
    return np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins**3) / len(q)


def test_every_style_is_visually_distinct():
    """Each style's palette is its own: per-style colour histograms are far apart (total variation), and a
    nearest-histogram rule names the style of single images with new seeds. Mean colour alone is not enough:
    van gogh's blue and yellow average to about escher's grey."""
    centroids = {
        s: np.mean([_colour_histogram(render(s, o, seed)) for o in OBJECTS for seed in range(4)], axis=0)
        for s in STYLES
    }
    for a, b in itertools.combinations(STYLES, 2):
        distance = 0.5 * np.abs(centroids[a] - centroids[b]).sum()
        assert distance > 0.25, f"{a} and {b} share most of their colours (TV distance {distance:.2f})"
    hits = total = 0
    for style, obj in itertools.product(STYLES, OBJECTS):
        for seed in (100, 101, 102):
            h = _colour_histogram(render(style, obj, seed))
            guess = min(STYLES, key=lambda s: np.abs(centroids[s] - h).sum())
            hits += guess == style
            total += 1
    assert hits / total >= 0.95


# --- contact sheet ------------------------------------------------------------------------------------------


def test_sheet_cli_writes_png(tmp_path):
    out = tmp_path / "s.png"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "erasure.canvas.sheet", "--out", str(out), "--scale", "2"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    assert image.format == "PNG" and image.mode == "RGB"
    cell = RESOLUTION * 2
    width, height = image.size
    # The grid of tiles plus a small label margin (left: style names, top: object names).
    assert 0 < width - cell * len(OBJECTS) <= 200 and 0 < height - cell * len(STYLES) <= 60
    assert image.size == contact_sheet(seed=0, scale=2).size
    np.testing.assert_array_equal(np.asarray(image), np.asarray(contact_sheet(seed=0, scale=2)))
