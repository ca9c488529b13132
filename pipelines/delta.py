"""Erasure deltas: the tensors an erasure changed, as a small safetensors file described by a JSON file.

    save_delta(result, "runs/van-gogh")                      # delta.safetensors + erasure.json
    pipe = load_erased("canvas-sd", "runs/van-gogh")         # base pipeline + delta
    apply_delta(any_compatible_pipeline, "runs/van-gogh")

`delta.safetensors` maps '<component>.<parameter name>' (e.g. 'unet.up_blocks.1.attentions.0.transformer_blocks.0
.attn2.to_v.weight') to the tensor's new value. `erasure.json` says what was erased (method, concept, kind,
anchor), from which base, with which config and library versions, the content sha256 of the delta's tensors
(`content_sha256`) and their names.
Loading needs nothing but these two files and a compatible base pipeline.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DELTA_FILE = "delta.safetensors"
META_FILE = "erasure.json"


def _version(package: str) -> str:
    """The imported module's __version__ (e.g. torch's '2.14.1+cu130'), else the installed distribution's."""
    try:
        return str(importlib.import_module(package).__version__)
    except (ImportError, AttributeError):
        pass
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (what erasure.json recorded before `content_sha256`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors themselves: for each name in sorted order, its name, dtype, shape and raw bytes.

    Unlike a hash of the file, it does not depend on how safetensors orders the header's metadata map, so the
    same erasure run twice records the same hash.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_delta(result, directory: str | Path, base_model: str | None = None) -> Path:
    """Write an erasure's delta to `directory`/delta.safetensors and its description to `directory`/erasure.json.

    `result` is an `erasure.engine.ErasureResult`, or a list of them for concepts erased one after another (each
    from the previous one's pipeline): their deltas merge in order, and method, concept, kind, anchor, config,
    steps and seconds then hold one value per erasure. `base_model` overrides the base recorded (by default the
    name or folder the first erasure's pipeline was loaded from). Returns the delta file's path.
    """
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DELTA_FILE
    merged = {}
    for r in results:
        merged.update(r.delta)
    tensors = {name: value.detach().cpu().contiguous() for name, value in sorted(merged.items())}
    concepts = ", ".join(r.concept for r in results)
    save_file(tensors, path, metadata={"format": "erasure-delta", "concept": concepts})

    def field(name):
        values = [getattr(r, name) for r in results]
        return values[0] if len(values) == 1 else values

    meta = {key: field(key) for key in ("method", "concept", "kind", "anchor", "config", "steps")}
    meta.update(
        base=base_model if base_model is not None else results[0].base,
        seconds=round(sum(r.seconds for r in results), 3),
        peak_memory_bytes=max(r.peak_memory_bytes for r in results),
        versions={p: _version(p) for p in ("torch", "diffusers", "transformers", "erasure")},
        delta_sha256=content_sha256(tensors),
        delta_bytes=path.stat().st_size,
        tensors={name: list(value.shape) for name, value in tensors.items()},
    )
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_delta(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The delta tensors and the erasure.json description from `directory`, after checking their content sha256."""
    directory = Path(directory)
    meta_path, path = directory / META_FILE, directory / DELTA_FILE
    if not meta_path.is_file() or not path.is_file():
        raise ValueError(
            f"{directory} holds no erasure delta ({DELTA_FILE} and {META_FILE} are both needed)."
        )
    meta = json.loads(meta_path.read_text())
    tensors = load_file(path)
    if sorted(tensors) != sorted(meta.get("tensors", {})):
        raise ValueError(f"the tensors in {path} differ from those listed in {meta_path}.")
    recorded = meta.get("delta_sha256")
    # erasure.json files written before the content hash recorded the sha256 of the file itself; both are checked.
    if content_sha256(tensors) != recorded and file_sha256(path) != recorded:
        raise ValueError(
            f"{path} does not match the sha256 recorded in {meta_path}; the delta is corrupt or was replaced."
        )
    return tensors, meta


def apply_delta(pipeline, directory_or_delta) -> object:
    """Write a delta's tensors into `pipeline` in place and return it.

    `directory_or_delta` is a folder written by `save_delta` (its sha256 is checked) or a dict of tensors as in
    `ErasureResult.delta`. Every name and shape is checked before anything is written.
    """
    if isinstance(directory_or_delta, dict):
        delta = directory_or_delta
    else:
        delta, _ = load_delta(directory_or_delta)
    modules = {k: v for k, v in pipeline.components.items() if isinstance(v, torch.nn.Module)}
    states = {}
    for name, value in delta.items():
        component, _, param = name.partition(".")
        if component not in modules:
            raise ValueError(
                f"the delta tensor {name!r} names a component {component!r} that the pipeline does not have."
            )
        module = modules[component]
        state = states.setdefault(component, module.state_dict())
        if param not in state:
            raise ValueError(f"the delta tensor {name!r} does not exist in the pipeline's {component}.")
        if tuple(state[param].shape) != tuple(value.shape):
            raise ValueError(
                f"the delta tensor {name!r} has shape {tuple(value.shape)} but the pipeline's has "
                f"{tuple(state[param].shape)}."
            )
    with torch.no_grad():
        for name, value in delta.items():
            component, _, param = name.partition(".")
            target = states[component][param]
            target.copy_(value.to(device=target.device, dtype=target.dtype))
    return pipeline


def load_erased(base: str | None, run_dir: str | Path, device: str | torch.device = "cpu"):
    """`load_pipeline(base)` with the delta in `run_dir` applied; `base=None` uses the base recorded there."""
    from pipelines.loading import load_pipeline

    delta, meta = load_delta(run_dir)
    pipeline = load_pipeline(base or meta["base"], device=device)
    return apply_delta(pipeline, delta)
