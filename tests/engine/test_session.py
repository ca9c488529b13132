"""The engine's training session: resume from a checkpoint, divergence checks."""

from __future__ import annotations

import pytest
import torch

from erasure.engine import ErasureDiverged, TrainingRun, erase
from erasure.methods.doco import DoCoConfig
from tests.helpers import TINY_DOCO, fresh, interrupted_after_checkpoint, pool_concept, small_generator


def test_resume_matches_uninterrupted_run(tiny_pipeline, tiny_pipeline_dir, tmp_path, monkeypatch):
    config = DoCoConfig(**{**TINY_DOCO, "steps": 6, "d_warmup": 2})
    whole = erase(
        tiny_pipeline, "van gogh", config=config, seed=3, checkpoint_dir=tmp_path / "a", progress=False
    )

    with interrupted_after_checkpoint(monkeypatch, 4):
        erase(
            fresh(tiny_pipeline_dir),
            "van gogh",
            config=config,
            seed=3,
            checkpoint_dir=tmp_path / "b",
            progress=False,
        )
    assert (tmp_path / "b" / "step-000004" / "state.json").exists()
    resumed = erase(
        fresh(tiny_pipeline_dir),
        "van gogh",
        config=config,
        seed=3,
        checkpoint_dir=tmp_path / "b",
        resume=True,
        progress=False,
    )
    assert resumed.delta.keys() == whole.delta.keys()
    assert all(torch.equal(whole.delta[n], resumed.delta[n]) for n in whole.delta)
    assert [h["step"] for h in resumed.history] == list(range(6))

    with pytest.raises(ValueError, match="different"):
        erase(
            fresh(tiny_pipeline_dir),
            "van gogh",
            config=DoCoConfig(**{**TINY_DOCO, "steps": 6, "d_warmup": 2, "learning_rate": 1.0}),
            seed=3,
            checkpoint_dir=tmp_path / "b",
            resume=True,
            progress=False,
        )


def test_nan_raises_erasure_diverged(tiny_pipeline):
    nan_latents = torch.full((4, 4, 16, 16), float("nan"))
    with pytest.raises(ErasureDiverged, match="step 0"):
        erase(
            tiny_pipeline,
            "van gogh",
            config=DoCoConfig(**TINY_DOCO),
            anchor_latents=nan_latents,
            progress=False,
        )


def test_exploding_loss_raises_erasure_diverged():
    from accelerate import Accelerator

    identity = {"method": "doco", "concepts": ["x"]}
    run = TrainingRun(identity, 0, DoCoConfig(steps=10), progress=False, accelerator=Accelerator(cpu=True))
    for step in range(5):
        run.end_step(step, {"prior": 0.5})
    with pytest.raises(ErasureDiverged, match="prior"):
        run.end_step(5, {"prior": 500.0})


def test_divergence_factor_zero_stops_only_on_nan():
    run = TrainingRun({"method": "gan", "concepts": ["x"]}, 0, DoCoConfig(steps=10, divergence_factor=0.0))
    for step in range(5):
        run.end_step(step, {"adversarial": 0.01})
    run.end_step(5, {"adversarial": 500.0})  # a GAN game's swing, not a divergence
    with pytest.raises(ErasureDiverged, match="adversarial"):
        run.end_step(6, {"adversarial": float("nan")})


def test_unlearn_resumes_from_its_checkpoint(tiny_clip_dir, tmp_path, monkeypatch):
    """The GAN unlearner runs in the same session: an interrupted run resumes to the uninterrupted result."""
    from erasure.engine import unlearn
    from erasure.gan.text_unlearn import TextUnlearnConfig

    concept, threshold = pool_concept(small_generator(), tiny_clip_dir, 32)
    config = TextUnlearnConfig(
        steps=4, pool=32, batch=4, concept_threshold=threshold, rest_threshold=threshold, checkpoint_every=2
    )
    whole, info = unlearn(small_generator(), [concept], config, clip_dir=tiny_clip_dir, progress=False)

    kwargs = {"clip_dir": tiny_clip_dir, "progress": False, "checkpoint_dir": tmp_path}
    with interrupted_after_checkpoint(monkeypatch, 2):
        unlearn(small_generator(), [concept], config, **kwargs)
    assert (tmp_path / "step-000002" / "state.json").exists()
    resumed, resumed_info = unlearn(small_generator(), [concept], config, resume=True, **kwargs)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_info["history"] == info["history"]
