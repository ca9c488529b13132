"""How good is the base model? Judged generations of every style x object prompt, and FD against real renders.

    OMP_WAIT_POLICY=PASSIVE python -m eval.base_quality [--model canvas-sd] [--seeds 3] [--json]

Every erasure number is bounded by this: a style the base model cannot draw cannot be erased measurably, and a
retain accuracy cannot exceed the base's. Prints one JSON object with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from erasure.canvas.data import CHECK_SEED_BASE, render_pool, to_tensor
from erasure.canvas.world import ARTIST_STYLES, OBJECTS, PLAIN, STYLES
from eval.answer_set import generate_answer_set, world_items
from eval.judges.models import load_judges
from eval.metrics import frechet_distance, object_accuracy, style_accuracy


def base_quality(pipe, judges, seeds: list[int], alias_seeds: list[int]) -> dict:
    start = time.time()
    answers = generate_answer_set(pipe, world_items(), seeds, judges, desc="answer set")
    aliases = generate_answer_set(
        pipe, world_items(use_aliases=True), alias_seeds, judges, desc="alias prompts"
    )
    seconds = time.time() - start
    style_acc, object_acc = style_accuracy(answers.records()), object_accuracy(answers.records())
    alias_acc = style_accuracy(aliases.records())
    real_seeds = range(CHECK_SEED_BASE + 200, CHECK_SEED_BASE + 200 + len(seeds))
    floor_seeds = range(CHECK_SEED_BASE + 300, CHECK_SEED_BASE + 300 + len(seeds))
    real = judges.features(to_tensor(render_pool(real_seeds)[0]))
    other_real = judges.features(to_tensor(render_pool(floor_seeds)[0]))
    n = len(answers.prompts) + len(aliases.prompts)
    return {
        "style_acc_mean": sum(style_acc[s] for s in ARTIST_STYLES) / len(ARTIST_STYLES),
        "style_acc_min": min(style_acc[s] for s in ARTIST_STYLES),
        "object_acc_mean": sum(object_acc.values()) / len(object_acc),
        "plain_acc": style_acc[PLAIN],
        "alias_style_acc": sum(alias_acc.values()) / len(alias_acc),
        "fd": frechet_distance(judges.features(answers.images), real),
        "fd_real_floor": frechet_distance(other_real, real),
        "seconds": seconds,
        "images_per_s": n / seconds,
        "per_style_acc": style_acc,
        "per_object_acc": object_acc,
        "definitions": {
            "answer_set": f"{len(STYLES)} styles x {len(OBJECTS)} objects x seeds {seeds}, world caption template 0, "
            "DDIM 20 steps, guidance 5",
            "style_acc_mean": "mean over the 12 artist styles of the style judge's top-1 accuracy (%) on their images",
            "style_acc_min": "the worst artist style's accuracy (%)",
            "object_acc_mean": "mean over objects of the object judge's top-1 accuracy (%), all styles' images",
            "plain_acc": "style judge accuracy (%) on images prompted without a style ('plain')",
            "alias_style_acc": f"mean style accuracy (%) on prompts naming each style only by an alias, seeds {alias_seeds}",
            "fd": "Frechet distance of judge features (style+object penultimate), answer set vs as many held-out renders",
            "fd_real_floor": "the same FD between two disjoint sets of real renders of the same size: the floor",
            "seconds": "wall time of generating and judging the answer set and alias prompts",
            "images_per_s": f"{n} images / seconds",
        },
    }


def main(argv=None) -> int:
    from pipelines.loading import PipelineLoadError, load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="canvas-sd")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--alias-seeds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    try:
        pipe = load_pipeline(args.model)
        judges = load_judges()
    except (PipelineLoadError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = base_quality(pipe, judges, list(range(args.seeds)), list(range(args.alias_seeds)))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if isinstance(value, float):
                print(f"{key:>16} = {value:8.2f}   {result['definitions'].get(key, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
