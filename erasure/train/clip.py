"""Train canvas-clip: a small transformers.CLIPModel on Canvas images and captions (aliases included).

    OMP_WAIT_POLICY=PASSIVE python -m erasure.train.clip [--steps 2000] [--out assets/canvas-clip]
    OMP_WAIT_POLICY=PASSIVE python -m erasure.train.clip --image-tower-from assets/canvas-clip --steps 1500
        --lr 5e-4 --threads 2                                   (second stage, about 6 min: locked-text tuning)

canvas-clip plays OpenAI CLIP's part: its text tower becomes canvas-sd's frozen text encoder, its image tower
guides the GAN unlearner. A text encoder that already separates styles and objects is what lets a small UNet
follow prompts (DESIGN.md section 5), so it is trained contrastively first, with every caption of the same
(style, object) pair counted as a positive.

The second stage (`--image-tower-from`) tunes only the image tower, against the first stage's text tower locked
(LiT, Zhai et al. 2022, with the towers' roles swapped): every image is classified among the 130 template-averaged
pair texts, and among the styles and the objects, on five times as many renders, with shape-deforming
augmentation. The text tower, hence canvas-sd's text encoder copied from it, is bit for bit unchanged. Why: the
contrastive stage leaves objects weak, and canvas-clip's image tower is what tells the GAN unlearner which samples
show an object; `python -m eval.canvas_clip_quality` measures both stages (README, "Measured on this machine").
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from erasure.canvas.data import augment, multi_positive_clip_loss, random_affine, render_pool, to_tensor
from erasure.canvas.tokenizer import MAX_LENGTH, build_tokenizer
from erasure.canvas.world import OBJECTS, STYLES, random_caption
from erasure.files import ASSETS, atomic_folder
from pipelines.canvas_clip import IMAGE_MEAN, IMAGE_STD, CanvasClip
from pipelines.stylegan import load_generator, to_unit

TRAIN_SEEDS = range(100, 160)
IMAGE_TOWER_SEEDS = range(100, 400)  # the second stage's renders: 300 seeds x 130 pairs
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
)
AFFINE_PROB = 0.7  # share of the second stage's batches that also get `random_affine`
# the second stage's canvas-gan latents: apart from the evaluation's and the unlearner's
GAN_POOL_SEED = 2_000_000


def canvas_clip_config(vocab_size: int, bos_id: int, eos_id: int) -> CLIPConfig:
    text = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=96,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=3,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        projection_dim=64,
    )
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=4,
        hidden_size=96,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=3,
        projection_dim=64,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64)


def contrastive_step(loss: torch.Tensor, logit_scale: torch.nn.Parameter, optimizer, scheduler) -> None:
    """One optimizer and scheduler step of a CLIP model, its learnt logit scale then clamped to [0, log 100] (the
    CLIP paper's cap); canvas-clip's and judge-clip's training share it."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        logit_scale.clamp_(0, np.log(100))


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, 32, 32) in [0, 1] -> canvas-clip's normalised input."""
    return (images - IMAGE_MEAN) / IMAGE_STD


@torch.no_grad()
def generator_pool(directory: Path, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` samples in [0, 1] of a canvas-gan whose z picks a style and an object (GeneratorConfig.latent_classes),
    const noise, latents from torch seed `seed`; with the picked style and object indices as their labels."""
    generator = load_generator(directory)
    if generator.config.latent_classes != (len(STYLES), len(OBJECTS)):
        raise SystemExit(f"{directory} is not a canvas-gan whose latent picks a style and an object.")
    z = torch.randn(n, generator.config.z_dim, generator=torch.Generator().manual_seed(seed))
    picked = generator.latent_classes(z)
    images = torch.cat([to_unit(generator(x, noise_mode="const")) for x in z.split(500)])
    return images, picked[:, 0], picked[:, 1]


def tune_image_tower(
    source: Path,
    work: Path,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    seeds=IMAGE_TOWER_SEEDS,
    gan: Path | None = None,
    gan_samples: int = 0,
    gan_share: float = 0.0,
) -> None:
    """Second stage: train `source`'s image tower (vision model and projection) against its frozen text tower and
    save the whole model, with the tokenizer, to `work`.

    With `gan`, a `gan_share` of every batch is that canvas-gan's samples (a pool of `gan_samples`, drawn once),
    each labelled with the style and object its latent picked: the tower learns to read the generator it will
    guide. The labels come from the generator's latent, never from the judges.
    """
    # The template-averaged pair texts, exactly as the GAN unlearner reads them.
    clip = CanvasClip(source)
    pair_texts = clip.pair_texts().flatten(0, 1)  # (130, d), row = style * len(OBJECTS) + object
    model = clip.model.train()
    tower = [p for n, p in model.named_parameters() if n.startswith(("vision_model.", "visual_projection."))]
    for p in tower:
        p.requires_grad_(True)
    images, style_labels, object_labels = render_pool(seeds)
    x_all, styles, objects = (
        to_tensor(images),
        torch.from_numpy(style_labels),
        torch.from_numpy(object_labels),
    )
    n_gan = round(batch * gan_share) if gan is not None else 0
    if n_gan:
        gan_x, gan_styles, gan_objects = generator_pool(gan, gan_samples, GAN_POOL_SEED + seed)
    opt = torch.optim.AdamW(tower, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="canvas-clip image tower")
    for _ in bar:
        idx = torch.randint(len(x_all), (batch - n_gan,), generator=generator)
        x, y_style, y_object = x_all[idx], styles[idx], objects[idx]
        if rng.random() < AFFINE_PROB:
            x = random_affine(x, generator)
        x = augment(x, rng)
        if n_gan:
            gan_idx = torch.randint(len(gan_x), (n_gan,), generator=generator)
            x = torch.cat([x, gan_x[gan_idx]])
            y_style = torch.cat([y_style, gan_styles[gan_idx]])
            y_object = torch.cat([y_object, gan_objects[gan_idx]])
        logits = clip.logit_scale * clip.image(x * 2 - 1) @ pair_texts.T
        style_logits, object_logits = clip.style_object_logits(logits.view(-1, len(STYLES), len(OBJECTS)))
        loss = (
            F.cross_entropy(logits, y_style * len(OBJECTS) + y_object)
            + F.cross_entropy(style_logits, y_style)
            + F.cross_entropy(object_logits, y_object)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval().save_pretrained(work, safe_serialization=True)
    for name in TOKENIZER_FILES:  # the tokenizer is the first stage's, byte for byte
        if (source / name).exists():
            shutil.copy2(source / name, work / name)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train canvas-clip contrastively on the Canvas world.")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ASSETS / "canvas-clip")
    parser.add_argument(
        "--image-tower-from",
        type=Path,
        help="a trained canvas-clip folder: tune only its image tower against its locked text tower",
    )
    parser.add_argument(
        "--gan",
        type=Path,
        help="with --image-tower-from: a canvas-gan with latent classes whose samples, labelled by their latent, "
        "make up --gan-share of every batch",
    )
    parser.add_argument("--gan-samples", type=int, default=26000, help="size of the --gan sample pool")
    parser.add_argument(
        "--gan-share", type=float, default=0.5, help="share of each batch from the --gan pool"
    )
    args = parser.parse_args(argv)
    if args.image_tower_from is not None and not (args.image_tower_from / "config.json").exists():
        parser.exit(2, f"error: {args.image_tower_from} holds no canvas-clip (config.json is missing).\n")
    if args.gan is not None:
        if args.image_tower_from is None:
            parser.exit(2, "error: --gan tunes an image tower: give --image-tower-from too.\n")
        if not (args.gan / "config.json").exists():
            parser.exit(2, f"error: {args.gan} holds no canvas-gan (config.json is missing).\n")
        if not 0 < args.gan_share < 1 or args.gan_samples < 1:
            parser.exit(2, "error: --gan-share must be between 0 and 1 and --gan-samples at least 1.\n")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    start = time.time()

    with atomic_folder(args.out) as work:
        if args.image_tower_from is not None:
            tune_image_tower(
                args.image_tower_from,
                work,
                args.steps,
                args.batch,
                args.lr,
                args.seed,
                gan=args.gan,
                gan_samples=args.gan_samples,
                gan_share=args.gan_share,
            )
        else:
            train_contrastive(args, rng, work)
    print(f"canvas-clip written to {args.out} in {time.time() - start:.0f} s")


def train_contrastive(args, rng: random.Random, work: Path) -> None:
    """First stage: both towers, contrastively, every caption of the same (style, object) pair a positive."""
    tokenizer = build_tokenizer(work)
    model = CLIPModel(canvas_clip_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    images, style_labels, object_labels = render_pool(TRAIN_SEEDS)
    x_all = to_tensor(images)
    pair = torch.from_numpy(style_labels * len(OBJECTS) + object_labels)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    bar = tqdm(range(args.steps), desc="canvas-clip")
    for step in bar:
        idx = torch.randint(len(x_all), (args.batch,))
        x = augment(x_all[idx], rng)
        texts = [
            random_caption(STYLES[s], OBJECTS[o], rng, alias_prob=0.4)
            for s, o in zip(style_labels[idx], object_labels[idx])
        ]
        tokens = tokenizer(
            texts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        )
        out = model(input_ids=tokens.input_ids, pixel_values=pixel_values(x))
        logits = out.logits_per_image
        loss = multi_positive_clip_loss(logits, pair[idx])
        contrastive_step(loss, model.logit_scale, opt, sched)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)

    model.save_pretrained(work, safe_serialization=True)
    tokenizer.save_pretrained(work)


if __name__ == "__main__":
    main()
