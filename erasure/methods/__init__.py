"""Diffusion erasure methods, one file each, sharing only the small helpers in `base`.

Each method module exposes a `Config` dataclass (with `defaults(kind, canvas)`) and `run(pipeline, request,
config, run) -> pipeline`; `erasure.erase.METHODS` maps method names to them.
"""

from erasure.methods.base import ErasureRequest, build_request, cross_attention_kv, predicted_x0
from erasure.methods.ca import CAConfig
from erasure.methods.doco import DoCoConfig, PatchDiscriminator, surgery
from erasure.methods.esd import ESDConfig, esd_parameters
from erasure.methods.uce import UCEConfig, uce_weight

__all__ = [
    "CAConfig",
    "DoCoConfig",
    "ESDConfig",
    "ErasureRequest",
    "PatchDiscriminator",
    "UCEConfig",
    "build_request",
    "cross_attention_kv",
    "esd_parameters",
    "predicted_x0",
    "surgery",
    "uce_weight",
]
