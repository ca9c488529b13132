"""The GAN side of the engine: `unlearn(generator, concepts)` runs Text-to-Unlearn in a `TrainingRun`.

    new_generator, info = unlearn(load_generator("assets/canvas-gan"), ["van gogh"])

The same session as the diffusion methods get: a tqdm bar with ETA, NaN/inf checks, and checkpoints every
`config.checkpoint_every` steps in `checkpoint_dir`, which `resume=True` continues.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from erasure.canvas.world import canonical
from erasure.engine.session import TrainingRun
from erasure.gan import text_unlearn
from erasure.gan.text_unlearn import TextUnlearnConfig
from pipelines.canvas_clip import CANVAS_CLIP


def unlearn(
    generator,
    concepts: list[str],
    config: TextUnlearnConfig | dict | None = None,
    steps: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device=None,
    clip_dir=CANVAS_CLIP,
):
    """Erase world `concepts` (names or aliases) from a canvas-gan `generator`, which keeps its weights.

    `config`: a TextUnlearnConfig, a dict of fields overriding its defaults, or None for the defaults; `steps`
    overrides its steps. Runs on `device` (default: the generator's). Returns (unlearnt copy, info).
    """
    if config is None or isinstance(config, dict):
        config = TextUnlearnConfig(**(config or {}))
    if steps is not None:
        config = config.with_steps(steps)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from.")
    erased = [canonical(c) for c in concepts]
    identity = {
        "method": "text-to-unlearn",
        "concepts": [name for name, _ in erased],
        "kinds": [kind for _, kind in erased],
        "config": asdict(config),
    }
    device = torch.device(device or next(generator.parameters()).device)
    session = TrainingRun(identity, config.seed, config, checkpoint_dir, resume, progress, device=device)
    return text_unlearn.run(generator, concepts, config, session, clip_dir)
