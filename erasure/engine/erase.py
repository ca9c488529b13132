"""The erasure engine: `erase(pipeline, concepts, method="doco")` -> `ErasureResult`.

    result = erase(load_pipeline("canvas-sd"), "van gogh")    # result.pipeline: the edited pipeline
    save_delta(result, "runs/van-gogh")                        # pipelines.delta: safetensors delta + erasure.json
    both = erase(load_pipeline("canvas-sd"), ["van gogh", "monet"])          # several concepts in one run
    then = erase(result.pipeline, "monet", erased_before=result.concepts)    # one erasure on top of another

Each method in `erasure.methods.METHODS` is a `MethodConfig` dataclass and a `run(pipeline, request, config,
session)` function whose training loop is written out in full; the engine builds the request and the config, and
gives the loop its `TrainingRun` (erasure/engine/session.py) on an `Accelerator` (device, mixed precision,
multi-GPU under `accelerate launch`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState

from erasure.engine.memory import PeakMemory
from erasure.engine.session import TrainingRun
from erasure.methods import METHODS
from erasure.methods.request import build_request


@dataclass
class ErasureResult:
    """An erased pipeline and everything needed to describe, save and reproduce it: `concepts` (of one `kind`)
    erased in one run, concept i towards `anchors[i]`.

    `delta` holds the new values of every tensor that changed, keyed by '<component>.<parameter name>' (e.g.
    'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight'). `peak_memory_bytes` is CUDA's
    max_memory_allocated on a GPU; on CPU it is the growth of the process's resident set size (RSS) during the
    run, sampled every 20 ms with psutil (or, without psutil, the growth of ru_maxrss).
    """

    pipeline: object
    delta: dict[str, torch.Tensor]
    method: str
    concepts: list[str]
    kind: str
    anchors: list[str]
    config: dict
    seconds: float
    peak_memory_bytes: int
    steps: int
    base: str = ""
    history: list[dict] = field(default_factory=list)
    memory_definition: str = ""  # how peak_memory_bytes was measured, one sentence for reports


def erase(
    pipeline,
    concepts: str | list[str],
    method: str = "doco",
    anchor: str | list[str] | None = None,
    config=None,
    steps: int | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    kind: str | None = None,
    anchor_latents: torch.Tensor | None = None,
    erased_before: list[str] = (),
) -> ErasureResult:
    """Erase `concepts` (one name or a list, of one kind) from a StableDiffusionPipeline with `method`, in one
    run; the input pipeline keeps its weights.

    `config`: the method's Config, or None for its defaults (Canvas defaults on a Canvas model, the official
    SD 1.x ones otherwise), or a dict of fields that override those defaults. `steps` overrides the configured
    number of steps (a method without steps refuses it). `kind` is only needed for concepts the Canvas world
    does not know. `anchor_latents` skips anchor generation (see ErasureRequest). With `checkpoint_dir`,
    checkpoints are written there; `resume=True` continues the latest one there (or starts afresh when there
    is none). `anchor`: one for every concept, a list of one per concept, or None (defaults: `build_request`).
    `erased_before`: the concepts an earlier erasure removed from `pipeline` (never chosen as anchors).
    """
    if method not in METHODS:
        raise ValueError(f"unknown erasure method {method!r}; valid methods: {', '.join(METHODS)}.")
    config_cls, run_method = METHODS[method].Config, METHODS[method].run
    request = build_request(pipeline, concepts, anchor, kind, anchor_latents, erased_before)
    if config is None or isinstance(config, dict):
        defaults = config_cls.defaults(request.kind, request.canvas, len(request.concepts))
        config = replace(defaults, **(config or {}))
    if steps is not None:
        config = config.with_steps(steps)

    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from.")
    accelerator = _accelerator(config.mixed_precision)
    identity = {
        "method": method,
        "concepts": request.concepts,
        "kind": request.kind,
        "anchors": request.anchors,
    }
    identity["config"] = asdict(config)
    session = TrainingRun(identity, seed, config, checkpoint_dir, resume, progress, accelerator=accelerator)
    memory = PeakMemory(accelerator.device)
    start = time.perf_counter()
    with memory:
        edited = run_method(pipeline, request, config, session)
    seconds = time.perf_counter() - start
    return ErasureResult(
        pipeline=edited,
        delta=changed_tensors(pipeline, edited),
        method=method,
        concepts=request.concepts,
        kind=request.kind,
        anchors=request.anchors,
        config=asdict(config),
        seconds=seconds,
        peak_memory_bytes=memory.peak,
        memory_definition=memory.definition,
        steps=config.steps,
        base=str(getattr(pipeline, "name_or_path", "") or ""),
        history=session.history,
    )


def _accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator; in a single process, a precision other than the process's first one is allowed."""
    try:
        return Accelerator(mixed_precision=mixed_precision)
    except ValueError:
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state()  # accelerate keeps one state per process; erase() may run several times
        return Accelerator(mixed_precision=mixed_precision)


def changed_tensors(base, edited) -> dict[str, torch.Tensor]:
    """Every UNet / text-encoder tensor (SDXL's second encoder too) of `edited` that is not bitwise equal to
    `base`'s, on CPU."""
    delta = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        if getattr(base, component, None) is None:
            continue
        old, new = getattr(base, component).state_dict(), getattr(edited, component).state_dict()
        for name, value in new.items():
            if not torch.equal(value, old[name].to(value.device)):
                delta[f"{component}.{name}"] = value.detach().cpu().contiguous().clone()
    return delta
