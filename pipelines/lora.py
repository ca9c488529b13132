"""An erasure as a LoRA that plain diffusers applies: `pipe.load_lora_weights("runs/van-gogh/lora")`.

    record = save_lora(delta, base_pipeline, "runs/van-gogh/lora")   # pytorch_lora_weights.safetensors

The delta (`pipelines.delta`) holds the new value of every tensor an erasure changed; the LoRA holds each change
W - W0 of a linear or convolution layer as two factors B A, from a truncated SVD at one rank for every layer: the
smallest rank at which the relative Frobenius error |(W - W0) - B A| / |W - W0| of every changed weight is at most
`max_relative_error` (1% by default). A changed bias travels exactly, as `lora_B.bias` (PEFT's `lora_bias`, one flag for every layer: such a LoRA
loads and runs, but PEFT cannot fuse it into layers that have no bias of their own).

The file is in diffusers' PEFT layout: '<component>.<module path>.lora_A.weight' and '.lora_B.weight' (and
'.lora_B.bias'), no alphas, so every layer applies B A at scale 1. One rank for all keeps the scale 1 whichever
diffusers release reads it (older releases give every layer the most common rank's alpha). diffusers needs `peft`
installed to load a LoRA; this package is not needed.

A change that no LoRA can hold (a normalisation layer's weights, an embedding table, a layer with groups) makes
`save_lora` raise LoraExportError naming the tensor: the full delta and pipeline/ still describe such erasures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

LORA_FOLDER = "lora"
LORA_FILE = "pytorch_lora_weights.safetensors"  # the weight name diffusers' load_lora_weights looks for
DEFAULT_MAX_RELATIVE_ERROR = 0.01


class LoraExportError(ValueError):
    """A delta that no LoRA can hold; the message is one sentence."""


def rank_for(singular_values: torch.Tensor, max_relative_error: float) -> int:
    """The smallest rank r whose truncation keeps sqrt(sum_{i>r} s_i^2 / sum_i s_i^2) <= max_relative_error."""
    energy = singular_values.double().pow(2)
    total = float(energy.sum())
    if total == 0.0:
        return 0
    tail = energy.flip(0).cumsum(0).flip(0)  # tail[r] = sum_{i >= r} s_i^2
    for r in range(len(energy)):
        if math.sqrt(float(tail[r]) / total) <= max_relative_error:
            return r
    return len(energy)


def _layer(pipeline, component: str, module_path: str) -> nn.Module:
    modules = {k: v for k, v in pipeline.components.items() if isinstance(v, nn.Module)}
    if component not in modules:
        raise LoraExportError(
            f"the delta names a component {component!r} that the base pipeline does not have."
        )
    try:
        return modules[component].get_submodule(module_path)
    except AttributeError:
        raise LoraExportError(f"the base pipeline's {component} has no layer {module_path!r}.") from None


def _changes(delta: dict[str, torch.Tensor], base) -> dict[str, tuple[nn.Module, dict[str, torch.Tensor]]]:
    """{'<component>.<layer path>': (the base's layer, {'weight'|'bias': W - W0})} for every changed tensor;
    refuses what a LoRA cannot hold."""
    layers: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]] = {}
    for name, new in sorted(delta.items()):
        component, _, param = name.partition(".")
        module_path, _, leaf = param.rpartition(".")
        layer = _layer(base, component, module_path)
        plain = isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)
        if leaf not in ("weight", "bias") or not plain:
            raise LoraExportError(
                f"the erasure changed {name}, a {type(layer).__name__} tensor that a LoRA cannot hold (only "
                "linear and convolution layers); use the run's delta or pipeline/ instead."
            )
        change = new.detach().double().cpu() - getattr(layer, leaf).detach().double().cpu()
        if bool(change.any()):
            layers.setdefault(f"{component}.{module_path}", (layer, {}))[1][leaf] = change
    return layers


def lora_state_dict(
    delta: dict[str, torch.Tensor], base, max_relative_error: float = DEFAULT_MAX_RELATIVE_ERROR
) -> tuple[dict[str, torch.Tensor], dict]:
    """The LoRA tensors of `delta` (new values of `base`'s tensors, as `ErasureResult.delta` or `load_delta`) and
    its record: {'rank', 'max_relative_error' (the largest one reached), 'bound', 'layers'}."""
    layers = _changes(delta, base)
    if not layers:
        raise LoraExportError(
            "the erasure changed no tensor of the base pipeline; there is nothing to export."
        )
    factors = {
        prefix: torch.linalg.svd(change["weight"].reshape(len(change["weight"]), -1), full_matrices=False)
        for prefix, (_, change) in layers.items()
        if "weight" in change
    }
    rank = max([rank_for(s, max_relative_error) for _, s, _ in factors.values()] + [1])

    tensors, worst = {}, 0.0
    for prefix, (layer, change) in layers.items():
        dtype = layer.weight.dtype
        if prefix in factors:
            u, s, vh = factors[prefix]
            r = min(rank, len(s))
            root = s[:r].sqrt()
            up, down = u[:, :r] * root, root[:, None] * vh[:r]
            if r < rank:  # a layer of lower rank than the shared one: zero rows/columns keep the shapes equal
                up = torch.cat([up, up.new_zeros(up.shape[0], rank - r)], 1)
                down = torch.cat([down, down.new_zeros(rank - r, down.shape[1])], 0)
            worst = max(worst, float(s[r:].norm() / s.norm()))  # the truncation's relative Frobenius error
        else:  # only the bias changed
            up = torch.zeros(layer.weight.shape[0], rank, dtype=torch.float64)
            down = torch.zeros(rank, layer.weight[0].numel(), dtype=torch.float64)
        if isinstance(layer, nn.Conv2d):  # PEFT: A is a conv of the layer's kernel, B a 1x1 conv
            down = down.reshape(rank, *layer.weight.shape[1:])
            up = up.reshape(up.shape[0], rank, 1, 1)
        tensors[f"{prefix}.lora_A.weight"] = down.to(dtype).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = up.to(dtype).contiguous()
        if "bias" in change:
            tensors[f"{prefix}.lora_B.bias"] = change["bias"].to(dtype).contiguous()
    if any(key.endswith(".bias") for key in tensors):  # PEFT's lora_bias is one flag for every layer
        for prefix, (layer, _) in layers.items():
            bias = torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype)
            tensors.setdefault(f"{prefix}.lora_B.bias", bias)
    record = {
        "rank": rank,
        "max_relative_error": worst,
        "bound": max_relative_error,
        "layers": len(layers),
    }
    return tensors, record


def save_lora(
    delta: dict[str, torch.Tensor],
    base,
    directory: str | Path,
    max_relative_error: float = DEFAULT_MAX_RELATIVE_ERROR,
) -> dict:
    """Write `directory`/pytorch_lora_weights.safetensors for `delta` on `base` and return its record (the
    `lora_state_dict` one plus 'file' and 'bytes'). Raises LoraExportError when the delta is not a LoRA's."""
    tensors, record = lora_state_dict(delta, base, max_relative_error)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LORA_FILE
    save_file(tensors, path, metadata={"format": "pt"})
    return {**record, "file": f"{directory.name}/{LORA_FILE}", "bytes": path.stat().st_size}


def export_lora(run_dir: str | Path, base, max_relative_error: float = DEFAULT_MAX_RELATIVE_ERROR) -> dict:
    """The LoRA of the erasure run in `run_dir` (its delta.safetensors, relative to `base`, the run's base
    pipeline) written to `run_dir`/lora/, and its record kept in erasure.json under 'lora'. A delta that is not a
    LoRA's is recorded as {'written': False, 'reason': ...} instead, and nothing is written."""
    from pipelines.delta import META_FILE, load_delta

    run_dir = Path(run_dir)
    delta, meta = load_delta(run_dir)
    try:
        record = {"written": True, **save_lora(delta, base, run_dir / LORA_FOLDER, max_relative_error)}
    except LoraExportError as err:
        record = {"written": False, "reason": str(err)}
    meta["lora"] = record
    (run_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return record


def load_lora(pipeline, folder: str | Path):
    """`pipeline` with the LoRA in `folder` (a run's lora/ or the file itself) applied, through plain diffusers'
    `load_lora_weights`; a missing file or a LoRA that does not fit raises ValueError with one sentence."""
    path = Path(folder)
    file = path if path.is_file() else path / LORA_FILE
    if not file.is_file():
        raise ValueError(f"{path} holds no LoRA ({LORA_FILE} is missing).")
    try:
        pipeline.load_lora_weights(str(file.parent), weight_name=file.name)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"the LoRA in {file} does not fit this pipeline ({reason}).") from None
    return pipeline
