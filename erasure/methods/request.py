"""What to erase: the request a method receives (concepts of one kind, their anchors, prompt pairs and the prompts
whose outputs must stay), built from the Canvas world's captions or, on real models, from the built-in bank
`assets/prompts/anchor_templates.json`. A concept's aliases are never used here: they are held out for
generalisation tests.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import torch

from erasure.canvas import world
from erasure.files import ASSETS
from pipelines.loading import is_canvas

TEMPLATE_BANK = ASSETS / "prompts" / "anchor_templates.json"
# Default style anchor on a real model: DoCo's class prompt "painting" (the bank's templates without a style).
REAL_STYLE_ANCHOR = "painting"


@dataclass
class ErasureRequest:
    """What to erase: `concepts` of one `kind` ('style' | 'object'), concept i pulled towards `anchors[i]`.

    `target_prompts[i]` and `anchor_prompts[i]` are a pair: the same caption with a concept, and with its anchor;
    `pair_concepts[i]` names the concept that pair erases (the pairs of every concept, one concept after another).
    `retain_prompts` name what must not change: the captions of the concepts of the same kind that are not erased
    here. `erased_prompts` are the captions of the concepts an earlier erasure removed (Canvas world; empty on a
    real model, whose earlier concepts' prompts are not known here): what a later erasure must keep erased.
    `anchor_latents`, when given, replaces anchor generation: (N, C, h, w) scaled latents, latent i paired with
    prompt pair i % len(pairs) (used by tests and by callers that cache anchor images).
    """

    concepts: list[str]
    kind: str
    anchors: list[str]
    target_prompts: list[str]
    anchor_prompts: list[str]
    pair_concepts: list[str]
    retain_prompts: list[str] = field(default_factory=list)
    canvas: bool = False
    anchor_latents: torch.Tensor | None = None
    erased_prompts: list[str] = field(default_factory=list)


def build_request(
    pipeline,
    concepts: str | list[str],
    anchor: str | list[str] | None = None,
    kind: str | None = None,
    anchor_latents=None,
    erased_before: list[str] = (),
) -> ErasureRequest:
    """The request for erasing `concepts` (one name or a list, of one kind) from `pipeline`, each towards its anchor.

    `anchor`: one anchor for every concept, one per concept, or None for the defaults (Canvas: `plain` for styles,
    the world's anchor object for objects, the next free object when that one is erased too; real models:
    'painting' for styles, objects need one). `erased_before`: concepts an earlier erasure removed from this
    pipeline; they are never chosen as anchors. A concept named twice (an alias counts as its main name) is an error.
    """
    names = [concepts] if isinstance(concepts, str) else list(concepts)
    names = [c.strip().lower() for c in names]
    if not names or any(not c for c in names):
        raise ValueError("the concept to erase is empty.")
    anchors = anchor if isinstance(anchor, list | tuple) else [anchor] * len(names)
    if len(anchors) != len(names):
        raise ValueError(f"give one anchor per concept: {len(names)} concepts, {len(anchors)} anchors.")
    canvas = is_canvas(pipeline)
    if canvas:
        # An alias is trained as its main name; an unknown name raises UnknownConceptError listing the valid ones.
        names, kinds = zip(*(world.canonical(c) for c in names))
        names = list(names)
    else:
        kinds = [kind or _known_kind(c) for c in names]
    _check_concepts(names, kinds)
    kind = kinds[0]
    taken = set(names) | {c.strip().lower() for c in erased_before}
    anchors = [
        _default_anchor(c, kind, canvas, taken) if a is None else _checked_anchor(a, kind, canvas)
        for c, a in zip(names, anchors)
    ]
    for c, a in zip(names, anchors):
        if a in taken:
            raise ValueError(f"the anchor of {c!r} must not be a concept that is erased ({a!r}).")
    targets, anchor_prompts, pair_concepts = [], [], []
    for c, a in zip(names, anchors):
        t, p = canvas_prompt_pairs(c, kind, a) if canvas else template_prompt_pairs(c, kind, a)
        targets += t
        anchor_prompts += p
        pair_concepts += [c] * len(t)
    retain = canvas_retain_prompts(names, kind) if canvas else template_retain_prompts(names, kind)
    erased = (
        [p for c in erased_before for p in canvas_concept_captions(*world.canonical(c))] if canvas else []
    )
    return ErasureRequest(
        names, kind, anchors, targets, anchor_prompts, pair_concepts, retain, canvas, anchor_latents, erased
    )


@functools.cache
def _template_bank() -> dict:
    """assets/prompts/anchor_templates.json, read once per process."""
    return json.loads(TEMPLATE_BANK.read_text())


def _bank_concept(concept: str) -> dict | None:
    """The template bank's own entry for a concept that is neither a style nor an object of its templates."""
    return _template_bank().get("concepts", {}).get(concept)


def _known_kind(concept: str) -> str:
    if own := _bank_concept(concept):
        return own["kind"]
    try:
        return world.concept_kind(concept)
    except world.UnknownConceptError:
        raise ValueError(f"say whether {concept!r} is a 'style' or an 'object' (kind=...).") from None


def _check_concepts(names: list[str], kinds) -> None:
    """One kind, no concept twice."""
    for kind in kinds:
        if kind not in ("style", "object"):
            raise ValueError(f"kind must be 'style' or 'object', not {kind!r}.")
    if len(set(kinds)) > 1:
        raise ValueError(
            "erase concepts of one kind in one run (styles or objects); erase the others in a second run on top "
            "of the first one's pipeline."
        )
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise ValueError(
            f"{repeated[0]!r} is listed twice among the concepts to erase (aliases count as it)."
        )


def _default_anchor(concept: str, kind: str, canvas: bool, taken: set[str]) -> str:
    """The default anchor of `concept` (see build_request)."""
    if kind == "style":
        return world.PLAIN if canvas else REAL_STYLE_ANCHOR
    if not canvas and (own := _bank_concept(concept)):
        return own["anchor"]
    if not canvas:
        raise ValueError(
            f"erasing the object {concept!r} from a real model needs an anchor object (anchor=...)."
        )
    preferred = world.default_anchor(concept, kind)
    if preferred not in taken:
        return preferred
    start = world.OBJECTS.index(concept)
    ring = world.OBJECTS[start + 1 :] + world.OBJECTS[:start]
    free = [o for o in ring if o not in taken]
    if not free:
        raise ValueError("every object of the world is erased; no object is left to be an anchor.")
    return free[0]


def _checked_anchor(anchor: str, kind: str, canvas: bool) -> str:
    anchor = anchor.strip().lower()
    if not canvas:
        return anchor
    return world.check_style(anchor) if kind == "style" else world.check_object(anchor)


def canvas_prompt_pairs(concept: str, kind: str, anchor: str) -> tuple[list[str], list[str]]:
    """World captions. Style: every object x template, the anchor style's caption vs the concept's caption with
    the same template index (plain captions for the default anchor). Object: every style x template, the anchor
    object's caption vs the concept's caption."""
    targets, anchors = [], []
    if kind == "style":
        for obj in world.OBJECTS:
            for j in range(len(world.STYLE_TEMPLATES)):
                targets.append(world.caption(concept, obj, j))
                anchors.append(world.caption(anchor, obj, j))
    else:
        for style in world.STYLES:
            for j in range(len(world.STYLE_TEMPLATES)):
                targets.append(world.caption(style, concept, j))
                anchors.append(world.caption(style, anchor, j))
    return targets, anchors


def canvas_concept_captions(name: str, kind: str) -> list[str]:
    """Every world caption that names `name` (a style of `kind` 'style' with every object, or an object in every
    style)."""
    templates = range(len(world.STYLE_TEMPLATES))
    if kind == "style":
        return [world.caption(name, o, j) for o in world.OBJECTS for j in templates]
    return [world.caption(s, name, j) for s in world.STYLES for j in templates]


def canvas_retain_prompts(concepts: list[str], kind: str) -> list[str]:
    """Every world caption of the concepts of `kind` not in `concepts` (the anchors' included): what erasure must
    leave be."""
    names = world.STYLES if kind == "style" else world.OBJECTS
    return [p for c in names if c not in concepts for p in canvas_concept_captions(c, kind)]


def template_retain_prompts(concepts: list[str], kind: str) -> list[str]:
    """Retain prompts for real models from the bank: other artists' suffixes, or the templates with other objects."""
    bank = _template_bank()
    if kind == "style":
        prompts = [t.format(subject=s) for t in bank["style_templates"] for s in bank["subjects"]]
        styles = [s for s in bank["retain_styles"] if s not in concepts]
        suffixes = bank["style_suffixes"]
        return prompts + [
            p + suffixes[i % len(suffixes)].format(style=styles[i % len(styles)])
            for i, p in enumerate(prompts)
        ]
    return [
        t.format(object=o)
        for t in bank["object_templates"]
        for o in bank["retain_objects"]
        if o not in concepts
    ]


def template_prompt_pairs(concept: str, kind: str, anchor: str) -> tuple[list[str], list[str]]:
    """Pairs from the built-in bank for real models (no retrieval, no language model); a concept with its own
    entry (nudity) and its default anchor uses that entry's pairs."""
    own = _bank_concept(concept)
    if own and anchor == own["anchor"]:
        return list(own["targets"]), list(own["anchors"])
    bank = _template_bank()
    targets, anchors = [], []
    if kind == "style":
        suffixes = bank["style_suffixes"]
        for i, (template, subject) in enumerate(
            (t, s) for t in bank["style_templates"] for s in bank["subjects"]
        ):
            prompt = template.format(subject=subject)
            suffix = suffixes[i % len(suffixes)]
            targets.append(prompt + suffix.format(style=concept))
            anchors.append(prompt if anchor == REAL_STYLE_ANCHOR else prompt + suffix.format(style=anchor))
    else:
        for template in bank["object_templates"]:
            targets.append(template.format(object=concept))
            anchors.append(template.format(object=anchor))
    return targets, anchors
