"""LoRA export: the rank rule by hand, and a LoRA that plain diffusers loads reproducing the delta's outputs."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.delta import apply_delta, save_delta
from pipelines.lora import LORA_FILE, LoraExportError, export_lora, load_lora, lora_state_dict, rank_for
from tests.helpers import fresh

# The stated tolerance: with changes truncated to 1% relative error, the LoRA's UNet and text-encoder outputs stay
# within 2% (largest absolute difference) of how far the full delta moves them from the base's.
RELATIVE_TOLERANCE = 0.02


def test_rank_is_the_smallest_within_the_bound():
    s = torch.tensor(
        [2.0, 1.0, 0.0]
    )  # energy 4, 1, 0 of 5: dropping all leaves 100%, keeping one leaves sqrt(1/5)
    assert rank_for(s, 0.5) == 1  # sqrt(0.2) = 0.447 <= 0.5
    assert rank_for(s, 0.4) == 2
    assert rank_for(s, 0.0) == 2  # the zero singular value is never needed
    assert rank_for(torch.zeros(3), 0.01) == 0


def _outputs(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = pipe.tokenizer(["a tree in the style of van gogh"], padding="max_length", return_tensors="pt")
    x = torch.randn(2, pipe.unet.config.in_channels, 8, 8, generator=g)
    with torch.no_grad():
        text = pipe.text_encoder(tokens.input_ids)[0]
        unet = pipe.unet(x, torch.tensor([10, 600]), encoder_hidden_states=text.expand(2, -1, -1)).sample
    return unet, text


def _delta(base):
    """Rank-2 changes of every cross-attention key/value, a bias change, a full-rank conv change and a change of
    the text encoder's attention: what the methods' trained sets hold."""
    g, delta = torch.Generator().manual_seed(1), {}
    for name, p in base.unet.named_parameters():
        if name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            low = torch.randn(p.shape[0], 2, generator=g) @ torch.randn(2, p.shape[1], generator=g)
            delta[f"unet.{name}"] = p.detach() + 0.1 * low
        elif name.endswith("attn2.to_out.0.bias"):
            delta[f"unet.{name}"] = p.detach() + 0.05
        elif name == "conv_in.weight":
            delta[f"unet.{name}"] = p.detach() + 0.01 * torch.randn(p.shape, generator=g)
    for name, p in base.text_encoder.named_parameters():
        if name.endswith("layers.0.self_attn.v_proj.weight"):
            delta[f"text_encoder.{name}"] = p.detach() + 0.1 * torch.randn(p.shape, generator=g)
    return delta


def test_a_lora_loaded_by_diffusers_reproduces_the_delta(tiny_pipeline_dir, tmp_path):
    base = fresh(tiny_pipeline_dir)
    delta = _delta(base)
    tensors, record = lora_state_dict(delta, base, 0.01)
    assert record["max_relative_error"] <= 0.01 and record["layers"] == len(
        {n.rpartition(".")[0] for n in delta}
    )
    # One rank for every layer, the smallest for the hardest one (the full-rank changes here).
    assert len({t.shape[0] for n, t in tensors.items() if n.endswith("lora_A.weight")}) == 1
    assert not any(k.startswith("unet.conv_in.lora_B.bias") and tensors[k].any() for k in tensors)

    save_delta_dir = tmp_path / "run"
    erased = apply_delta(fresh(tiny_pipeline_dir), delta)
    (save_delta_dir / "lora").mkdir(parents=True)
    from pipelines.lora import save_lora

    written = save_lora(delta, base, save_delta_dir / "lora")
    assert written["file"] == f"lora/{LORA_FILE}" and written["bytes"] > 0
    with_lora = load_lora(fresh(tiny_pipeline_dir), save_delta_dir / "lora")  # diffusers' load_lora_weights
    (want_unet, want_text), (got_unet, got_text) = _outputs(erased), _outputs(with_lora)
    base_unet, base_text = _outputs(base)
    for got, want, before in ((got_unet, want_unet, base_unet), (got_text, want_text, base_text)):
        assert (got - want).abs().max() <= RELATIVE_TOLERANCE * (want - before).abs().max()


def test_a_low_rank_change_gets_its_rank(tiny_pipeline_dir):
    base = fresh(tiny_pipeline_dir)
    delta = {n: t for n, t in _delta(base).items() if n.endswith(("to_k.weight", "to_v.weight"))}
    tensors, record = lora_state_dict(delta, base, 0.01)
    assert (
        record["rank"] == 2 and record["max_relative_error"] < 1e-6
    )  # exact: two factors hold a rank-2 change
    assert not any(k.endswith(".bias") for k in tensors)  # no bias changed: no lora_bias


def test_what_no_lora_holds_is_recorded_not_written(tiny_pipeline_dir, tmp_path):
    base = fresh(tiny_pipeline_dir)
    name = next(n for n, _ in base.unet.named_parameters() if n.endswith("norm1.weight"))
    delta = {f"unet.{name}": base.unet.get_parameter(name).detach() + 1.0}
    with pytest.raises(LoraExportError, match="a LoRA cannot hold"):
        lora_state_dict(delta, base)

    class Result:  # what save_delta reads of an ErasureResult
        method, concepts, kind, anchors, config, steps, seconds, peak_memory_bytes = (
            "test",
            ["van gogh"],
            "style",
            ["plain"],
            {},
            1,
            0.0,
            0,
        )
        base = str(tiny_pipeline_dir)

    Result.delta = delta
    save_delta(Result(), tmp_path)
    record = export_lora(tmp_path, base)
    assert record["written"] is False and "a LoRA cannot hold" in record["reason"]
    assert json.loads((tmp_path / "erasure.json").read_text())["lora"] == record
    assert not (tmp_path / "lora").exists()
    with pytest.raises(ValueError, match="holds no LoRA"):
        load_lora(base, tmp_path / "lora")
