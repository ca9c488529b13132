"""Text-to-Unlearn for canvas-gan: make a pretrained StyleGAN2 stop producing a concept named only in text.

    new_G, info = erasure.unlearn(load_generator("assets/canvas-gan"), ["van gogh"])    # the engine's entry

After Nagasubramaniam et al. (arXiv 2504.01218; no public code), with StyleGAN-NADA's directional CLIP loss, as
DESIGN.md section 3 describes. canvas-clip (`pipelines.canvas_clip`) is the only model that reads the text: it
picks the samples that show the concept and gives the directions. The judges never take part. The steps of `run`:

1. Text. Every (style, object) pair gets a canvas-clip text embedding averaged over the world's caption templates
   (StyleGAN-NADA's prompt-template averaging). An erased style's target is `plain`; an erased object has no
   neutral version, so each of its samples gets the kept object canvas-clip finds most likely in it
   (`object_anchor='nearest'`): the erased share spreads over the other classes instead of piling onto one.
2. A latent pool. `pool` fixed latents go through the frozen generator (const noise), and canvas-clip reads each
   image zero-shot. A sample *shows the concept* when an erased class reaches `concept_threshold` (a low bar, so
   borderline samples move too); it is *preserved* when every erased class stays below `rest_threshold`; the
   samples in between are in neither set, so preservation never holds on to a half-van-gogh sample.
3. Training a copy of the generator, each batch `concept_fraction` concept samples and the rest preserved ones:
   - the directional loss (`w_direction`) on concept samples, its cosine's norm floored at `direction_floor`;
   - the donor term (`w_donor`, `assign_donors`) on concept samples whose object changes: pixels and canvas-clip
     features pulled onto a preserved sample that canvas-clip reads as the target, an image the generator draws
     itself, so a pattern that only fools canvas-clip cannot satisfy it;
   - canvas-clip cross-entropies towards the changed attribute's target (`w_target`) and keeping the unchanged
     one (`w_identity`), each over the image and `clip_views` random views of it;
   - preservation of the frozen outputs on preserved samples, in canvas-clip features (`w_feature`) and pixels
     (`w_pixel`);
   - a small critic (`PoolCritic`, `w_adversarial`), trained from scratch alongside, that tells the frozen
     generator's preserved samples from the concept samples: canvas-clip is fixed and easily fooled, and a critic
     that keeps learning answers each pattern that fools it.

Which parameters train (`train`): 'synthesis' (default) removes the ability to draw the concept; editing only
the mapping network re-routes z away from the concept's region of W but leaves the synthesis network able to
paint it for any w that reaches it (W-space sampling, inversion, style mixing). Measured ablations and the figures
behind every default: docs/text_to_unlearn.md.
"""

from __future__ import annotations

import copy
import random
import time
import typing
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from erasure.canvas.world import OBJECTS, PLAIN, STYLES, canonical
from erasure.methods.config import MethodConfig, option
from pipelines.canvas_clip import CANVAS_CLIP, CanvasClip
from pipelines.stylegan import Generator

ParameterGroup = Literal["synthesis", "mapping", "all"]
PARAMETER_GROUPS = typing.get_args(ParameterGroup)
POOL_SEED = 1_000_000  # pool latents use POOL_SEED + config.seed, apart from the evaluation's fixed latents


@dataclass
class TextUnlearnConfig(MethodConfig):
    """How Text-to-Unlearn runs; the defaults are the canvas-gan ones (docs/text_to_unlearn.md)."""

    method_name: ClassVar[str] = "Text-to-Unlearn"

    steps: int = option(600, "optimisation steps")
    checkpoint_every: int = option(200, "steps between checkpoints when a checkpoint folder is given")
    divergence_factor: float = option(
        0.0, "0: only NaN/inf losses stop the run (a GAN game's losses swing by orders of magnitude)"
    )
    lr: float = option(0.002, "Adam learning rate (StyleGAN-NADA's), betas (0, 0.99)")
    train: ParameterGroup = option(
        "synthesis", "which parameters train: 'synthesis', 'mapping' or 'all' (module docstring)"
    )
    batch: int = option(32, "latents per step")
    concept_fraction: float = option(0.75, "share of each batch drawn from the concept samples")
    pool: int = option(4096, "fixed latents classified once by canvas-clip (frozen generator, const noise)")
    concept_threshold: float = option(
        0.1, "canvas-clip probability of an erased class from which a sample shows it"
    )
    rest_threshold: float = option(0.02, "a sample is preserved when every erased class is below this")
    w_direction: float = option(0.2, "directional CLIP loss (StyleGAN-NADA) on concept samples")
    direction_floor: float = option(0.05, "floor of |dI| in the directional cosine")
    w_target: float = option(
        0.0,
        "canvas-clip cross-entropy towards the changed attribute's target (off: canvas-clip is fooled through it)",
    )
    w_identity: float = option(
        0.5, "canvas-clip cross-entropy keeping the unchanged attribute (object / style)"
    )
    w_donor: float = option(
        10.0, "pixel MSE + canvas-clip cosine distance to the donor, samples whose object changes"
    )
    w_feature: float = option(
        5.0, "1 - cos of canvas-clip image embeddings to the frozen output, preserved samples"
    )
    w_pixel: float = option(30.0, "pixel MSE to the frozen output ([-1, 1] range), preserved samples")
    clip_views: int = option(2, "extra shifted / flipped / noised views scored by the cross-entropy terms")
    w_adversarial: float = option(
        1.0, "non-saturating loss of a fresh critic: concept samples vs the preserved pool"
    )
    critic_lr: float = option(2e-4, "the critic's Adam learning rate, betas (0, 0.99)")
    critic_real: Literal["rest", "anchor"] = option(
        "rest",
        "the critic's real samples: every preserved one, or those canvas-clip reads as the anchor style",
    )
    style_anchor: Literal["plain", "spread"] = option(
        PLAIN, "what an erased style becomes: 'plain', or 'spread' (a random other style per sample)"
    )
    object_anchor: Literal["nearest", "random"] = option(
        "nearest", "an erased object becomes the kept object canvas-clip finds most likely, or a random one"
    )
    seed: int = option(0, "seeds the pool, the critic and the batches")

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.concept_fraction < 1 or self.batch < 2 or self.steps < 0:
            raise ValueError("need 0 < concept_fraction < 1, batch >= 2 and steps >= 0.")
        if not 0 <= self.rest_threshold <= self.concept_threshold <= 1:
            raise ValueError("need 0 <= rest_threshold <= concept_threshold <= 1.")
        if self.mixed_precision != "no":
            raise ValueError("Text-to-Unlearn runs in full precision (mixed_precision 'no').")


def trainable_parameters(generator: Generator, group: str) -> dict[str, torch.nn.Parameter]:
    """The parameters `group` ('synthesis', 'mapping' or 'all') trains, by name."""
    if group not in PARAMETER_GROUPS:
        raise ValueError(f"train must be one of {', '.join(PARAMETER_GROUPS)}, not {group!r}.")
    return {n: p for n, p in generator.named_parameters() if group == "all" or n.startswith(group + ".")}


def _strongest(probs: torch.Tensor, classes: set[int]) -> tuple[list[float], list[int]]:
    """Per row, the largest probability among `classes` and its class (0 and -1 when `classes` is empty)."""
    if not classes:
        return [0.0] * len(probs), [-1] * len(probs)
    cols = sorted(classes)
    value, arg = probs[:, cols].max(-1)
    return value.tolist(), [cols[a] for a in arg.tolist()]


def random_view(images: torch.Tensor, generator: torch.Generator, shift: int = 3, noise: float = 0.05):
    """A random view of each image, differentiable: horizontal flip, translation by up to `shift` px (edge
    padding), Gaussian noise. Scoring several views makes the cross-entropy terms hard to satisfy with
    pixel patterns that only canvas-clip reads as the target class (the cutouts of CLIP-guided generation)."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(images.device), images.flip(-1), images)
    x = F.pad(x, (shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator).tolist()
    x = torch.stack([x[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    return x + noise * torch.randn(x.shape, generator=generator).to(x.device)


class PoolCritic(torch.nn.Module):
    """A small convolutional critic trained from scratch during unlearning: frozen-generator samples clear of the
    concept (real) against the trainable generator's outputs on concept latents (fake).

    canvas-clip is fixed, so the generator can learn pixel patterns that canvas-clip alone reads as the target
    while any other classifier still sees the concept. A critic that keeps training answers each such pattern,
    so the concept samples must move into the region the generator's own non-concept samples occupy (DoCo's
    concept-domain correction, here in image space)."""

    def __init__(self, channels: int = 3, width: int = 32):
        super().__init__()
        layers, c = [], channels
        for w in (width, 2 * width, 4 * width):
            layers += [torch.nn.Conv2d(c, w, 3, stride=2, padding=1), torch.nn.LeakyReLU(0.2)]
            c = w
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(c, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean((2, 3))).squeeze(-1)


def assign_donors(
    w: torch.Tensor, source: torch.Tensor, target: torch.Tensor, concept_idx: list[int], rest_idx: list[int]
) -> dict[int, int]:
    """For each concept sample, the preserved sample that will be its donor: among those canvas-clip reads as the
    concept sample's target (style, object), the nearest in W; failing that, the nearest with its target object
    (or style, whichever changed), then the nearest preserved sample of all.

    The donor is one of the frozen generator's own images, so it is an image that generator can draw and that
    canvas-clip reads as the target; regressing the concept sample onto it cannot be satisfied by a pattern that
    fools canvas-clip alone."""
    if not concept_idx or not rest_idx:
        return {}
    rest = torch.tensor(rest_idx, device=w.device)
    distances = torch.cdist(w[concept_idx], w[rest])
    donors = {}
    for row, i in enumerate(concept_idx):
        same_pair = (source[rest] == target[i]).all(-1)
        changed = int((target[i] != source[i]).nonzero()[0]) if (target[i] != source[i]).any() else 1
        same_changed = source[rest, changed] == target[i, changed]
        allowed = next((m for m in (same_pair, same_changed) if m.any()), torch.ones_like(same_pair))
        donors[i] = rest_idx[int(distances[row].masked_fill(~allowed, float("inf")).argmin())]
    return donors


def soft_direction_loss(d_image: torch.Tensor, d_text: torch.Tensor, floor: float) -> torch.Tensor:
    """Mean of 1 - d_image . d_text_hat / max(|d_image|, floor): the NADA directional loss, finite at d_image = 0."""
    d_text = F.normalize(d_text, dim=-1)
    return (1 - (d_image * d_text).sum(-1) / d_image.norm(dim=-1).clamp(min=floor)).mean()


def run(
    generator: Generator, concepts: list[str], config: TextUnlearnConfig, session, clip_dir=CANVAS_CLIP
) -> tuple[Generator, dict]:
    """Erase `concepts` (world styles and/or objects, names or aliases) from `generator`; it keeps its weights.

    `session` is the engine's `TrainingRun` (device, progress bar, checks, checkpoints; `erasure.engine.unlearn`
    makes it). Returns the unlearnt copy (eval mode) and `info`: seconds, config, concepts with their kinds, the
    pool's canvas-clip statistics, the trainable parameter names and the loss history (every 10th step).
    """
    start = time.perf_counter()
    device = session.device
    erased = [canonical(c) for c in concepts]
    if not erased:
        raise ValueError("name at least one concept to unlearn.")
    erased_styles = {STYLES.index(c) for c, kind in erased if kind == "style"}
    erased_objects = {OBJECTS.index(c) for c, kind in erased if kind == "object"}
    kept_styles = [i for i in range(len(STYLES)) if i not in erased_styles]
    kept_objects = [i for i in range(len(OBJECTS)) if i not in erased_objects]
    if not kept_objects:
        raise ValueError("cannot unlearn every object: nothing would be left to draw.")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

    frozen = copy.deepcopy(generator).to(device).eval().requires_grad_(False)
    new = copy.deepcopy(generator).to(device).eval().requires_grad_(False)
    params = trainable_parameters(new, config.train)
    for p in params.values():
        p.requires_grad_(True)
    clip = CanvasClip(clip_dir, device)
    pair_text = clip.pair_texts()

    # 2. The pool: frozen outputs, canvas-clip embeddings and class probabilities; concept / rest / left out.
    z_pool = torch.randn(
        config.pool, frozen.config.z_dim, generator=torch.Generator().manual_seed(POOL_SEED + config.seed)
    )
    z_pool = z_pool.to(device)
    with torch.no_grad():
        w_pool = torch.cat([frozen.mapping(z) for z in z_pool.split(256)])
        img_pool = torch.cat([frozen.synthesis(w, noise_mode="const") for w in w_pool.split(256)])
        emb_pool = torch.cat([clip.image(x) for x in img_pool.split(256)])
        logits = clip.pair_logits(emb_pool, pair_text)
        p_style, p_object = (x.softmax(-1) for x in clip.style_object_logits(logits))
    source = torch.stack([p_style.argmax(-1), p_object.argmax(-1)], 1)  # zero-shot (style, object) per sample
    hit_style = _strongest(
        p_style, erased_styles
    )  # (prob, class) of the most likely erased style, per sample
    hit_object = _strongest(p_object, erased_objects)
    concept_idx, rest_idx = [], []
    for i in range(config.pool):
        style_hit, object_hit = (
            hit_style[0][i] >= config.concept_threshold,
            hit_object[0][i] >= config.concept_threshold,
        )
        if style_hit or object_hit:
            concept_idx.append(i)
            if style_hit:  # the sample shows an erased style: that is its source, the anchor its target
                source[i, 0] = hit_style[1][i]
            if object_hit:
                source[i, 1] = hit_object[1][i]
        elif max(hit_style[0][i], hit_object[0][i]) < config.rest_threshold:
            rest_idx.append(i)
    target = source.clone()
    for i in concept_idx:
        if int(source[i, 0]) in erased_styles:
            target[i, 0] = STYLES.index(PLAIN) if config.style_anchor == PLAIN else rng.choice(kept_styles)
        if int(source[i, 1]) in erased_objects:
            if config.object_anchor == "nearest":
                target[i, 1] = kept_objects[int(p_object[i, kept_objects].argmax())]
            else:
                target[i, 1] = rng.choice(kept_objects)
    info = {
        "method": "text-to-unlearn",
        "concepts": [{"concept": c, "kind": k} for c, k in erased],
        "config": asdict(config),
        "trainable": sorted(params),
        "trainable_parameters": sum(p.numel() for p in params.values()),
        "pool_concept_share": len(concept_idx) / config.pool,
        "pool_rest_share": len(rest_idx) / config.pool,
        "pool_definition": (
            f"{config.pool} fixed latents; a latent shows a concept when canvas-clip gives the frozen generator's "
            f"image a probability >= {config.concept_threshold} for an erased style or object (softmax over the "
            f"kind's classes of pair logits summed over the other kind); it is preserved when every such probability "
            f"is < {config.rest_threshold}; the others are left out"
        ),
        "history": [],
    }
    if not concept_idx:
        tqdm.write(
            "canvas-clip finds no sample of the concept in the pool; the generator is returned unchanged."
        )
        info["seconds"] = time.perf_counter() - start
        return new.requires_grad_(False), info
    if not rest_idx:
        raise ValueError("no pooled sample is clear of the concept (rest_threshold): nothing to preserve.")
    d_text = pair_text[target[:, 0], target[:, 1]] - pair_text[source[:, 0], source[:, 1]]  # (pool, d)
    concept_t, rest_t = torch.tensor(concept_idx, device=device), torch.tensor(rest_idx, device=device)
    donor = torch.zeros(config.pool, dtype=torch.long, device=device)
    moving_object = [i for i in concept_idx if target[i, 1] != source[i, 1]]  # the only users of a donor
    for i, j in assign_donors(w_pool, source, target, moving_object, rest_idx).items():
        donor[i] = j
    real_t = rest_t  # the critic's real samples
    if config.critic_real == "anchor" and erased_styles:
        anchored = [i for i in rest_idx if int(source[i, 0]) == STYLES.index(PLAIN)]
        if len(anchored) >= config.batch:
            real_t = torch.tensor(anchored, device=device)

    # 3. Training.
    opt = torch.optim.Adam(params.values(), lr=config.lr, betas=(0.0, 0.99))
    critic = PoolCritic(frozen.config.img_channels).to(device) if config.w_adversarial > 0 else None
    if critic is not None:
        opt_critic = torch.optim.Adam(critic.parameters(), lr=config.critic_lr, betas=(0.0, 0.99))
    n_concept = max(1, round(config.batch * config.concept_fraction))
    g = torch.Generator(device="cpu").manual_seed(config.seed + 1)
    tracked, optimizers = {f"generator.{n}": p for n, p in params.items()}, {"generator": opt}
    if critic is not None:
        tracked.update({f"critic.{n}": t for n, t in critic.state_dict().items()})
        optimizers["critic"] = opt_critic
    session.track(tracked, optimizers, {"views": g})
    for step in range(session.start_step(), config.steps):
        ci = concept_t[torch.randint(len(concept_t), (n_concept,), generator=g).to(device)]
        ri = rest_t[torch.randint(len(rest_t), (config.batch - n_concept,), generator=g).to(device)]
        idx = torch.cat([ci, ri])
        if config.train == "synthesis":
            images = new.synthesis(w_pool[idx], noise_mode="const")
        else:
            images = new(z_pool[idx], noise_mode="const")
        emb = clip.image(images)
        emb_c, emb_r = emb[:n_concept], emb[n_concept:]

        direction = soft_direction_loss(emb_c - emb_pool[ci], d_text[ci], config.direction_floor)
        views = [emb_c] + [clip.image(random_view(images[:n_concept], g)) for _ in range(config.clip_views)]
        logits = torch.cat([clip.pair_logits(v, pair_text) for v in views])
        style_logits, object_logits = clip.style_object_logits(logits)
        n_views = len(views)
        changed_s = (target[ci, 0] != source[ci, 0]).repeat(n_views)
        changed_o = (target[ci, 1] != source[ci, 1]).repeat(n_views)
        ce_s = F.cross_entropy(style_logits, target[ci, 0].repeat(n_views), reduction="none")
        ce_o = F.cross_entropy(object_logits, target[ci, 1].repeat(n_views), reduction="none")
        target_ce = (ce_s * changed_s + ce_o * changed_o).mean()
        identity_ce = (ce_s * ~changed_s + ce_o * ~changed_o).mean()
        moves_object = changed_o[:n_concept]  # the donor term is for the samples whose object must change
        donor_images, donor_emb = img_pool[donor[ci]], emb_pool[donor[ci]]
        donor_distance = (
            (images[:n_concept] - donor_images).square().mean((1, 2, 3)) + 1 - (emb_c * donor_emb).sum(-1)
        )
        to_donor = (donor_distance * moves_object).mean()
        feature = (1 - (emb_r * emb_pool[ri]).sum(-1)).mean()
        pixel = (images[n_concept:] - img_pool[ri]).square().mean()
        adversarial = torch.zeros((), device=device)
        if critic is not None:
            real = img_pool[real_t[torch.randint(len(real_t), (n_concept,), generator=g).to(device)]]
            critic_loss = (
                F.softplus(-critic(random_view(real, g))).mean()
                + F.softplus(critic(random_view(images[:n_concept].detach(), g))).mean()
            )
            opt_critic.zero_grad(set_to_none=True)
            critic_loss.backward()
            opt_critic.step()
            adversarial = F.softplus(-critic(random_view(images[:n_concept], g))).mean()
        loss = (
            config.w_direction * direction
            + config.w_donor * to_donor
            + config.w_target * target_ce
            + config.w_identity * identity_ce
            + config.w_feature * feature
            + config.w_pixel * pixel
            + config.w_adversarial * adversarial
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses = {
            "loss": loss.item(),
            "direction": direction.item(),
            "target_ce": target_ce.item(),
            "identity_ce": identity_ce.item(),
            "donor": to_donor.item(),
            "feature": feature.item(),
            "pixel": pixel.item(),
            "adversarial": adversarial.item(),
        }
        session.end_step(step, losses)
    info["history"] = [h for h in session.history if h["step"] % 10 == 0 or h["step"] == config.steps - 1]
    new.eval().requires_grad_(False)
    info["seconds"] = time.perf_counter() - start
    return new, info
