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
    """UDA's budget, unprojected, and without UDA's weight decay: an upper bound takes no regularisation (free
    embeddings decayed towards zero lose what they found; docs/attacks.md)."""

    weight_decay: float = option(0.0, "Adam weight decay of the embeddings (none: the upper bound)")


def run(
    pipe, concept: str, kind: str, config: SoftConfig, seed: int, judges, progress: bool = True, base=None
):
    """k free prefix embeddings per target image on `pipe` for `concept`: AttackResult."""
    return optimise_prefix(
        pipe, concept, kind, config, seed, judges, project=False, name="soft", progress=progress
    )
