"""Shared fixtures: a tiny, randomly initialised canvas-shaped StableDiffusionPipeline built in the test itself.

It uses the same classes and the same world tokenizer as canvas-sd, so loading, saving and editing code is
exercised exactly as on the shipped model, in seconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel

from erasure.canvas.sd_config import build_unet, build_vae, inference_scheduler
from erasure.canvas.tokenizer import build_tokenizer

torch.set_num_threads(1)


def build_tiny_pipeline(tmp_dir, seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(tmp_dir)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=build_vae(scale=0.25),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=build_unet(cross_attention_dim=32, scale=0.25),
        scheduler=inference_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A saved tiny pipeline folder (safetensors + model_index.json), built once per test session."""
    root = tmp_path_factory.mktemp("tiny-sd")
    pipe = build_tiny_pipeline(root / "tokenizer-src")
    pipe.save_pretrained(root / "pipeline", safe_serialization=True)
    return root / "pipeline"


@pytest.fixture
def tiny_pipeline(tiny_pipeline_dir):
    """A fresh copy of the tiny pipeline for each test (tests may edit its weights)."""
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_pipeline_dir, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
