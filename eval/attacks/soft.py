"""Soft prompt: UnlearnDiffAtk's optimisation without the projection to the vocabulary.

The k prefix embeddings stay continuous, so nothing a user could type is implied: this bounds from above what any
attack through the text channel can reach with k extra tokens. Same targets, loss and budget as `uda`.
"""

from __future__ import annotations

from dataclasses import dataclass

from erasure.options import option
from eval.attacks.uda import UDAConfig, optimise_prefix


@dataclass
class SoftConfig(UDAConfig):
    """UDA's walk, checks and iterations, unprojected; the paper's learning rate and no weight decay, since free
    embeddings neither hop between tokens nor survive being decayed towards zero (docs/attacks.md)."""

    lr: float = option(
        0.01,
        "Adam learning rate of the embeddings (the paper's; at uda's 0.05 free embeddings leave the vocabulary's range)",
    )
    weight_decay: float = option(0.0, "Adam weight decay of the embeddings (none: the upper bound)")


def run(
    pipe, concept: str, kind: str, config: SoftConfig, seed: int, judges, progress: bool = True, base=None
):
    """k free prefix embeddings per target image on `pipe` for `concept`: AttackResult."""
    return optimise_prefix(
        pipe, concept, kind, config, seed, judges, project=False, name="soft", progress=progress
    )
