"""Diffusion erasure methods, one file each, sharing only the small helpers in `base`.

Each method module exposes a `Config` dataclass (with `defaults(kind, canvas)`) and `run(pipeline, request,
config, run) -> pipeline`; `erasure.erase.METHODS` maps method names to them.
"""

from erasure.methods.base import ErasureRequest, build_request, cross_attention_kv, predicted_x0
from erasure.methods.doco import DoCoConfig, PatchDiscriminator, surgery

__all__ = [
    "DoCoConfig",
    "ErasureRequest",
    "PatchDiscriminator",
    "build_request",
    "cross_attention_kv",
    "predicted_x0",
    "surgery",
]
