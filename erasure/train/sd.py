"""Train canvas-sd: a genuine diffusers StableDiffusionPipeline on the Canvas world.

    OMP_WAIT_POLICY=PASSIVE python -m erasure.train.sd [--stage vae|unet|all] [--unet-steps 6000] [--resume]
    OMP_WAIT_POLICY=PASSIVE python -m erasure.train.sd --exclude "van gogh" --unet-steps 4500   # the oracle

Stage 1 trains the AutoencoderKL (reconstruction + a small KL, as SD's first stage). Stage 2 encodes the dataset
once, caches canvas-clip's (frozen) hidden states for every world caption, and trains the UNet with the epsilon
objective, Min-SNR-5 loss weighting, 10% empty captions for classifier-free guidance, and an EMA of the weights.
Every `--eval-every` steps it generates one image per (style, object) pair and logs the judges' accuracies.
Checkpoints go to checkpoints/canvas-sd (safetensors for weights); `--resume` continues from the latest one.
The final pipeline is written to assets/canvas-sd by a temporary folder renamed into place. Runs on CUDA when
one is present.

`--exclude C` trains the exact-unlearning reference: the same recipe on a world whose renders never show C (neither
the VAE's nor the UNet's data), so the model never knew it. The text encoder is canvas-clip's, frozen, as in the
shipped model. Such an oracle is not shipped; it goes to oracles/canvas-sd-without-<concept> with an `oracle.json`
naming what it excludes, and `eval.audit --oracle` reads it.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from erasure.canvas.data import render_pool, to_tensor
from erasure.canvas.sd_config import (
    GUIDANCE_SCALE,
    INFERENCE_STEPS,
    build_unet,
    build_vae,
    inference_scheduler,
    training_scheduler,
)
from erasure.canvas.world import OBJECTS, STYLES, UnknownConceptError, all_captions, canonical, random_caption
from erasure.engine.checkpoint import latest_checkpoint, load_checkpoint, load_tensors, save_checkpoint
from erasure.files import ASSETS, atomic_folder, slug

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SEEDS = range(200, 300)


def world_without(excluded: list[str]) -> tuple[list[str], list[str]]:
    """The styles and objects left in the training world once the `excluded` concepts are taken out."""
    return [s for s in STYLES if s not in excluded], [o for o in OBJECTS if o not in excluded]


def log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    tqdm.write(json.dumps(record))


def train_vae(args, device) -> AutoencoderKL:
    out = args.checkpoints / "vae"
    if (out / "diffusion_pytorch_model.safetensors").exists():
        return AutoencoderKL.from_pretrained(out).to(device)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    images, _, _ = render_pool(range(300, 330), *world_without(args.exclude))
    x_all = to_tensor(images)
    vae = build_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.vae_steps, pct_start=0.05)
    for step in (bar := tqdm(range(args.vae_steps), desc="canvas-sd VAE")):
        idx = torch.randint(len(x_all), (args.batch,))
        x = (x_all[idx] * 2 - 1).to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    with torch.no_grad():
        latents = torch.cat(
            [
                vae.encode((x_all[i : i + 256] * 2 - 1).to(device)).latent_dist.mean
                for i in range(0, 2048, 256)
            ]
        )
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.save_pretrained(out, safe_serialization=True)
    log(
        args.log,
        {
            "stage": "vae",
            "steps": args.vae_steps,
            "final_loss": loss.item(),
            "scaling_factor": vae.config.scaling_factor,
        },
    )
    del rng
    return vae


@torch.no_grad()
def encode_dataset(vae, device, excluded: list[str], batch: int = 256):
    images, style_labels, object_labels = render_pool(TRAIN_SEEDS, *world_without(excluded))
    x_all = to_tensor(images)
    means, stds = [], []
    for i in tqdm(range(0, len(x_all), batch), desc="encode dataset"):
        dist = vae.encode((x_all[i : i + batch] * 2 - 1).to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds), style_labels, object_labels


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, device, batch: int = 512) -> dict[str, torch.Tensor]:
    captions = [""] + all_captions()
    table = {}
    for i in tqdm(range(0, len(captions), batch), desc="encode captions"):
        chunk = captions[i : i + batch]
        ids = tokenizer(
            chunk,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = text_encoder(ids.input_ids.to(device))[0].cpu()
        table.update(zip(chunk, hidden))
    return table


def pipeline_from(unet, vae, text_encoder, tokenizer) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=inference_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def judged_accuracy(pipe, seed: int) -> dict:
    """One image per (style, object) pair with the world's first caption template, judged by the shipped judges."""
    from erasure.canvas.world import caption
    from eval.judges.models import load_judges

    judges = load_judges(pipe.device)
    pairs = [(s, o) for s in STYLES for o in OBJECTS]
    prompts = [caption(s, o) for s, o in pairs]
    images = []
    for i in range(0, len(prompts), 65):
        gen = torch.Generator("cpu").manual_seed(seed + i)
        out = pipe(
            prompts[i : i + 65],
            num_inference_steps=INFERENCE_STEPS,
            guidance_scale=GUIDANCE_SCALE,
            generator=gen,
            output_type="pt",
        )
        images.append(out.images.cpu())
    styles, objects = judges.predict(torch.cat(images))
    style_ok = [p == s for p, (s, _) in zip(styles, pairs)]
    object_ok = [p == o for p, (_, o) in zip(objects, pairs)]
    return {
        "style_acc": 100 * sum(style_ok) / len(pairs),
        "object_acc": 100 * sum(object_ok) / len(pairs),
        "images": len(pairs),
    }


def save_unet_checkpoint(args, step, unet, ema, opt) -> None:
    """The UNet, its EMA shadow and the optimizer, in the engine's checkpoint format (erasure/engine/checkpoint.py)."""
    tensors = {"unet": unet.state_dict(), "ema": {f"p{i}": p for i, p in enumerate(ema.shadow_params)}}
    state = {"stage": "unet", "ema_optimization_step": ema.optimization_step}
    save_checkpoint(args.checkpoints, step, tensors, {"unet": opt}, state=state)


def train_unet(args, device, vae) -> None:
    clip_dir = ASSETS / "canvas-clip"
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    text_encoder = CLIPTextModel.from_pretrained(clip_dir).to(device).eval()
    text_encoder.requires_grad_(False)
    vae.requires_grad_(False)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    unet = build_unet(text_encoder.config.hidden_size).to(device)
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=0.75)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    noise_scheduler = training_scheduler()
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    start_step = 0
    latest = latest_checkpoint(args.checkpoints) if args.resume else None
    if latest is not None:
        state = load_checkpoint(latest, {"unet": opt})
        unet.load_state_dict(load_tensors(latest, "unet"))
        shadow = load_tensors(latest, "ema")
        ema.shadow_params = [shadow[f"p{i}"].to(device) for i in range(len(shadow))]
        start_step, ema.optimization_step = state["step"], state["ema_optimization_step"]
        rng.seed(args.seed + start_step)
        torch.manual_seed(args.seed + start_step)
        tqdm.write(f"resumed from step {start_step}")

    pipe = pipeline_from(unet, vae, text_encoder, tokenizer)
    if start_step >= args.unet_steps:
        # Resumed at or past the requested length: export the checkpoint's EMA weights as the pipeline.
        ema.copy_to(unet.parameters())
        unet.eval()
        log(args.log, {"stage": "unet", "step": start_step, **judged_accuracy(pipe, seed=0)})
        write_pipeline(args, pipe)
        return
    latent_mean, latent_std, style_labels, object_labels = encode_dataset(vae, device, args.exclude)
    text_table = encode_captions(text_encoder, tokenizer, device)
    scale = vae.config.scaling_factor
    bar = tqdm(
        range(start_step, args.unet_steps), desc="canvas-sd UNet", initial=start_step, total=args.unet_steps
    )
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 300)
        idx = torch.randint(len(latent_mean), (args.batch,))
        latents = (latent_mean[idx] + latent_std[idx] * torch.randn_like(latent_std[idx])).to(device) * scale
        captions = [
            "" if rng.random() < 0.1 else random_caption(STYLES[s], OBJECTS[o], rng)
            for s, o in zip(style_labels[idx], object_labels[idx])
        ]
        hidden = torch.stack([text_table[c] for c in captions]).to(device)
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch,), device=device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, hidden).sample
        # Min-SNR-5 weighting (Hang et al. 2023) for epsilon prediction: min(SNR, 5) / SNR.
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        weight = torch.clamp(snr, max=5.0) / snr
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        done = step + 1
        if done % args.checkpoint_every == 0 or done == args.unet_steps:
            save_unet_checkpoint(args, done, unet, ema, opt)
        if done % args.eval_every == 0 or done == args.unet_steps:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
            unet.eval()
            record = {
                "stage": "unet",
                "step": done,
                "loss": round(loss.item(), 4),
                **judged_accuracy(pipe, seed=0),
            }
            log(args.log, record)
            if done == args.unet_steps:
                write_pipeline(args, pipe)
            ema.restore(unet.parameters())
            unet.train()


def write_pipeline(args, pipe: StableDiffusionPipeline) -> None:
    with atomic_folder(args.out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if args.exclude:
            recipe = {"unet_steps": args.unet_steps, "vae_steps": args.vae_steps, "seed": args.seed}
            (tmp / "oracle.json").write_text(
                json.dumps({"excluded": args.exclude, "recipe": recipe}, indent=2)
            )
    tqdm.write(f"canvas-sd written to {args.out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train canvas-sd (VAE, then UNet) on the Canvas world.")
    parser.add_argument("--stage", choices=("vae", "unet", "all"), default="all")
    parser.add_argument("--vae-steps", type=int, default=700)
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="CONCEPT",
        help="train the oracle: a world whose renders never show this style or object (repeatable)",
    )
    parser.add_argument("--checkpoints", type=Path, default=None, help="default checkpoints/<model name>")
    parser.add_argument("--out", type=Path, default=None, help="default assets/canvas-sd, or oracles/<name>")
    args = parser.parse_args(argv)
    try:
        args.exclude = sorted({canonical(c)[0] for c in args.exclude})
    except UnknownConceptError as error:
        parser.exit(2, f"{error}\n")
    name = "canvas-sd" + "".join(f"-without-{slug(c)}" for c in args.exclude)
    args.checkpoints = args.checkpoints or ROOT / "checkpoints" / name
    args.out = args.out or (ROOT / "oracles" / name if args.exclude else ASSETS / "canvas-sd")
    if args.exclude and args.out.resolve().is_relative_to(ASSETS.resolve()):
        parser.exit(2, f"an oracle is not shipped: give --out a folder outside {ASSETS}.\n")
    args.log = args.checkpoints / "train_log.jsonl"
    args.checkpoints.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.time()
    vae = train_vae(args, device)
    if args.stage in ("unet", "all"):
        train_unet(args, device, vae)
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
