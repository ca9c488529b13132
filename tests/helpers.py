"""Helpers shared by the tests (import them as `from tests.helpers import ...`): tiny models built in the test
itself, a pipeline reloaded from its folder, and snapshots of a module's tensors."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from erasure.canvas.sd_config import build_unet, build_vae, inference_scheduler, unet_config
from erasure.canvas.tokenizer import build_tokenizer
from erasure.canvas.world import STYLES
from erasure.engine import TrainingRun
from erasure.gan.text_unlearn import POOL_SEED
from erasure.train.discriminator import DiscriminatorConfig
from pipelines.canvas_clip import CanvasClip
from pipelines.stylegan import Generator, GeneratorConfig

# A few steps of everything for DoCo on the tiny pipeline: 1 discriminator warm-up step, then UNet updates.
TINY_DOCO = {
    "steps": 4,
    "d_warmup": 1,
    "batch_size": 2,
    "learning_rate": 1e-3,
    "num_anchor_images": 4,
    "anchor_steps": 2,
    "anchor_guidance": 5.0,
    "anchor_batch": 4,
    "checkpoint_every": 2,
}
SMALL = GeneratorConfig(z_dim=16, w_dim=32, mapping_layers=2, channels=(32, 16, 16, 8))
SMALL_D = DiscriminatorConfig(channels=(8, 16, 16, 16))
SMALL_D_HEADS = DiscriminatorConfig(channels=(8, 16, 16, 16), class_counts=(13, 10))


def world_text_encoder(tokenizer, hidden_size: int, intermediate_size: int, layers: int, heads: int):
    """A random CLIP text encoder over the world tokenizer's vocabulary (canvas-clip's text tower has 96/384/3/3)."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def pipeline_of(vae, text_encoder, tokenizer, unet, scheduler=None) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline of these components, without a safety checker, progress bars off."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler or inference_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(tmp_dir, seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised canvas-shaped StableDiffusionPipeline with the world tokenizer (seconds to build)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(tmp_dir)
    text_encoder = world_text_encoder(tokenizer, 32, 64, 2, 2)
    return pipeline_of(
        build_vae(scale=0.25), text_encoder, tokenizer, build_unet(cross_attention_dim=32, scale=0.25)
    )


def build_tiny_sd2_pipeline(tmp_dir, seed: int = 0) -> StableDiffusionPipeline:
    """The tiny pipeline as SD 2.x is built: v-prediction, linear projections in the transformer blocks."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(tmp_dir)
    text_encoder = world_text_encoder(tokenizer, 32, 64, 2, 2)
    unet = UNet2DConditionModel(**{**unet_config(32, scale=0.25), "use_linear_projection": True})
    scheduler = DDIMScheduler.from_config(inference_scheduler().config, prediction_type="v_prediction")
    return pipeline_of(build_vae(scale=0.25), text_encoder, tokenizer, unet, scheduler)


def build_tiny_sdxl_pipeline(tmp_dir, seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny SDXL: two text encoders (the second with a projection, whose pooled output and the size/crop time
    ids enter the UNet's added 'text_time' embedding), cross-attention over both encoders' states side by side."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(tmp_dir)
    first = world_text_encoder(tokenizer, 32, 64, 2, 2)
    second = CLIPTextModelWithProjection(
        CLIPTextConfig(**{**first.config.to_dict(), "hidden_size": 48, "projection_dim": 24})
    )
    time_dim = 8
    unet = UNet2DConditionModel(
        **{
            **unet_config(32 + 48, scale=0.25),
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": time_dim,
            "projection_class_embeddings_input_dim": 6 * time_dim + 24,
        }
    )
    pipe = StableDiffusionXLPipeline(
        vae=build_vae(scale=0.25),
        text_encoder=first,
        text_encoder_2=second,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=inference_scheduler(),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fresh(folder) -> StableDiffusionPipeline:
    """The pipeline saved in `folder`, loaded anew (the untouched original to compare an erasure against)."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def all_tensors(pipe) -> dict[str, torch.Tensor]:
    """Every UNet, text-encoder and VAE tensor of `pipe`, named '<component>.<parameter>'."""
    return {
        f"{c}.{n}": v
        for c in ("unet", "text_encoder", "vae")
        for n, v in getattr(pipe, c).state_dict().items()
    }


def small_generator(seed=0) -> Generator:
    """A small random StyleGAN2-lite (SMALL)."""
    torch.manual_seed(seed)
    return Generator(SMALL)


def snapshot(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before: dict, module) -> set[str]:
    """Names of `module`'s parameters that differ from the `snapshot` `before`."""
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


def pool_concept(G, clip_dir, pool) -> tuple[str, float]:
    """A style and a canvas-clip probability threshold that split the pool (random canvas-clip) in two halves."""
    clip = CanvasClip(clip_dir)
    z = torch.randn(pool, G.config.z_dim, generator=torch.Generator().manual_seed(POOL_SEED))
    with torch.no_grad():
        logits = clip.pair_logits(clip.image(G(z, noise_mode="const")), clip.pair_texts())
    p_style = logits.logsumexp(2).softmax(-1)
    concept = STYLES[1]
    threshold = float(p_style[:, 1].median())
    assert float(p_style[:, 1].min()) < threshold, "the random canvas-clip must tell the pooled samples apart"
    return concept, threshold


@contextmanager
def interrupted_after_checkpoint(monkeypatch, step: int):
    """Inside, a training session raises KeyboardInterrupt right after writing its checkpoint of `step` (as if the
    machine went away), and the block must end that way."""
    save = TrainingRun._save

    def save_then_crash(self, saved_step):
        save(self, saved_step)
        if saved_step == step:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(TrainingRun, "_save", save_then_crash)
        yield
