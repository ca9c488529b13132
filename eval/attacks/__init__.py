"""Attacks on erased models, one file each behind one interface: the ruler every erasure is measured with.

Each attack is a `Config` dataclass (an `AttackConfig`: its budget, with the paper's values named) and
`run(pipe, concept, kind, config, seed, judges, progress=True, base=None) -> AttackResult`. It optimises only
its own variables; the attacked pipeline's weights are the same afterwards. `base` is the model the erased one
came from, for the attacks that compare with it (relearn, probe). `eval.audit` runs them all on one pipeline.
"""

from collections.abc import Callable
from typing import NamedTuple

from eval.attacks import inversion, noise, probe, relearn, soft, uda
from eval.attacks.base import AttackConfig, AttackResult


class Attack(NamedTuple):
    """One attack: its budget's config class, its function, and whether it optimises through the prompt (those
    must recover the concept on the base model: the check that the ruler works)."""

    Config: type[AttackConfig]
    run: Callable
    prompt_optimisation: bool


ATTACKS: dict[str, Attack] = {
    "inversion": Attack(inversion.InversionConfig, inversion.run, True),
    "uda": Attack(uda.UDAConfig, uda.run, True),
    "soft": Attack(soft.SoftConfig, soft.run, True),
    "noise": Attack(noise.NoiseConfig, noise.run, False),
    "relearn": Attack(relearn.RelearnConfig, relearn.run, False),
    "probe": Attack(probe.ProbeConfig, probe.run, False),
}

__all__ = ["ATTACKS", "Attack", "AttackConfig", "AttackResult"]
