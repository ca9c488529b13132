"""How balanced and how good is canvas-gan? Judged shares of every style and object on fresh latents, and FD.

    OMP_WAIT_POLICY=PASSIVE python -m eval.gan_quality [--generator assets/canvas-gan] [--n 10400] [--seed 7]

A generator that hardly draws a style cannot show that style's erasure, and the share bar of the GAN issue (each
style within +-50% of uniform) is measured here on latents apart from training's monitor and the unlearning
evaluation's. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from erasure.canvas.data import render_pool, to_tensor
from eval.gan_eval import CONFIDENT, MONITOR_REAL_SEEDS, fixed_latents, judged_stats, object_clarity, sample
from eval.judges.models import load_judges
from pipelines.stylegan import CANVAS_GAN, load_generator

DEFINITIONS = {
    "style_share": "share of the n samples whose top style-judge prediction is that style",
    "object_share": "share of the n samples whose top object-judge prediction is that object",
    "style_ratio_min/max": "smallest / largest style share x 13 (1 = uniform over the 13 styles, plain included)",
    "object_ratio_min/max": "smallest / largest object share x 10 (1 = uniform over the 10 objects)",
    "fd": "Frechet distance of the style and object judges' penultimate features, n samples vs 520 held-out renders",
    "object_confident": f"share of the n samples whose object-judge top softmax probability is >= {CONFIDENT}",
    "object_judges_agree": "share of the n samples where the object judge's top-1 is the object of judge-clip's best "
    "(style, object) pair (zero-shot over all 130 world_prompt texts, as eval.judges.check)",
    "style_judges_agree": "the same for the style judge and the style of judge-clip's best pair",
    "samples": "n images from fixed latents z ~ N(0, I) drawn with torch seed `seed`, const noise",
}


def gan_quality(generator, judges, n: int, seed: int) -> dict:
    images = sample(generator, fixed_latents(generator, n, seed))
    real = judges.features(to_tensor(render_pool(MONITOR_REAL_SEEDS)[0])).cpu()
    stats = judged_stats(images, judges, real)
    return {**stats, **object_clarity(images, judges), "seed": seed, "definitions": DEFINITIONS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default=str(CANVAS_GAN), help="a folder written by save_generator")
    parser.add_argument("--n", type=int, default=10400, help="samples to judge")
    parser.add_argument("--seed", type=int, default=7, help="torch seed of the latents")
    args = parser.parse_args(argv)
    if args.n < 13:
        print("error: --n must be at least 13, one per style.", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    try:
        generator = load_generator(args.generator)
        judges = load_judges()
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(gan_quality(generator, judges, args.n, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
