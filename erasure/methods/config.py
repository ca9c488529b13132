"""`MethodConfig`: the fields every method's config shares, and how defaults are chosen.

In the spirit of PEFT's `PeftConfig` -> `LoraConfig`: shared fields live here once, each method's `Config` adds only
its own, every field carries a `help` string (`field(metadata={"help": ...})`), and choice fields are `Literal`s,
checked when the config is made. The engine reads these fields directly.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields, replace
from typing import ClassVar, Literal

from erasure.options import option, options_help


@dataclass
class MethodConfig:
    """Shared settings of an erasure method; subclasses name the paper's defaults in their own fields.

    `sd(kind)` gives the official Stable Diffusion 1.x settings for a style or an object, `canvas(kind)` the ones
    measured on canvas-sd (docs/methods.md), and `defaults(kind, canvas)` picks one of the two.
    """

    method_name: ClassVar[str] = "method"
    has_steps: ClassVar[bool] = True  # False for a closed form: --steps is refused
    # False when a run's steps are of several kinds with different costs (STEREO's erasing, inversion and REO):
    # seconds per step (eval.cost) do not describe it.
    uniform_steps: ClassVar[bool] = True

    steps: int = option(1000, "optimisation steps (iterations), warm-up included")
    checkpoint_every: int = option(
        250, "steps between checkpoints when a checkpoint folder is given (0: never)"
    )
    divergence_factor: float = option(
        100.0, "a loss above 1 and above this multiple of its running mean stops the run (0: only NaN/inf do)"
    )
    mixed_precision: Literal["no", "bf16"] = option(
        "no", "'no' or 'bf16' autocast; fp16's loss scaling clashes with methods that run two backward passes"
    )

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
            if choices and getattr(self, f.name) not in choices:
                valid = ", ".join(repr(c) for c in choices)
                raise ValueError(f"{f.name} must be one of {valid}, not {getattr(self, f.name)!r}.")

    def require_positive(self, *names: str) -> None:
        """Refuse, in one sentence, any of the integer fields `names` below 1."""
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")

    @classmethod
    def help(cls) -> dict[str, str]:
        """Every field's documentation, by name."""
        return options_help(cls)

    @classmethod
    def sd(cls, kind: str = "style"):
        """The official Stable Diffusion 1.x settings for a 'style' or an 'object'."""
        return cls()

    @classmethod
    def canvas(cls, kind: str = "style"):
        """The settings measured on canvas-sd (2 CPU cores)."""
        return cls.sd(kind)

    @classmethod
    def defaults(cls, kind: str, canvas: bool, concepts: int = 1):
        """`canvas(kind)` or `sd(kind)`, for a request of `concepts` concepts (`for_concepts`)."""
        return (cls.canvas(kind) if canvas else cls.sd(kind)).for_concepts(concepts)

    def for_concepts(self, concepts: int):
        """These settings for a run that erases `concepts` concepts at once (a method whose budget does not
        depend on it returns them unchanged)."""
        return self

    def with_steps(self, steps: int):
        """The same config over `steps` steps; a method without steps refuses (one sentence, ValueError)."""
        if not self.has_steps:
            raise ValueError(f"{self.method_name} is a closed-form edit: it has no steps to set.")
        return replace(self, steps=steps)

    def unet_passes(self) -> dict[str, float]:
        """Single-sample UNet passes of a run ({'forward': ..., 'backward': ...}): the compute budget peers share."""
        return {"forward": 0.0, "backward": 0.0}


@dataclass
class AnchorImagesConfig(MethodConfig):
    """The fields of a method that trains on anchor images generated once by the frozen pipeline (DoCo, CA), which
    `erasure.methods.base.AnchorData` reads."""

    num_anchor_images: int = option(200, "anchor images generated once by the frozen pipeline")
    anchor_steps: int = option(50, "sampler steps of the anchor images (the pipeline's default)")
    anchor_guidance: float = option(7.5, "classifier-free guidance scale of the anchor images")
    anchor_batch: int = option(8, "images per anchor generation batch")
    hflip: bool = option(True, "random horizontal flips of anchor latents")

    def for_concepts(self, concepts: int):
        """As many anchor images per concept as for one: each concept's caption pairs stay covered."""
        return replace(self, num_anchor_images=self.num_anchor_images * max(1, concepts))

    def with_canvas_anchor_images(self):
        """64 anchor images sampled as canvas-sd samples (20 DDIM steps, guidance 5), 32 per batch: about one per
        caption pair of a concept (docs/methods.md)."""
        from erasure.canvas.sd_config import GUIDANCE_SCALE, INFERENCE_STEPS

        return replace(
            self,
            num_anchor_images=64,
            anchor_steps=INFERENCE_STEPS,
            anchor_guidance=GUIDANCE_SCALE,
            anchor_batch=32,
        )
