"""How well does canvas-clip's image tower read the world? Zero-shot accuracy on held-out renders, and agreement
with the judges on canvas-gan's samples.

    OMP_WAIT_POLICY=PASSIVE python -m eval.canvas_clip_quality [--clip assets/canvas-clip] [--n 2000]

canvas-clip is the GAN unlearner's only guide: it decides which samples show a concept and where they go. Its
reading of canvas-gan's samples bounds what the unlearner can do, so it is measured here, apart from the
judges' own check. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import torch

from erasure.canvas.data import CHECK_SEED_BASE, augment, render_pool, to_tensor
from erasure.canvas.world import OBJECTS, STYLES
from eval.gan_eval import EVAL_SEED, fixed_latents, sample
from eval.judges.models import load_judges
from pipelines.canvas_clip import CANVAS_CLIP, CanvasClip
from pipelines.stylegan import CANVAS_GAN, load_generator

REAL_SEEDS = range(CHECK_SEED_BASE + 500, CHECK_SEED_BASE + 504)  # 4 held-out renders per (style, object)
DEFINITIONS = {
    "renders_style_acc / renders_object_acc": "share of 520 held-out renders (4 seeds x 13 styles x 10 objects) "
    "whose canvas-clip zero-shot style / object (argmax of the template-averaged pair logits summed over the other "
    "kind) is the rendered one",
    "augmented_*": "the same after erasure.canvas.data.augment (shift, blur, JPEG, noise; random.Random(0))",
    "gan_style_agreement / gan_object_agreement": "share of n canvas-gan samples (the unlearning evaluation's fixed "
    "latents, const noise) where canvas-clip's zero-shot style / object equals the judges' top-1",
    "gan_object_recall_at_0.1": "per object, share of the samples the object judge calls it to which canvas-clip "
    "gives probability >= 0.1 (the unlearner's default concept threshold)",
}


def zero_shot(clip: CanvasClip, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(style probabilities (N, 13), object probabilities (N, 10)) for images in [0, 1]."""
    pair_text = clip.pair_texts()
    with torch.no_grad():
        logits = torch.cat([clip.pair_logits(clip.image(x * 2 - 1), pair_text) for x in images01.split(500)])
    p_style, p_object = (x.softmax(-1) for x in clip.style_object_logits(logits))
    return p_style, p_object


def canvas_clip_quality(clip: CanvasClip, generator, judges, n: int) -> dict:
    images, style_labels, object_labels = render_pool(REAL_SEEDS)
    real, styles, objects = to_tensor(images), torch.from_numpy(style_labels), torch.from_numpy(object_labels)
    out = {}
    for prefix, x in (("renders", real), ("augmented", augment(real, random.Random(0)))):
        p_style, p_object = zero_shot(clip, x)
        out[f"{prefix}_style_acc"] = float((p_style.argmax(-1) == styles).float().mean())
        out[f"{prefix}_object_acc"] = float((p_object.argmax(-1) == objects).float().mean())
    samples = sample(generator, fixed_latents(generator, n, EVAL_SEED))
    judged_styles, judged_objects = [], []
    for x in samples.split(500):
        s, o = judges.predict(x)
        judged_styles += [STYLES.index(v) for v in s]
        judged_objects += [OBJECTS.index(v) for v in o]
    judged_styles, judged_objects = torch.tensor(judged_styles), torch.tensor(judged_objects)
    p_style, p_object = zero_shot(clip, samples)
    out["gan_style_agreement"] = float((p_style.argmax(-1) == judged_styles).float().mean())
    out["gan_object_agreement"] = float((p_object.argmax(-1) == judged_objects).float().mean())
    out["gan_object_recall_at_0.1"] = {
        name: float((p_object[judged_objects == j, j] >= 0.1).float().mean())
        for j, name in enumerate(OBJECTS)
    }
    return {**out, "n": n, "definitions": DEFINITIONS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(CANVAS_CLIP), help="a canvas-clip folder")
    parser.add_argument("--generator", default=str(CANVAS_GAN), help="a folder written by save_generator")
    parser.add_argument("--n", type=int, default=2000, help="canvas-gan samples to compare with the judges")
    args = parser.parse_args(argv)
    if args.n < 1:
        print("error: --n must be at least 1.", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    try:
        clip, generator, judges = CanvasClip(args.clip), load_generator(args.generator), load_judges()
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(canvas_clip_quality(clip, generator, judges, args.n)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
