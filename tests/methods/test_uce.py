"""UCE: the closed form against a least-squares solve, which tensors change, the texts it uses, and its speed."""

from __future__ import annotations

import time

import pytest
import torch

from erasure.canvas import world
from erasure.canvas.sd_config import build_unet, build_vae
from erasure.canvas.tokenizer import build_tokenizer
from erasure.engine import erase
from erasure.methods.base import cross_attention_kv
from erasure.methods.request import build_request
from erasure.methods.uce import UCEConfig, edit_texts, erase_tokens, uce_weight
from tests.helpers import all_tensors, fresh, pipeline_of, world_text_encoder


@pytest.mark.parametrize(
    "lamb, erase_scale, preserve_scale", [(0.5, 1.0, 0.1), (0.1, 2.0, 1.0), (1e-3, 1.0, 0.0)]
)
def test_closed_form_equals_least_squares(lamb, erase_scale, preserve_scale):
    """W_new minimises es|W C_e - V*|^2 + ps|W C_p - W_old C_p|^2 + lamb|W - W_old|^2: the stacked system."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 6, bias=False).double()
    w_old = layer.weight.detach()
    c_e, c_star, c_p = torch.randn(3, 5).double(), torch.randn(3, 5).double(), torch.randn(7, 5).double()
    v_star = layer(c_star).detach()  # W_old c*_e
    ours = uce_weight(w_old, c_e, v_star, c_p, lamb, erase_scale, preserve_scale)

    es, ps, lam = erase_scale**0.5, preserve_scale**0.5, lamb**0.5
    a = torch.cat([es * c_e, ps * c_p, lam * torch.eye(5, dtype=torch.float64)])  # rows: inputs
    b = torch.cat([es * v_star, ps * layer(c_p).detach(), lam * w_old.T])  # rows: wanted outputs
    solution = torch.linalg.lstsq(a, b).solution  # (5, 6) = W_new^T
    torch.testing.assert_close(ours, solution.T, rtol=1e-9, atol=1e-9)
    # ... and it satisfies the normal equations of that system.
    torch.testing.assert_close(a.T @ a @ ours.T, a.T @ b, rtol=1e-9, atol=1e-9)


def test_only_key_and_value_weights_change(tiny_pipeline, tiny_pipeline_dir):
    result = erase(tiny_pipeline, "van gogh", method="uce", progress=False)
    base, edited = all_tensors(fresh(tiny_pipeline_dir)), all_tensors(result.pipeline)
    diff = {n for n in base if not torch.equal(base[n], edited[n])}
    kv = {f"unet.{n}" for n in cross_attention_kv(result.pipeline.unet)}
    assert diff == kv == set(result.delta)
    assert (
        result.config["expand_prompts"] and result.steps == 1
    )  # canvas defaults on a Canvas-vocabulary model
    values_only = erase(fresh(tiny_pipeline_dir), "cat", method="uce", config=UCEConfig(edit_keys=False))
    assert values_only.delta and all(".attn2.to_v." in n for n in values_only.delta)


def test_edit_moves_the_concept_towards_its_guide(tiny_pipeline):
    request = build_request(tiny_pipeline, "cat")
    config = UCEConfig.canvas()
    result = erase(tiny_pipeline, "cat", method="uce", config=config, progress=False)
    pairs, _ = edit_texts(request, config)
    c_e, c_star = erase_tokens(tiny_pipeline, pairs, config.token_rule, "cpu")
    name = next(n for n in result.delta if n.endswith("attn2.to_v.weight"))
    w_old = tiny_pipeline.unet.state_dict()[name.removeprefix("unet.")]
    w_new = result.delta[name]
    before = (c_e @ w_old.T - c_star @ w_old.T).pow(2).mean()
    after = (c_e @ w_new.T - c_star @ w_old.T).pow(2).mean()
    assert after < 0.5 * before


def test_edit_texts():
    class Request:
        canvas, kind, concepts, anchors = True, "style", ["van gogh"], [world.PLAIN]
        target_prompts, anchor_prompts = ["a cat in van gogh style"], ["a painting of a cat"]
        retain_prompts = ("a cat in monet style", "a painting of a cat")

    pairs, preserve = edit_texts(Request, UCEConfig())
    assert pairs == [("van gogh", "")] and "monet" in preserve and len(preserve) == 11
    pairs, preserve = edit_texts(Request, UCEConfig(expand_prompts=True))
    assert pairs[1] == ("a cat in van gogh style", "a painting of a cat")
    assert "a cat in monet style" in preserve and "a painting of a cat" in preserve
    assert not any("van gogh" in p for p in preserve)
    Request.canvas, Request.anchors = False, ["painting"]
    pairs, preserve = edit_texts(Request, UCEConfig())
    assert pairs == [("van gogh", "painting")] and preserve == ["a painting of a cat"]
    # Two concepts: each name with its own guide; neither is preserved.
    Request.canvas, Request.concepts, Request.anchors = (
        True,
        ["van gogh", "monet"],
        [world.PLAIN, world.PLAIN],
    )
    pairs, preserve = edit_texts(Request, UCEConfig())
    assert pairs == [("van gogh", ""), ("monet", "")] and "monet" not in preserve and len(preserve) == 10


def test_token_rules(tiny_pipeline):
    pairs = [("a cat in van gogh style", "a painting of a cat"), ("van gogh", "")]
    last_e, last_g = erase_tokens(tiny_pipeline, pairs, "last", "cpu")
    trail_e, trail_g = erase_tokens(tiny_pipeline, pairs, "trailing", "cpu")
    length = tiny_pipeline.tokenizer.model_max_length
    assert last_e.shape == last_g.shape == (2, 32)
    # trailing: from the last word token ('style': 6, 'gogh': 2) to the end, cut to the shorter remainder.
    assert trail_e.shape == trail_g.shape == ((length - 6) + (length - 2), 32)
    torch.testing.assert_close(trail_e[0], last_e[0])


def test_fast_on_a_canvas_sized_model(tmp_path):
    """canvas-sd's shapes (5.5M-parameter UNet, 96-d text states, 32 tokens): one erasure well within 5 s."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(tmp_path / "tok")
    text_encoder = world_text_encoder(tokenizer, 96, 384, 3, 3)
    pipe = pipeline_of(build_vae(), text_encoder, tokenizer, build_unet(cross_attention_dim=96))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        start = time.perf_counter()
        result = erase(pipe, "van gogh", method="uce", progress=False)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert len(result.delta) == 14 and seconds < 5.0, seconds
