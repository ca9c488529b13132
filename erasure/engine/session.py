"""The training session a method's loop runs in: device, seeded generator, progress bar, checks, checkpoints.

The loop itself stays in the method's file; it calls `start_step()` once (which resumes from the latest checkpoint
when asked), `end_step(step, losses)` after every step, and `track(...)` to name what a checkpoint holds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from erasure.engine.checkpoint import latest_checkpoint, load_checkpoint, load_tensors, save_checkpoint

STATE_GROUP = "state"  # the checkpoint's tensor group holding the tracked tensors


class ErasureDiverged(RuntimeError):
    """A NaN/inf or exploding loss; the message names the loss and the step."""


class TrainingRun:
    """The services a training loop uses (see the module docstring).

    `identity` (method, concepts, kind, anchors, config, ...) is stored in every checkpoint, and a resumed run
    must match it. `config` is the method's `MethodConfig`: its `steps`, `checkpoint_every` (0: never) and
    `divergence_factor` (a loss above 1 and above this multiple of its running mean stops the run; 0: only
    NaN/inf do). With an `accelerate.Accelerator` the session runs on its device and process; without one, in
    this single process on `device`. `generator` is seeded with seed * 1000 + the process index.
    """

    def __init__(
        self,
        identity: dict,
        seed: int,
        config,
        checkpoint_dir=None,
        resume: bool = False,
        progress: bool = True,
        accelerator=None,
        device=None,
    ):
        self.accelerator, self.seed = accelerator, seed
        self.identity = json.loads(
            json.dumps(identity)
        )  # as a checkpoint's JSON will read back (tuples -> lists)
        self.device = accelerator.device if accelerator is not None else torch.device(device or "cpu")
        self.is_main = accelerator is None or accelerator.is_main_process
        self.dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        local_main = accelerator is None or accelerator.is_local_main_process
        self.resume, self.progress = resume, progress and local_main
        self.every = int(config.checkpoint_every)
        self.factor = float(config.divergence_factor)
        self.total = int(config.steps)
        process = accelerator.process_index if accelerator is not None else 0
        self.generator = torch.Generator(self.device).manual_seed(seed * 1000 + process)
        self.history: list[dict] = []
        self.ema: dict[str, float] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.generators: dict[str, torch.Generator] = {"generator": self.generator}
        self.bar = None

    def track(
        self,
        tensors: dict[str, torch.Tensor],
        optimizers: dict[str, torch.optim.Optimizer],
        generators: dict[str, torch.Generator] | None = None,
    ) -> None:
        """What a checkpoint holds: live tensors (restored in place), optimizers, and extra random generators."""
        self.tensors, self.optimizers = tensors, optimizers
        self.generators = {"generator": self.generator, **(generators or {})}

    def cached(self, name: str, compute) -> torch.Tensor:
        """`compute()`, kept beside the checkpoints so that a resumed run uses exactly the same tensor."""
        path = self.dir / f"{name}.safetensors" if self.dir is not None else None
        if path is not None and self.resume and path.exists():
            return load_file(path)[name].to(self.device).clone()
        value = compute()
        if path is not None and self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_file({name: value.detach().cpu().contiguous()}, path)
        return value

    def start_step(self) -> int:
        """The first step to run: 0, or the latest checkpoint's step when resuming (its state restored)."""
        step = 0
        latest = latest_checkpoint(self.dir) if self.resume and self.dir is not None else None
        if latest is not None:
            step = self._load(latest)
        self.bar = tqdm(
            total=self.total,
            initial=step,
            desc=f"{self.identity['method']} {', '.join(self.identity['concepts'])}",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        return step

    def end_step(self, step: int, losses: dict[str, float]) -> None:
        """Call after step `step` (0-based) finished; raises ErasureDiverged on a bad loss."""
        for name, value in losses.items():
            ema = self.ema.get(name)
            problem = None
            if not math.isfinite(value):
                problem = f"{name} = {value}."
            elif self.factor and ema is not None and value > 1.0 and value > self.factor * max(ema, 1e-3):
                problem = f"{name} = {value:.4g}, more than {self.factor:g}x its running mean {ema:.4g}."
            if problem:
                if self.bar is not None:
                    self.bar.close()
                raise ErasureDiverged(f"{self.identity['method']} diverged at step {step}: {problem}")
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

    def _save(self, step: int) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        state = dict(self.identity, ema=self.ema, history=self.history)
        save_checkpoint(
            self.dir, step, {STATE_GROUP: self.tensors}, self.optimizers, self.generators, state=state
        )

    def _load(self, folder: Path) -> int:
        state = load_checkpoint(folder, self.optimizers, self.generators)
        for key, value in self.identity.items():
            if state.get(key) != value:
                raise ValueError(
                    f"the checkpoint in {folder} was made with a different {key}; resume with the same one."
                )
        saved = load_tensors(folder, STATE_GROUP)
        with torch.no_grad():
            for name, live in self.tensors.items():
                live.copy_(saved[name].to(live.device))
        self.ema, self.history = state["ema"], state["history"]
        return int(state["step"])
