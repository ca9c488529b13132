"""Train canvas-clip: a small transformers.CLIPModel on Canvas images and captions (aliases included).

    OMP_WAIT_POLICY=PASSIVE python -m erasure.canvas.train_clip [--steps 2000] [--out assets/canvas-clip]

canvas-clip plays OpenAI CLIP's part: its text tower becomes canvas-sd's frozen text encoder, its image tower
guides the GAN unlearner. A text encoder that already separates styles and objects is what lets a small UNet
follow prompts (DESIGN.md section 5), so it is trained contrastively first, with every caption of the same
(style, object) pair counted as a positive.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from erasure.canvas.data import augment, multi_positive_clip_loss, render_pool, to_tensor
from erasure.canvas.tokenizer import MAX_LENGTH, build_tokenizer
from erasure.canvas.world import OBJECTS, STYLES, random_caption

ASSETS = Path(__file__).resolve().parents[2] / "assets"
TRAIN_SEEDS = range(100, 160)
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25


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


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, 32, 32) in [0, 1] -> canvas-clip's normalised input."""
    return (images - IMAGE_MEAN) / IMAGE_STD


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train canvas-clip contrastively on the Canvas world.")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ASSETS / "canvas-clip")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    start = time.time()

    work = Path(
        tempfile.mkdtemp(prefix=".canvas-clip-", dir=args.out.parent if args.out.parent.exists() else None)
    )
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
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)

    model.save_pretrained(work, safe_serialization=True)
    tokenizer.save_pretrained(work)
    if args.out.exists():
        shutil.rmtree(args.out)
    work.rename(args.out)
    print(f"canvas-clip written to {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
