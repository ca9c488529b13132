"""canvas-sd's architecture: the same diffusers classes as Stable Diffusion 1.x, sized for 2 CPU cores.

32x32 px images, an AutoencoderKL with one downsampling (16x16x4 latents), a UNet2DConditionModel with
cross-attention at 8x8 and 4x4 (the `attn2` key/value projections erasure methods edit), canvas-clip's text
encoder, and a DDIM scheduler on SD's training schedule. `scale` shrinks every width for fast tests.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

RESOLUTION = 32
LATENT_SIZE = 16
INFERENCE_STEPS = 20
GUIDANCE_SCALE = 5.0

# Stable Diffusion 1.x's training noise schedule.
SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


def vae_config(scale: float = 1.0) -> dict:
    widths = [max(8, int(c * scale)) // 8 * 8 for c in (32, 64)]
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "block_out_channels": tuple(widths),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": RESOLUTION,
    }


def unet_config(cross_attention_dim: int, scale: float = 1.0) -> dict:
    widths = [max(16, int(c * scale)) // 16 * 16 for c in (64, 96, 128)]
    return {
        "sample_size": LATENT_SIZE,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": tuple(widths),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": cross_attention_dim,
        # diffusers' legacy name: this is the number of heads. About channels // 32 (DESIGN.md section 5).
        "attention_head_dim": tuple(max(1, c // 32) for c in widths),
        "norm_num_groups": 16,
    }


def build_vae(scale: float = 1.0) -> AutoencoderKL:
    return AutoencoderKL(**vae_config(scale))


def build_unet(cross_attention_dim: int, scale: float = 1.0) -> UNet2DConditionModel:
    return UNet2DConditionModel(**unet_config(cross_attention_dim, scale))


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SD_SCHEDULE, prediction_type="epsilon")


def inference_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        **SD_SCHEDULE, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
