"""Train canvas-gan: an unconditional StyleGAN2-lite on Canvas images of every style x object.

    OMP_WAIT_POLICY=PASSIVE python -m erasure.train.gan [--steps 10000] [--resume] [--out assets/canvas-gan]

The loop is StyleGAN2's, written out: non-saturating logistic loss, lazy R1 on real images every `--r1-interval`
D steps (Adam's lr and betas adjusted for the lazy interval, as in StyleGAN2), Adam betas (0, 0.99), an EMA copy of
the generator (half-life `--ema-kimg` thousand images, ramped up over the first 5% of images seen), batch 32.
One fake batch per iteration serves both the G step (through a frozen D) and the D step (detached).

The generator is a sampler of z alone (z in, image out). Two recipes:
- unconditional (the default): with `--spread-weight` > 0 the discriminator also carries a style head and an
  object head, fitted to the real images' labels (AC-GAN's auxiliary classifier), and the generator is asked,
  through `spread_loss`, for samples that these heads find each clearly one class and all classes equally often.
  Why: with the plain loss, long runs left the hardest styles far below uniform and did not bring them back.
- `--latent-classes`: two coordinates of z pick a style and an object (GeneratorConfig.latent_classes), whose
  embedding enters the mapping network; the discriminator sees the real images' labels and the fakes' picks
  through a projection (Miyato & Koyama 2018), and its heads' cross-entropy against the picks
  (`--class-weight`) asks each sample to read as the style and object its z picked. Why: the unconditional
  recipe drew objects that the object judge was rarely sure of and that the two independent classifiers read
  differently about half the time (README, "Measured on this machine"); an unlearner cannot remove an object
  that no reader can find.
  With `--reader-weight` > 0 a frozen reader trained apart from this run, canvas-clip (`--reader`), also reads
  each fake, shifted by a few random pixels, and its zero-shot cross-entropy against z's picks joins the
  generator's loss (a frozen classifier's guidance, as in vision-aided GAN training, Kumari et al. CVPR 2022).
  Why: D's heads learn the objects alongside the generator and are easily satisfied by blobs; a reader that
  already tells the objects apart asks for their shapes from the first step, and it is the unlearner's guide.
The heads are part of D, trained here on the renders' labels; the judges only watch and never train anything.

Every `--log-every` steps the EMA generator draws 520 fixed latents and the judges (assets/judges) say which style
and object each sample shows: the share of every class, compared with uniform, and the Frechet distance of judge
features to held-out real renders. The judges only watch; no gradient reaches them.
Checkpoints (safetensors + JSON, nothing pickled) go to --checkpoint-dir every `--checkpoint-every` steps;
`--resume` continues from the latest, `--init-from` starts a new run from a checkpoint's weights. The final EMA
generator is written atomically to --out (model.safetensors + config.json, with the training summary under
"extra", and samples.png). Runs on CUDA when present.
`--max-minutes` (default 60) stops early, checkpointed and written, if the wall-clock budget runs out.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from erasure.canvas.data import render_pool, to_tensor
from erasure.canvas.world import OBJECTS, STYLES
from erasure.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_tensors,
    read_state,
    save_checkpoint,
)
from erasure.files import atomic_folder
from erasure.train.discriminator import Discriminator, DiscriminatorConfig
from eval.gan_eval import (
    MONITOR_REAL_SEEDS,
    describe,
    judged_stats,
    latent_class_agreement,
    object_clarity,
    sample,
)
from pipelines.canvas_clip import CANVAS_CLIP, CanvasClip
from pipelines.stylegan import (
    CANVAS_GAN,
    Generator,
    GeneratorConfig,
    config_to_json,
    save_generator,
)

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SEEDS = range(400, 600)  # 200 seeds x 130 (style, object) pairs = 26,000 real images
SPREAD_WEIGHT = 2.0  # the unconditional recipe's second and third stages (README, "Retraining")
CLASS_WEIGHT = 1.0  # AC-GAN's weight on the generator's class term (Odena et al. 2017 weigh it 1)


# --- one iteration, in two declared halves ---------------------------------------------------------------------
def spread_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-sample entropy minus the entropy of the batch's mean prediction, for one classifier head.

    This is minus the mutual information between a sample and its predicted class (the InfoGAN / class-balancing
    GAN regulariser, Rangwani et al. 2021). Lowering it asks for two things at once: every class equally often in a
    batch (an unconditional GAN otherwise drops the hard classes) and each sample clearly one class. Its minimum
    is -log(number of classes).
    """
    p = logits.softmax(-1)
    per_sample = -(p * logits.log_softmax(-1)).sum(-1).mean()
    mean_p = p.mean(0)
    of_mean = -(mean_p * mean_p.clamp_min(1e-12).log()).sum()
    return per_sample - of_mean


def reader_name(folder: Path) -> str:
    """The reader's folder as the recipe records it: relative to the repository when it lies inside, so that a
    checkpoint or a shipped generator names the same reader on every machine and in every clone."""
    folder = folder.resolve()
    return str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)


class ReaderLoss:
    """A frozen reader's cross-entropy against each fake's latent classes: canvas-clip's zero-shot style and
    object logits (summed over the other attribute, `CanvasClip.style_object_logits`) on the fakes, each shifted
    by up to `shift` pixels (reflect-padded; one random offset per sample from the global RNG), so that the
    generator cannot please the reader with a pixel-exact pattern. The reader's weights never change."""

    def __init__(self, reader: CanvasClip, shift: int = 2):
        self.reader, self.shift = reader, shift
        self.pair_text = reader.pair_texts()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        padded = F.pad(images, [self.shift] * 4, mode="reflect")
        dy, dx = torch.randint(0, 2 * self.shift + 1, (2, n)).tolist()
        shifted = torch.stack([padded[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(zip(dy, dx))])
        pairs = self.reader.pair_logits(self.reader.image(shifted), self.pair_text)
        style, obj = self.reader.style_object_logits(pairs)
        return F.cross_entropy(style, labels[:, 0]) + F.cross_entropy(obj, labels[:, 1])


def generator_step(
    G,
    D,
    opt_G,
    batch: int,
    device,
    spread_weight: float = 0.0,
    class_weight: float = 0.0,
    reader: ReaderLoss | None = None,
    reader_weight: float = 0.0,
) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    """G update with the non-saturating loss softplus(-D(G(z))); D is frozen.

    Plus, when positive, `spread_weight` x spread_loss over D's classifier heads (unconditional generator), or,
    for a generator with latent classes, `class_weight` x the heads' cross-entropy against the classes each z
    picked (AC-GAN's generator term: each sample should read as its own style and object), and `reader_weight`
    x the frozen `reader`'s cross-entropy against the same picks. Returns ({"g": the non-saturating loss,
    "spread", "cls_g" or "reader"}, detached fakes, their latent classes or None).
    """
    D.requires_grad_(False)
    z = torch.randn(batch, G.config.z_dim, device=device)
    labels = G.latent_classes(z) if G.config.latent_classes else None
    fake = G(z)
    extra = {}
    if spread_weight > 0:
        logits, groups = D.forward_with_classes(fake, labels)
        extra["spread"] = spread_weight, sum(spread_loss(g) for g in groups)
    elif class_weight > 0:
        logits, groups = D.forward_with_classes(fake, labels)
        extra["cls_g"] = class_weight, sum(F.cross_entropy(g, labels[:, i]) for i, g in enumerate(groups))
    else:
        logits = D(fake, labels)
    if reader is not None and reader_weight > 0:
        extra["reader"] = reader_weight, reader(fake, labels)
    adversarial = F.softplus(-logits).mean()
    loss = adversarial + sum(weight * term for weight, term in extra.values())
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    D.requires_grad_(True)
    out = {"g": adversarial.item(), **{name: term.item() for name, (_, term) in extra.items()}}
    return out, fake.detach(), labels


def discriminator_step(
    D,
    opt_D,
    real,
    fake,
    r1_gamma: float,
    r1_interval: int,
    do_r1: bool,
    labels: torch.Tensor | None = None,
    fake_labels: torch.Tensor | None = None,
) -> dict:
    """D update: softplus(D(fake)) + softplus(-D(real)), plus (gamma / 2) |grad_x D(real)|^2 * interval on R1 steps,
    plus, when D has classifier heads, their cross-entropy on the real images' `labels` (N, groups). A conditional
    D sees the real images' labels and the fakes' latent classes (`fake_labels`)."""
    conditional = bool(D.config.condition_counts)
    real = real.detach().requires_grad_(do_r1)
    fake_logits = D(fake.detach(), fake_labels if conditional else None)
    real_condition = labels if conditional else None
    if D.classify is None:
        real_logits = D(real, real_condition)
        class_loss = None
    else:
        real_logits, groups = D.forward_with_classes(real, real_condition)
        class_loss = sum(F.cross_entropy(g, labels[:, i]) for i, g in enumerate(groups))
    loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
    out = {"d": loss.item()}
    if class_loss is not None:
        loss = loss + class_loss
        out["cls"] = class_loss.item()
    if do_r1:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        r1 = grad.square().sum((1, 2, 3)).mean()
        loss = loss + r1 * (r1_gamma / 2) * r1_interval
        out["r1"] = r1.item()
    opt_D.zero_grad(set_to_none=True)
    loss.backward()
    opt_D.step()
    return out


@torch.no_grad()
def update_ema(G_ema, G, beta: float) -> None:
    """p_ema <- beta p_ema + (1 - beta) p for parameters; buffers (w_avg, const noise) are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.lerp_(p, 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def make_optimizers(G, D, lr: float, r1_interval: int):
    """Adam (0, 0.99) for both; D's lr and betas scaled by c = interval / (interval + 1) (StyleGAN2 lazy reg)."""
    c = r1_interval / (r1_interval + 1)
    opt_G = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=lr * c, betas=(0.0, 0.99**c), eps=1e-8)
    return opt_G, opt_D


# --- monitoring ------------------------------------------------------------------------------------------------
def sample_sheet(images: torch.Tensor, columns: int = 13) -> Image.Image:
    """Tile images (N, 3, H, W) in [0, 1] into one picture."""
    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    sheet = torch.ones(3, rows * h, columns * w)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    return Image.fromarray((sheet * 255).round().byte().permute(1, 2, 0).numpy())


# --- checkpoints (the engine's format: erasure/engine/checkpoint.py) -------------------------------------------
def init_weights(folder: Path, G, G_ema, D) -> None:
    """Warm start from a checkpoint's G, G_ema and D; a classifier head that the checkpoint lacks starts fresh."""
    mismatch = SystemExit(
        f"{folder} holds networks of another shape than --g-channels / --d-channels ask for."
    )
    try:
        G.load_state_dict(load_tensors(folder, "G"))
        G_ema.load_state_dict(load_tensors(folder, "G_ema"))
        missing, unexpected = D.load_state_dict(load_tensors(folder, "D"), strict=False)
    except FileNotFoundError:
        raise SystemExit(f"{folder} is not a train_gan checkpoint (G, G_ema and D safetensors).") from None
    except RuntimeError:  # a tensor of another size
        raise mismatch from None
    if unexpected or any(not name.startswith("classify.") for name in missing):
        raise mismatch


# --- the script ------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train canvas-gan (StyleGAN2-lite) on the Canvas world.")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.0025)
    parser.add_argument("--r1-gamma", type=float, default=0.05)
    parser.add_argument("--r1-interval", type=int, default=16)
    parser.add_argument("--ema-kimg", type=float, default=10.0, help="EMA half-life in thousands of images")
    g_default = ",".join(map(str, GeneratorConfig().channels))
    d_default = ",".join(map(str, DiscriminatorConfig().channels))
    parser.add_argument("--g-channels", default=g_default, help="generator channels at 4,8,16,32 px")
    parser.add_argument("--d-channels", default=d_default, help="discriminator channels at 32,16,8,4 px")
    parser.add_argument(
        "--latent-classes",
        action="store_true",
        help="z also picks a style and an object (GeneratorConfig.latent_classes); D is conditioned on them by "
        "projection and its heads' cross-entropy, weighted by --class-weight, asks each sample to read as them",
    )
    parser.add_argument("--class-weight", type=float, default=CLASS_WEIGHT, help="with --latent-classes")
    parser.add_argument(
        "--reader-weight",
        type=float,
        default=0.0,
        help="with --latent-classes: weight of the frozen reader's cross-entropy against z's picks (ReaderLoss)",
    )
    parser.add_argument("--reader", type=Path, default=CANVAS_CLIP, help="the reader: a canvas-clip folder")
    parser.add_argument(
        "--input-from-w",
        action="store_true",
        help="the generator's 4x4 input follows w (GeneratorConfig.input_from_w), not a constant alone",
    )
    parser.add_argument(
        "--spread-weight",
        type=float,
        default=None,
        help=f"weight of spread_loss on D's style and object heads (default {SPREAD_WEIGHT:g}, 0 with "
        "--latent-classes, which balances the classes by construction); 0 = plain unconditional StyleGAN2 loss",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="a checkpoint folder (step-NNNNNN) to start from: its G, G_ema and D, fresh optimizers and step 0",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=500)
    parser.add_argument("--log-samples", type=int, default=520, help="fixed latents judged every --log-every")
    parser.add_argument("--final-samples", type=int, default=2080, help="fixed latents judged at the end")
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=60.0,
        help="stop (checkpointed, written) after this run's minutes; 0 = off",
    )
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint-dir", type=Path, default=ROOT / "checkpoints" / "canvas-gan")
    parser.add_argument("--out", type=Path, default=CANVAS_GAN)
    parser.add_argument("--train-seeds", type=int, default=len(TRAIN_SEEDS), help="real images: seeds x 130")
    args = parser.parse_args(argv)
    if args.spread_weight is None:
        args.spread_weight = 0.0 if args.latent_classes else SPREAD_WEIGHT
    if args.reader_weight < 0 or (args.reader_weight > 0 and not args.latent_classes):
        parser.error("--reader-weight must be 0, or positive with --latent-classes (it reads z's picks).")
    if args.reader_weight > 0 and not (args.reader / "config.json").exists():
        parser.exit(2, f"error: --reader {args.reader} holds no canvas-clip (config.json is missing).\n")
    if args.latent_classes and args.spread_weight > 0:
        parser.error(
            "--spread-weight spreads an unconditional generator's classes; with --latent-classes z picks them."
        )
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classes = (len(STYLES), len(OBJECTS))
    heads = args.spread_weight > 0 or (args.latent_classes and args.class_weight > 0)
    g_config = GeneratorConfig(
        channels=tuple(int(c) for c in args.g_channels.split(",")),
        latent_classes=classes if args.latent_classes else (),
        input_from_w=args.input_from_w,
    )
    d_config = DiscriminatorConfig(
        channels=tuple(int(c) for c in args.d_channels.split(",")),
        class_counts=classes if heads else (),
        condition_counts=classes if args.latent_classes else (),
    )
    G, D = Generator(g_config).to(device), Discriminator(d_config).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G, opt_D = make_optimizers(G, D, args.lr, args.r1_interval)
    models, opts = {"G": G, "G_ema": G_ema, "D": D}, {"G": opt_G, "D": opt_D}
    # What a resumed run must share with its checkpoint (how long or how verbosely it runs may change).
    same = (
        "batch",
        "lr",
        "r1_gamma",
        "r1_interval",
        "ema_kimg",
        "g_channels",
        "d_channels",
        "seed",
        "train_seeds",
        "spread_weight",
        "latent_classes",
        "class_weight",
        "input_from_w",
        "init_from",
        "reader_weight",
    )
    recipe = {k: getattr(args, k) for k in same}
    recipe["init_from"] = args.init_from.name if args.init_from else None
    recipe["reader"] = (
        reader_name(args.reader) if args.reader_weight > 0 else None
    )  # another reader, another recipe
    meta = {"recipe": recipe, "generator": config_to_json(g_config), "discriminator": asdict(d_config)}

    reader = ReaderLoss(CanvasClip(args.reader, device)) if args.reader_weight > 0 else None

    latest = latest_checkpoint(args.checkpoint_dir) if args.resume else None
    if latest is not None and read_state(latest).get("recipe") != recipe:
        raise SystemExit(
            f"the checkpoint in {latest} was made with other settings ({', '.join(same)}); "
            "resume with the same ones."
        )

    images, style_labels, object_labels = render_pool(TRAIN_SEEDS[: args.train_seeds])
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)  # uint8, 3.1 KB per image
    labels = torch.from_numpy(np.stack([style_labels, object_labels], 1)).to(device)
    judges, real_features = None, None
    try:
        from eval.judges.models import load_judges

        judges = load_judges(device)
        real_features = judges.features(to_tensor(render_pool(MONITOR_REAL_SEEDS)[0])).cpu()
    except FileNotFoundError as err:
        print(f"no judged monitoring: {err}")
    monitor_z = torch.randn(args.log_samples, g_config.z_dim, generator=torch.Generator().manual_seed(1234))

    # Restored after the judges are built (their initialisation draws from the global RNG), so that a resumed run
    # continues with exactly the random stream the interrupted one would have used.
    step, elapsed, history = 0, 0.0, []
    if latest is not None:
        saved = load_checkpoint(latest, opts, {"torch": torch.default_generator})
        for name, model in models.items():
            model.load_state_dict(load_tensors(latest, name))
        step, elapsed, history = saved["step"], saved["elapsed"], saved["history"]
        print(f"resuming from {latest} at step {step}")
    elif args.init_from is not None:
        init_weights(args.init_from, G, G_ema, D)
        print(f"starting from the weights in {args.init_from}")
    elif args.resume:
        print(f"no checkpoint in {args.checkpoint_dir}; starting afresh")

    def monitor(z) -> dict | None:
        if judges is None:
            return None
        images = sample(G_ema, z)
        stats = judged_stats(images, judges, real_features)
        if judges.clip_path is not None and judges.clip_path.exists():
            stats.update(object_clarity(images, judges))
        if g_config.latent_classes:
            stats.update(latent_class_agreement(G_ema, z, images, judges))
        return stats

    start = time.time() - elapsed  # training seconds so far, over every resumed run
    invocation = time.time()
    budget = args.max_minutes * 60 if args.max_minutes > 0 else math.inf
    stopped_early, done = False, step
    bar = tqdm(range(step, args.steps), desc="canvas-gan", initial=step, total=args.steps, dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(len(data), (args.batch,), device=device)
        real = data[idx].float() / 127.5 - 1
        g_out, fake, fake_labels = generator_step(
            G,
            D,
            opt_G,
            args.batch,
            device,
            args.spread_weight,
            args.class_weight if args.latent_classes else 0,
            reader,
            args.reader_weight,
        )
        g_loss = g_out["g"]
        do_r1 = step % args.r1_interval == 0
        d_out = discriminator_step(
            D, opt_D, real, fake, args.r1_gamma, args.r1_interval, do_r1, labels[idx], fake_labels
        )
        ema_nimg = min(args.ema_kimg * 1000, (step + 1) * args.batch * 0.05)
        update_ema(G_ema, G, 0.5 ** (args.batch / max(ema_nimg, 1e-8)))
        if not (math.isfinite(g_loss) and math.isfinite(d_out["d"])):
            raise SystemExit(f"training diverged at step {step}: g {g_loss}, d {d_out['d']}.")
        bar.set_postfix({k: f"{v:.3f}" for k, v in {**g_out, **d_out}.items() if k != "r1"}, refresh=False)
        done = step + 1
        if done % args.log_every == 0 and judges is not None:
            stats = monitor(monitor_z)
            history.append(
                {"step": done, "seconds": round(time.time() - start, 1), **g_out, **d_out, **stats}
            )
            tqdm.write(f"step {done}: {describe(stats)}")
        out_of_time = time.time() - invocation > budget
        if done % args.checkpoint_every == 0 or out_of_time or done == args.steps:
            meta.update(elapsed=time.time() - start, history=history)
            weights = {name: model.state_dict() for name, model in models.items()}
            rng = {"torch": torch.default_generator}
            save_checkpoint(args.checkpoint_dir, done, weights, opts, rng, state=meta)
        if out_of_time and done < args.steps:
            tqdm.write(f"--max-minutes {args.max_minutes:g} reached at step {done}; stopping and saving.")
            stopped_early = True
            break
    bar.close()
    final_step = done

    summary = {"steps": final_step, "stopped_early": stopped_early, "seconds": round(time.time() - start, 1)}
    final_z = torch.randn(args.final_samples, g_config.z_dim, generator=torch.Generator().manual_seed(4321))
    if judges is not None:
        judged = summary[f"judged_{args.final_samples}_samples"] = monitor(final_z)
        print(f"final EMA generator, {args.final_samples} samples: {describe(judged)}")
    summary["recipe"] = {**recipe, "steps": args.steps}
    with atomic_folder(args.out) as tmp:
        save_generator(G_ema.cpu(), tmp, extra={"training": summary})
        sample_sheet(sample(G_ema, final_z[:130])).save(tmp / "samples.png")
    print(f"canvas-gan written to {args.out} after {final_step} steps in {summary['seconds']:.0f} s")
    return args.out


if __name__ == "__main__":
    main()
