"""diffusers integration: load pipelines by short name, folder or hub id (and, later, save erased deltas)."""

from pipelines.loading import REGISTRY, PipelineLoadError, load_pipeline, resolve_model

__all__ = ["REGISTRY", "PipelineLoadError", "load_pipeline", "resolve_model"]
