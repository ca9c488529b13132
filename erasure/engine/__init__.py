"""The engine: `erase` (diffusion pipelines) and `unlearn` (canvas-gan), each running a method's loop in a
`TrainingRun` with one checkpoint format and a peak-memory measurement."""

from erasure.engine.erase import ErasureResult, changed_tensors, erase
from erasure.engine.session import ErasureDiverged, TrainingRun
from erasure.engine.unlearn import unlearn

__all__ = ["ErasureDiverged", "ErasureResult", "TrainingRun", "changed_tensors", "erase", "unlearn"]
