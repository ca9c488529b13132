"""The one checkpoint format of the project: erasures, the GAN unlearner and the Canvas trainers all write it.

    <dir>/step-000100/<group>.safetensors   one file per named group of tensors (weights, EMA copies, ...)
    <dir>/step-000100/optimizers.safetensors every optimizer's state tensors, named '<optimizer>.<index>.<key>'
    <dir>/step-000100/state.json            step, optimizers' param groups, RNG states and the caller's JSON state

Nothing is pickled. A checkpoint is written under a temporary name and renamed into place when complete, and
then the older ones are removed, so the newest complete checkpoint is always the one `latest_checkpoint` finds.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

OPTIMIZERS_FILE = "optimizers.safetensors"
STATE_FILE = "state.json"


def checkpoint_folder(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step-{step:06d}"


def save_checkpoint(
    directory: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    generators: dict[str, torch.Generator] | None = None,
    state: dict | None = None,
) -> Path:
    """Write checkpoint `step` to `directory` (see the module docstring) and remove the older ones.

    `tensors` maps a group name to its tensors; `generators` maps a name to a torch.Generator whose state is
    kept (`torch.default_generator` is the global CPU one); `state` is any JSON-serialisable record.
    """
    folder = checkpoint_folder(directory, step)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for group, values in tensors.items():
        save_file(
            {k: v.detach().cpu().contiguous().clone() for k, v in values.items()},
            tmp / f"{group}.safetensors",
        )
    optimizer_tensors, param_groups = {}, {}
    for name, optimizer in (optimizers or {}).items():
        saved = optimizer.state_dict()
        for index, entry in saved["state"].items():
            for key, value in entry.items():
                optimizer_tensors[f"{name}.{index}.{key}"] = value.detach().cpu().contiguous().clone()
        param_groups[name] = saved["param_groups"]
    save_file(optimizer_tensors, tmp / OPTIMIZERS_FILE)
    rng = {
        name: base64.b64encode(g.get_state().cpu().numpy().tobytes()).decode()
        for name, g in (generators or {}).items()
    }
    record = {**(state or {}), "step": step, "param_groups": param_groups, "rng": rng}
    (tmp / STATE_FILE).write_text(json.dumps(record))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for old in Path(directory).glob("step-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint folder in `directory`, or None."""
    done = sorted(p for p in Path(directory).glob("step-*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def read_state(folder: str | Path) -> dict:
    """The checkpoint's state.json: the caller's state plus 'step', 'param_groups' and 'rng'."""
    return json.loads((Path(folder) / STATE_FILE).read_text())


def load_tensors(folder: str | Path, group: str) -> dict[str, torch.Tensor]:
    """One group of tensors from a checkpoint (on CPU)."""
    return load_file(Path(folder) / f"{group}.safetensors")


def load_checkpoint(
    folder: str | Path,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    generators: dict[str, torch.Generator] | None = None,
) -> dict:
    """Restore `optimizers` and `generators` in place from `folder`; returns its state (see `read_state`).

    The tensor groups are read by the caller with `load_tensors`, since only it knows where each one goes.
    `Optimizer.load_state_dict` moves each state tensor to its parameter's device (the step counter stays on
    the CPU, as torch keeps it).
    """
    folder = Path(folder)
    state = read_state(folder)
    if optimizers:
        saved = load_file(folder / OPTIMIZERS_FILE)
        for name, optimizer in optimizers.items():
            entries: dict[int, dict] = defaultdict(dict)
            for key, value in saved.items():
                owner, index, field = key.split(".", 2)
                if owner == name:
                    entries[int(index)][field] = value
            groups = [
                {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
                for g in state["param_groups"][name]
            ]
            optimizer.load_state_dict({"state": dict(entries), "param_groups": groups})
    for name, generator in (generators or {}).items():
        raw = bytearray(base64.b64decode(state["rng"][name]))
        generator.set_state(torch.frombuffer(raw, dtype=torch.uint8))
    return state
