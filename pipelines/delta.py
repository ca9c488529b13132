"""Erasure deltas: the tensors an erasure changed, as a small safetensors file described by a JSON file.

    save_delta(result, "runs/van-gogh")                      # delta.safetensors + erasure.json
    pipe = load_erased("canvas-sd", "runs/van-gogh")         # base pipeline + delta
    apply_delta(any_compatible_pipeline, "runs/van-gogh")
    save_delta(later, "runs/then-monet", previous=load_delta("runs/van-gogh"))   # an erasure on top of another

`delta.safetensors` maps '<component>.<parameter name>' (e.g. 'unet.up_blocks.1.attentions.0.transformer_blocks.0
.attn2.to_v.weight') to the tensor's new value, relative to the base model. `erasure.json` says from which base,
what was erased from it (`concepts`, every one so far) and how: `erasures`, the chain of erasures in the order
they ran (each: method, concepts, kind, anchors, config, steps, seconds, peak memory), with the library versions,
the content sha256 of the delta's tensors (`content_sha256`) and their names. An erasure run on top of an earlier
one's pipeline merges that run's delta and chain into its own, so its folder alone reproduces the final pipeline
from the base. Loading needs nothing but these two files and a compatible base pipeline.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from importlib import metadata
from pathlib import Path

import torch
from safetensors import SafetensorError
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


def save_delta(
    result, directory: str | Path, base_model: str | None = None, previous: tuple[dict, dict] | None = None
) -> Path:
    """Write an erasure's delta to `directory`/delta.safetensors and its description to `directory`/erasure.json.

    `result` is an `erasure.engine.ErasureResult`, or a list of them run one after another (each from the previous
    one's pipeline): their deltas merge in order and each is one entry of the chain. `previous` is `load_delta` of
    the run whose pipeline the first result started from: its tensors merge first, its chain comes first and its
    base is the base. Otherwise `base_model` overrides the base recorded (by default the name or folder the first
    erasure's pipeline was loaded from). Returns the delta file's path.
    """
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DELTA_FILE
    earlier_delta, earlier_meta = previous if previous is not None else ({}, None)
    merged = dict(earlier_delta)
    for r in results:
        merged.update(r.delta)
    tensors = {name: value.detach().cpu().contiguous() for name, value in sorted(merged.items())}
    chain = erasure_chain(earlier_meta) if earlier_meta is not None else []
    chain += [
        {
            "method": r.method,
            "concepts": list(r.concepts),
            "kind": r.kind,
            "anchors": list(r.anchors),
            "config": r.config,
            "steps": r.steps,
            "seconds": round(r.seconds, 3),
            "peak_memory_bytes": r.peak_memory_bytes,
        }
        for r in results
    ]
    concepts = erased_concepts(chain)[0]
    save_file(tensors, path, metadata={"format": "erasure-delta", "concept": ", ".join(concepts)})
    if earlier_meta is not None:
        base = earlier_meta["base"]
    else:
        base = base_model if base_model is not None else results[0].base
    meta = {
        "base": base,
        "concepts": concepts,
        "erasures": chain,
        "seconds": round(sum(step["seconds"] for step in chain), 3),
        "peak_memory_bytes": max(step["peak_memory_bytes"] for step in chain),
        "versions": {p: _version(p) for p in ("torch", "diffusers", "transformers", "erasure")},
        "delta_sha256": content_sha256(tensors),
        "delta_bytes": path.stat().st_size,
        "tensors": {name: list(value.shape) for name, value in tensors.items()},
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def erasure_chain(meta: dict) -> list[dict]:
    """The erasures an erasure.json describes, in the order they ran (see the module docstring).

    Files written before the chain existed hold method, concept, kind, anchor, config and steps at the top level
    (a list of values when several concepts ran one after another); they read as one entry per concept.
    """
    if "erasures" in meta:
        return [dict(step) for step in meta["erasures"]]
    if "concept" not in meta:
        raise ValueError("erasure.json lists no erasure (neither 'erasures' nor 'concept').")
    several = isinstance(meta["concept"], list)
    count = len(meta["concept"]) if several else 1

    def value(key, i):
        v = meta.get(key)
        return v[i] if several and isinstance(v, list) else v

    return [
        {
            "method": value("method", i),
            "concepts": [value("concept", i)],
            "kind": value("kind", i),
            "anchors": [value("anchor", i)],
            "config": value("config", i),
            "steps": value("steps", i),
            "seconds": meta.get("seconds", 0.0) / count,
            "peak_memory_bytes": meta.get("peak_memory_bytes", 0),
        }
        for i in range(count)
    ]


def erased_concepts(chain: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """(concepts, kinds, anchors), one entry per concept, in the order the erasures of `chain` removed them."""
    rows = [(c, step["kind"], a) for step in chain for c, a in zip(step["concepts"], step["anchors"])]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def erasure_run_of(model: str | Path) -> Path | None:
    """The run folder whose erasure.json describes the pipeline `model`, or None for a model no erasure made.

    `model` may be the run folder itself (erasure.json beside pipeline/) or its pipeline/ folder.
    """
    folder = Path(model)
    if not folder.is_dir():
        return None
    if (folder / META_FILE).exists():
        return folder
    if folder.name == "pipeline" and (folder.parent / META_FILE).exists():
        return folder.parent
    return None


def load_delta(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The delta tensors and the erasure.json description from `directory`, after checking their content sha256."""
    directory = Path(directory)
    meta_path, path = directory / META_FILE, directory / DELTA_FILE
    if not meta_path.is_file() or not path.is_file():
        raise ValueError(
            f"{directory} holds no erasure delta ({DELTA_FILE} and {META_FILE} are both needed)."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or not {"base", "tensors", "delta_sha256"} <= set(meta):
        raise ValueError(f"{meta_path} is corrupt: not a JSON object with base, tensors and delta_sha256.")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({type(err).__name__}).") from None
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


def erased_copy(base, run_dir_or_delta):
    """A pipeline sharing `base`'s components but copies of its UNet and text encoder(s), with a delta (a run folder or
    its loaded tensors, as `apply_delta` takes) applied to them (`base` keeps its weights): many erased models from
    one loaded base."""
    import copy

    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # from_pipe warns about casting; nothing is cast
    try:
        trained = {
            name: copy.deepcopy(getattr(base, name))
            for name in ("unet", "text_encoder", "text_encoder_2")
            if getattr(base, name, None) is not None
        }
        pipe = type(base).from_pipe(base, **trained)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    pipe.set_progress_bar_config(disable=True)
    return apply_delta(pipe, run_dir_or_delta)
