"""The Canvas world's vocabulary: styles, objects, their aliases and the caption templates.

Everything the Canvas stack is trained and judged on is named here, so that the renderer, the tokenizer, the
judges and the evaluation agree on one list. Erasure trains on a concept's main name only; the aliases are held
back for generalisation tests.
"""

from __future__ import annotations

import random

PLAIN = "plain"

# The 12 artist-named styles plus the neutral anchor `plain`, whose captions carry no style words.
STYLES: tuple[str, ...] = (
    PLAIN,
    "van gogh",
    "monet",
    "picasso",
    "mondrian",
    "pollock",
    "hokusai",
    "klimt",
    "warhol",
    "seurat",
    "kandinsky",
    "rothko",
    "escher",
)
ARTIST_STYLES: tuple[str, ...] = STYLES[1:]

OBJECTS: tuple[str, ...] = ("cat", "fish", "bird", "flower", "tree", "house", "boat", "star", "moon", "car")

STYLE_ALIASES: dict[str, tuple[str, ...]] = {
    PLAIN: (),
    "van gogh": ("vincent van gogh", "the painter of starry night"),
    "monet": ("claude monet", "the impressionist of water lilies"),
    "picasso": ("pablo picasso", "the cubist master"),
    "mondrian": ("piet mondrian", "de stijl"),
    "pollock": ("jackson pollock", "the drip painter"),
    "hokusai": ("katsushika hokusai", "the great wave master"),
    "klimt": ("gustav klimt", "the painter of the kiss"),
    "warhol": ("andy warhol", "pop art"),
    "seurat": ("georges seurat", "pointillism"),
    "kandinsky": ("wassily kandinsky", "the abstract pioneer"),
    "rothko": ("mark rothko", "colour field painting"),
    "escher": ("m c escher", "the tessellation artist"),
}

OBJECT_ALIASES: dict[str, tuple[str, ...]] = {
    "cat": ("kitten", "kitty"),
    "fish": ("goldfish", "trout"),
    "bird": ("sparrow", "songbird"),
    "flower": ("blossom", "daisy"),
    "tree": ("oak", "oak tree"),
    "house": ("cottage", "home"),
    "boat": ("sailboat", "ship"),
    "star": ("five pointed star", "starlet"),
    "moon": ("crescent moon", "crescent"),
    "car": ("automobile", "motorcar"),
}

STYLE_TEMPLATES: tuple[str, ...] = (
    "a {object} in {style} style",
    "{style} painting of a {object}",
    "a painting of a {object} by {style}",
    "a {object}, in the style of {style}",
    "an artwork of a {object} in the manner of {style}",
    "a picture of a {object} painted by {style}",
)
PLAIN_TEMPLATES: tuple[str, ...] = (
    "a painting of a {object}",
    "a {object}",
    "an artwork of a {object}",
    "a picture of a {object}",
    "a simple painting of a {object}",
    "a plain painting of a {object}",
)


# The default anchor of an erased object: a sibling the judges tell apart (DoCo anchors an instance to a related
# class; the world has no parent classes, so a neighbour takes that role). An erased style's anchor is `plain`.
OBJECT_ANCHORS: dict[str, str] = {
    "cat": "bird",
    "fish": "bird",
    "bird": "fish",
    "flower": "tree",
    "tree": "flower",
    "house": "car",
    "car": "boat",
    "boat": "car",
    "star": "moon",
    "moon": "star",
}


class UnknownConceptError(ValueError):
    """A style or object that the Canvas world does not have; the message lists the valid names."""


def check_style(style: str) -> str:
    """Return the canonical style name, or raise with the list of valid ones."""
    name = style.strip().lower()
    if name not in STYLES:
        raise UnknownConceptError(f"unknown Canvas style {style!r}; valid styles: {', '.join(STYLES)}.")
    return name


def check_object(obj: str) -> str:
    """Return the canonical object name, or raise with the list of valid ones."""
    name = obj.strip().lower()
    if name not in OBJECTS:
        raise UnknownConceptError(f"unknown Canvas object {obj!r}; valid objects: {', '.join(OBJECTS)}.")
    return name


def concept_kind(concept: str) -> str:
    """'style' or 'object' for an erasable world concept (main name or alias); raises UnknownConceptError otherwise.

    `plain` is the neutral anchor, not a concept: it cannot be erased.
    """
    name = concept.strip().lower()
    for style, aliases in STYLE_ALIASES.items():
        if style != PLAIN and (name == style or name in aliases):
            return "style"
    for obj, aliases in OBJECT_ALIASES.items():
        if name == obj or name in aliases:
            return "object"
    raise UnknownConceptError(
        f"unknown Canvas concept {concept!r}; valid styles: {', '.join(ARTIST_STYLES)}; "
        f"valid objects: {', '.join(OBJECTS)}."
    )


def canonical(concept: str, allow_plain: bool = False) -> tuple[str, str]:
    """(main name, kind) of a world concept given by its name or an alias, the one resolver of the project.

    Raises UnknownConceptError (listing the valid names) for anything else. `plain` is accepted, as a style,
    only with `allow_plain` (it is an anchor, never an erasable concept).
    """
    name = concept.strip().lower()
    if allow_plain and name == PLAIN:
        return PLAIN, "style"
    kind = concept_kind(name)
    aliases = STYLE_ALIASES if kind == "style" else OBJECT_ALIASES
    return next(main for main, names in aliases.items() if name == main or name in names), kind


def default_anchor(concept: str, kind: str) -> str:
    """What an erased world concept becomes unless told otherwise: `plain` for a style, OBJECT_ANCHORS for an
    object."""
    return PLAIN if kind == "style" else OBJECT_ANCHORS[concept]


def caption(
    style: str, obj: str, template: int = 0, style_name: str | None = None, object_name: str | None = None
) -> str:
    """One caption for (style, object). `style_name` / `object_name` substitute an alias for the main name."""
    style, obj = check_style(style), check_object(obj)
    templates = PLAIN_TEMPLATES if style == PLAIN else STYLE_TEMPLATES
    text = templates[template % len(templates)]
    return text.format(style=style_name or style, object=object_name or obj)


def random_caption(style: str, obj: str, rng: random.Random, alias_prob: float = 0.3) -> str:
    """A caption with a random template; with probability `alias_prob` each name is swapped for an alias."""
    style_name = style
    if STYLE_ALIASES[style] and rng.random() < alias_prob:
        style_name = rng.choice(STYLE_ALIASES[style])
    object_name = rng.choice(OBJECT_ALIASES[obj]) if rng.random() < alias_prob else obj
    return caption(style, obj, rng.randrange(1000), style_name, object_name)


def all_captions() -> list[str]:
    """Every caption the world can produce (all templates, names and aliases): the tokenizer must cover these."""
    out = []
    for style in STYLES:
        style_names = (style, *STYLE_ALIASES[style])
        templates = PLAIN_TEMPLATES if style == PLAIN else STYLE_TEMPLATES
        for obj in OBJECTS:
            for object_name in (obj, *OBJECT_ALIASES[obj]):
                for t in range(len(templates)):
                    for style_name in style_names:
                        out.append(caption(style, obj, t, style_name, object_name))
    return out
