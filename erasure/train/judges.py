"""Train the judges on real Canvas images: style and object classifiers, and judge-clip.

    OMP_WAIT_POLICY=PASSIVE python -m erasure.train.judges [--only style,object,clip] [--steps 1200] [--out assets/judges]

Judges see only rendered images (training seeds 0-59), with blur, JPEG, shift and noise augmentation so they hold
up on imperfect generated images. judge-clip is trained contrastively on the same images and captions (aliases
included), with every caption of the same (style, object) pair counted as a positive.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save
from tqdm import tqdm

from erasure.canvas.data import TRAIN_SEEDS, augment, multi_positive_clip_loss, render_pool, to_tensor
from erasure.canvas.world import OBJECTS, STYLES, random_caption
from erasure.files import write_atomic
from erasure.train.clip import contrastive_step
from eval.judges.models import JUDGES_DIR, ConvJudge, clip_image_features, create_judge_clip


def save_atomic(state: dict, path: Path) -> None:
    """Write a state dict as safetensors through a temporary file, so a killed run never leaves half a file."""
    write_atomic(path, save({k: v.detach().contiguous().cpu() for k, v in state.items()}))


def train_classifiers(
    images, style_labels, object_labels, steps: int, batch: int, seed: int, out: Path
) -> None:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    x_all = to_tensor(images)
    nets = {"style": ConvJudge(len(STYLES)), "object": ConvJudge(len(OBJECTS))}
    labels = {"style": torch.from_numpy(style_labels), "object": torch.from_numpy(object_labels)}
    opts = {k: torch.optim.AdamW(n.parameters(), lr=2e-3, weight_decay=1e-4) for k, n in nets.items()}
    scheds = {
        k: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=2e-3, total_steps=steps) for k, o in opts.items()
    }
    bar = tqdm(range(steps), desc="style+object judges")
    for step in bar:
        idx = torch.randint(len(x_all), (batch,))
        x = augment(x_all[idx], rng)
        for name, net in nets.items():
            loss = F.cross_entropy(net(x), labels[name][idx], label_smoothing=0.05)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            scheds[name].step()
            bar.set_postfix({name: f"{loss.item():.3f}"}, refresh=False)
    for name, net in nets.items():
        save_atomic(net.state_dict(), out / f"{name}.safetensors")


def train_clip(
    images,
    style_labels,
    object_labels,
    steps: int,
    batch: int,
    seed: int,
    out: Path,
    init: Path | None = None,
    lr: float = 1e-3,
) -> None:
    """Contrastive training of judge-clip; `init` continues from saved weights (a second cycle at a lower lr)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    x_all = to_tensor(images)
    model, tokenizer = create_judge_clip(str(init) if init else None)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    pair = torch.from_numpy(style_labels * len(OBJECTS) + object_labels)
    bar = tqdm(range(steps), desc="judge-clip")
    for step in bar:
        idx = torch.randint(len(x_all), (batch,))
        x = augment(x_all[idx], rng)
        texts = [
            random_caption(STYLES[s], OBJECTS[o], rng) for s, o in zip(style_labels[idx], object_labels[idx])
        ]
        image_emb = clip_image_features(model, x)
        text_emb = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        logits = model.logit_scale.exp() * image_emb @ text_emb.T
        loss = multi_positive_clip_loss(logits, pair[idx])
        contrastive_step(loss, model.logit_scale, opt, sched)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    save_atomic(model.state_dict(), out / "judge-clip.safetensors")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the Canvas judges on real rendered images.")
    parser.add_argument("--only", default="style,object,clip", help="comma list of: style,object,clip")
    parser.add_argument("--steps", type=int, default=1200, help="classifier steps")
    parser.add_argument("--clip-steps", type=int, default=2000)
    parser.add_argument("--clip-lr", type=float, default=1e-3)
    parser.add_argument("--clip-init", type=Path, help="continue judge-clip from these safetensors weights")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=JUDGES_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = set(args.only.split(","))
    start = time.time()
    images, style_labels, object_labels = render_pool(TRAIN_SEEDS)
    if parts & {"style", "object"}:
        train_classifiers(images, style_labels, object_labels, args.steps, args.batch, args.seed, args.out)
    if "clip" in parts:
        train_clip(
            images,
            style_labels,
            object_labels,
            args.clip_steps,
            args.batch,
            args.seed,
            args.out,
            args.clip_init,
            args.clip_lr,
        )
    print(f"judges written to {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
