"""Shared fixtures: tiny, randomly initialised models of the shapes the project ships, built in the test session.

They use the same classes and the same world tokenizer as the shipped models, so loading, saving and editing code
is exercised exactly as on them, in seconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import StableDiffusionPipeline

from erasure.canvas.tokenizer import build_tokenizer
from erasure.canvas.world import OBJECTS, STYLES
from eval.judges.models import ConvJudge, Judges, create_judge_clip
from tests.helpers import build_tiny_pipeline

torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def random_judges() -> Judges:
    """Judges of the shipped shapes with random weights: they run, and their verdicts mean nothing."""
    torch.manual_seed(0)
    style, obj = ConvJudge(len(STYLES)).eval(), ConvJudge(len(OBJECTS)).eval()
    clip, tokenizer = create_judge_clip()
    return Judges(style, obj, torch.device("cpu"), clip=clip.eval(), clip_tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised canvas-clip-shaped CLIPModel with the world tokenizer, saved like the real one."""
    from transformers import CLIPModel

    from erasure.train.clip import canvas_clip_config

    root = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = build_tokenizer(root)
    torch.manual_seed(0)
    model = CLIPModel(canvas_clip_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    model.save_pretrained(root, safe_serialization=True)
    tokenizer.save_pretrained(root)
    return root
