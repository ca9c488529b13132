"""The models this project loads and writes: diffusers pipelines (by short name, folder or hub id), erasure
deltas on top of them, canvas-gan's StyleGAN2-lite and canvas-clip."""

from pipelines.delta import apply_delta, load_delta, load_erased, save_delta
from pipelines.loading import REGISTRY, PipelineLoadError, load_pipeline, resolve_model
from pipelines.stylegan import load_generator, save_generator

__all__ = [
    "REGISTRY",
    "PipelineLoadError",
    "apply_delta",
    "load_delta",
    "load_erased",
    "load_generator",
    "load_pipeline",
    "resolve_model",
    "save_delta",
    "save_generator",
]
