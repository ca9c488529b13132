"""Diffusion erasure methods, one file each, sharing only the small helpers in `base` and the `MethodConfig` base.

Each method is a `Config` dataclass (a `MethodConfig`) and a `run(pipeline, request, config, session) ->
pipeline` function; `METHODS` names them for the engine (`erasure.engine.erase`) and the commands.
"""

from collections.abc import Callable
from typing import NamedTuple

from erasure.methods import ca, doco, esd, uce
from erasure.methods.base import (
    ErasureRequest,
    build_request,
    cross_attention_kv,
    predicted_x0,
    unet_parameters,
)
from erasure.methods.ca import CAConfig
from erasure.methods.config import MethodConfig
from erasure.methods.doco import DoCoConfig, PatchDiscriminator, surgery
from erasure.methods.esd import ESDConfig
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
}

__all__ = [
    "METHODS",
    "CAConfig",
    "DoCoConfig",
    "ESDConfig",
    "ErasureRequest",
    "Method",
    "MethodConfig",
    "PatchDiscriminator",
    "UCEConfig",
    "build_request",
    "cross_attention_kv",
    "predicted_x0",
    "surgery",
    "uce_weight",
    "unet_parameters",
]
