"""The erasure engine: `erase(pipeline, concept, method="doco")` -> `ErasureResult`.

    result = erase(load_pipeline("canvas-sd"), "van gogh")    # result.pipeline: the edited pipeline
    save_delta(result, "runs/van-gogh")                        # pipelines.delta: safetensors delta + erasure.json

Each method lives in erasure/methods/ as a `Config` dataclass and a `run(pipeline, request, config, session)`
function whose training loop is written out in full; the engine supplies what every loop needs (`TrainingRun`):
the `Accelerator` (device, mixed precision, multi-GPU under `accelerate launch`), a seeded generator, a tqdm bar
with ETA, checkpoints every `config.checkpoint_every` steps (safetensors weights, torch.save'd optimizer states,
JSON step and RNG state) with resume, and `ErasureDiverged` on a NaN/inf or exploding loss.
"""

from __future__ import annotations

import base64
import json
import math
import resource
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from erasure.methods import ca, doco, esd, uce
from erasure.methods.base import build_request

# name -> (Config dataclass, run function), one interface for every method.
METHODS = {
    "doco": (doco.DoCoConfig, doco.run),
    "esd": (esd.ESDConfig, esd.run),
    "uce": (uce.UCEConfig, uce.run),
    "ca": (ca.CAConfig, ca.run),
}


class ErasureDiverged(RuntimeError):
    """A NaN/inf or exploding loss; the message names the loss and the step."""


@dataclass
class ErasureResult:
    """An erased pipeline and everything needed to describe, save and reproduce it.

    `delta` holds the new values of every tensor that changed, keyed by '<component>.<parameter name>' (e.g.
    'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight'). `peak_memory_bytes` is CUDA's
    max_memory_allocated on a GPU; on CPU it is the growth of the process's resident set size (RSS) during the
    run, sampled every 20 ms with psutil (or, without psutil, the growth of ru_maxrss).
    """

    pipeline: object
    delta: dict[str, torch.Tensor]
    method: str
    concept: str
    kind: str
    anchor: str
    config: dict
    seconds: float
    peak_memory_bytes: int
    steps: int
    base: str = ""
    history: list[dict] = field(default_factory=list)
    memory_definition: str = ""  # how peak_memory_bytes was measured, one sentence for reports


def erase(
    pipeline,
    concept: str,
    method: str = "doco",
    anchor: str | None = None,
    config=None,
    steps: int | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    kind: str | None = None,
    anchor_latents: torch.Tensor | None = None,
) -> ErasureResult:
    """Erase `concept` from a StableDiffusionPipeline with `method`; the input pipeline keeps its weights.

    `config`: the method's Config, or None for its defaults (Canvas defaults on a Canvas model, the official
    SD 1.x ones otherwise), or a dict of fields that override those defaults. `steps` overrides the configured
    number of steps. `kind` is only needed for concepts the Canvas world does not know. `anchor_latents` skips
    anchor generation (see ErasureRequest). With `checkpoint_dir`, checkpoints are written there; `resume=True`
    continues the latest one there (or starts afresh when there is none).
    """
    if method not in METHODS:
        raise ValueError(f"unknown erasure method {method!r}; valid methods: {', '.join(METHODS)}.")
    config_cls, run_method = METHODS[method]
    request = build_request(pipeline, concept, anchor=anchor, kind=kind, anchor_latents=anchor_latents)
    if config is None or isinstance(config, dict):
        config = replace(config_cls.defaults(request.kind, canvas=request.canvas), **(config or {}))
    if steps is not None:
        config = config.with_steps(steps) if hasattr(config, "with_steps") else replace(config, steps=steps)

    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from.")
    accelerator = _accelerator(getattr(config, "mixed_precision", "no"))
    identity = {"method": method, "concept": request.concept, "kind": request.kind, "anchor": request.anchor}
    identity["config"] = asdict(config)
    run = TrainingRun(accelerator, identity, seed, checkpoint_dir, resume, progress, config)
    memory = PeakMemory(accelerator.device)
    start = time.perf_counter()
    with memory:
        edited = run_method(pipeline, request, config, run)
    seconds = time.perf_counter() - start
    return ErasureResult(
        pipeline=edited,
        delta=changed_tensors(pipeline, edited),
        method=method,
        concept=request.concept,
        kind=request.kind,
        anchor=request.anchor,
        config=asdict(config),
        seconds=seconds,
        peak_memory_bytes=memory.peak,
        memory_definition=memory.definition,
        steps=config.steps,
        base=str(getattr(pipeline, "name_or_path", "") or ""),
        history=run.history,
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
    """Every UNet / text-encoder tensor of `edited` that is not bitwise equal to `base`'s, on CPU."""
    delta = {}
    for component in ("unet", "text_encoder"):
        old, new = getattr(base, component).state_dict(), getattr(edited, component).state_dict()
        for name, value in new.items():
            if not torch.equal(value, old[name].to(value.device)):
                delta[f"{component}.{name}"] = value.detach().cpu().contiguous().clone()
    return delta


class TrainingRun:
    """The services a method's training loop uses; the loop itself stays in the method's file.

    `track(tensors, optimizers)` names what a checkpoint holds (live tensors, updated in place, and optimizers);
    `start_step()` resumes from the latest checkpoint when asked; `end_step(step, losses)` checks the losses,
    updates the bar and history, and writes a checkpoint when one is due; `cached(name, fn)` keeps expensive data
    (the anchor latents) next to the checkpoints so a resumed run uses exactly the same.
    """

    def __init__(
        self, accelerator: Accelerator, identity: dict, seed: int, checkpoint_dir, resume, progress, config
    ):
        self.accelerator, self.seed = accelerator, seed
        self.identity = json.loads(
            json.dumps(identity)
        )  # as a checkpoint's JSON will read back (tuples -> lists)
        self.device = accelerator.device
        self.dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume, self.progress = resume, progress and accelerator.is_local_main_process
        self.every = int(getattr(config, "checkpoint_every", 0) or 0)
        self.factor = float(getattr(config, "divergence_factor", 100.0))
        self.total = int(config.steps)
        self.generator = torch.Generator(self.device).manual_seed(seed * 1000 + accelerator.process_index)
        self.history: list[dict] = []
        self.ema: dict[str, float] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.bar = None

    def track(self, tensors: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.tensors, self.optimizers = tensors, optimizers

    def cached(self, name: str, compute) -> torch.Tensor:
        path = self.dir / f"{name}.safetensors" if self.dir is not None else None
        if path is not None and self.resume and path.exists():
            return load_file(path)[name].to(self.device).clone()
        value = compute()
        if path is not None and self.accelerator.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_file({name: value.detach().cpu().contiguous()}, path)
        return value

    def start_step(self) -> int:
        step = 0
        latest = self._latest() if self.resume and self.dir is not None else None
        if latest is not None:
            step = self._load(latest)
        self.bar = tqdm(
            total=self.total,
            initial=step,
            desc=self.identity["method"] + " " + self.identity["concept"],
            disable=not self.progress,
            dynamic_ncols=True,
        )
        return step

    def end_step(self, step: int, losses: dict[str, float]) -> None:
        """Call after step `step` (0-based) finished; raises ErasureDiverged on a bad loss."""
        for name, value in losses.items():
            if not math.isfinite(value):
                raise ErasureDiverged(f"{self.identity['method']} diverged at step {step}: {name} = {value}.")
            ema = self.ema.get(name)
            if ema is not None and value > 1.0 and value > self.factor * max(ema, 1e-3):
                raise ErasureDiverged(
                    f"{self.identity['method']} diverged at step {step}: {name} = {value:.4g}, "
                    f"more than {self.factor:g}x its running mean {ema:.4g}."
                )
            self.ema[name] = value if ema is None else 0.9 * ema + 0.1 * value
        self.history.append({"step": step, **{k: round(v, 6) for k, v in losses.items()}})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
        done = step + 1
        if self.dir is not None and self.every and done % self.every == 0 and done < self.total:
            self._save(done)
        if done == self.total and self.bar is not None:
            self.bar.close()

    # --- checkpoints: <dir>/step-000100/{state.safetensors, optimizers.pt, state.json}; state.json is written last.
    def _latest(self) -> Path | None:
        done = sorted(p for p in self.dir.glob("step-*") if (p / "state.json").exists())
        return done[-1] if done else None

    def _save(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        folder = self.dir / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous().clone() for k, v in self.tensors.items()},
            folder / "state.safetensors",
        )
        torch.save({k: opt.state_dict() for k, opt in self.optimizers.items()}, folder / "optimizers.pt")
        rng = base64.b64encode(self.generator.get_state().cpu().numpy().tobytes()).decode()
        state = dict(self.identity, step=step, generator=rng, ema=self.ema, history=self.history)
        (folder / "state.json").write_text(json.dumps(state))
        for old in self.dir.glob("step-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)

    def _load(self, folder: Path) -> int:
        state = json.loads((folder / "state.json").read_text())
        for key in ("method", "concept", "kind", "anchor", "config"):
            if state[key] != self.identity[key]:
                raise ValueError(
                    f"the checkpoint in {folder} was made with a different {key}; resume with the same one."
                )
        tensors = load_file(folder / "state.safetensors")
        with torch.no_grad():
            for name, live in self.tensors.items():
                live.copy_(tensors[name].to(live.device))
        saved = torch.load(folder / "optimizers.pt", map_location=self.device, weights_only=True)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(saved[name])
        rng = torch.frombuffer(bytearray(base64.b64decode(state["generator"])), dtype=torch.uint8)
        self.generator.set_state(rng)
        self.ema, self.history = state["ema"], state["history"]
        return int(state["step"])


class PeakMemory:
    """Peak memory of the enclosed block: CUDA max_memory_allocated, or RSS growth on CPU (see ErasureResult)."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.peak = 0
        self.definition = "torch.cuda.max_memory_allocated during the erasure (anchor generation + training)"

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        try:
            import psutil
        except ImportError:
            self._maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.definition = "growth of the process's peak resident set size (ru_maxrss) during the erasure"
            return self
        self.definition = "growth of the process's resident set size during the erasure, sampled every 20 ms"
        process = psutil.Process()
        self._start = self._max = process.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.02):
                self._max = max(self._max, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = int(torch.cuda.max_memory_allocated())
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = int(self._max - self._start)
        else:
            self.peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._maxrss)
        return False
