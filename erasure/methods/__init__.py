"""Diffusion erasure methods, one file each, sharing only the request (`request`), the small helpers in `base` and
the `MethodConfig` base.

Each method is a `Config` dataclass (a `MethodConfig`) and a `run(pipeline, request, config, session) ->
pipeline` function; `METHODS` names them for the engine (`erasure.engine.erase`) and the commands.
"""

from collections.abc import Callable
from typing import NamedTuple

from erasure.methods import advunlearn, ca, doco, esd, stereo, uce
from erasure.methods.advunlearn import AdvUnlearnConfig
from erasure.methods.base import cross_attention_kv, predicted_x0, unet_parameters
from erasure.methods.ca import CAConfig
from erasure.methods.config import MethodConfig
from erasure.methods.doco import DoCoConfig, PatchDiscriminator, surgery
from erasure.methods.esd import ESDConfig
from erasure.methods.request import ErasureRequest, build_request
from erasure.methods.stereo import STEREOConfig
from erasure.methods.uce import UCEConfig, uce_weight


class Method(NamedTuple):
    """One erasure method: its config class and its training (or editing) function."""

    Config: type[MethodConfig]
    run: Callable


METHODS: dict[str, Method] = {
    "doco": Method(DoCoConfig, doco.run),
    "esd": Method(ESDConfig, esd.run),
    "uce": Method(UCEConfig, uce.run),
    "ca": Method(CAConfig, ca.run),
    "advunlearn": Method(AdvUnlearnConfig, advunlearn.run),
    "stereo": Method(STEREOConfig, stereo.run),
}

__all__ = [
    "METHODS",
    "AdvUnlearnConfig",
    "CAConfig",
    "DoCoConfig",
    "ESDConfig",
    "ErasureRequest",
    "Method",
    "MethodConfig",
    "PatchDiscriminator",
    "STEREOConfig",
    "UCEConfig",
    "build_request",
    "cross_attention_kv",
    "predicted_x0",
    "surgery",
    "uce_weight",
    "unet_parameters",
]
