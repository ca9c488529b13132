"""Check the shipped judges on held-out real Canvas images before trusting any score they give.

    OMP_WAIT_POLICY=PASSIVE python -m eval.judges.check [--json] [--seeds 20]

Every style x object pair is rendered at seeds CHECK_SEED_BASE + 0..seeds-1, which no model of the repo trains on.
Every accuracy is a balanced mean (all classes have the same number of images) in percent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from erasure.canvas.data import CHECK_SEED_BASE, degrade, to_tensor
from erasure.canvas.render import render
from erasure.canvas.world import OBJECTS, STYLES
from eval.judges.models import JUDGES_DIR, Judges, load_judges, world_prompt
from eval.metrics import Judged, object_accuracy, style_accuracy

BATCH_SIZE = 512

DEFINITIONS = {
    "style_acc": "style judge top-1 accuracy: mean over styles of 100 * share of that style's images judged as it",
    "object_acc": "object judge top-1 accuracy: mean over objects of 100 * share of that object's images judged as it",
    "clip_style_acc": (
        "judge-clip zero-shot: each image is scored against world_prompt(style, object) for all "
        f"{len(STYLES) * len(OBJECTS)} pairs; the style of the best pair, scored like style_acc"
    ),
    "clip_object_acc": "judge-clip zero-shot as clip_style_acc; the object of the best pair, scored like object_acc",
    "degraded_style_acc": "style_acc on the same images after data.degrade (Gaussian blur sigma=1 px, then JPEG q=50)",
    "degraded_object_acc": "object_acc on the same degraded images",
    "n_images": "number of held-out images: styles x objects x seeds",
    "seeds": f"render seeds {CHECK_SEED_BASE} + 0..seeds-1 (held out from every training set)",
    "per_style_acc": "style_acc of each style separately",
    "per_object_acc": "object_acc of each object separately",
}


def _balanced(per_class: dict[str, float]) -> float:
    return sum(per_class.values()) / len(per_class)


def check_judges(judges: Judges, seeds: int, batch_size: int = BATCH_SIZE) -> dict:
    """Judge every style x object pair at `seeds` held-out seeds: the numbers named in DEFINITIONS."""
    rows = [(s, o, CHECK_SEED_BASE + k) for k in range(seeds) for s in STYLES for o in OBJECTS]
    texts = [world_prompt(s, o) for s in STYLES for o in OBJECTS]
    text_emb = judges.clip_text(texts)
    judged: dict[str, list[Judged]] = {"judge": [], "clip": [], "degraded": []}
    with tqdm(total=len(rows), desc="judge check", unit="img", file=sys.stderr) as bar:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            images = to_tensor(np.stack([render(s, o, seed) for s, o, seed in batch]))
            best_pair = (judges.clip_image(images) @ text_emb.T).argmax(-1).cpu().tolist()
            clip_styles = [STYLES[i // len(OBJECTS)] for i in best_pair]
            clip_objects = [OBJECTS[i % len(OBJECTS)] for i in best_pair]
            for name, (pred_styles, pred_objects) in (
                ("judge", judges.predict(images)),
                ("clip", (clip_styles, clip_objects)),
                ("degraded", judges.predict(degrade(images, sigma=1.0, quality=50))),
            ):
                judged[name] += [
                    Judged(s, o, ps, po) for (s, o, _), ps, po in zip(batch, pred_styles, pred_objects)
                ]
            bar.update(len(batch))
    per_style, per_object = style_accuracy(judged["judge"]), object_accuracy(judged["judge"])
    return {
        "style_acc": _balanced(per_style),
        "object_acc": _balanced(per_object),
        "clip_style_acc": _balanced(style_accuracy(judged["clip"])),
        "clip_object_acc": _balanced(object_accuracy(judged["clip"])),
        "degraded_style_acc": _balanced(style_accuracy(judged["degraded"])),
        "degraded_object_acc": _balanced(object_accuracy(judged["degraded"])),
        "n_images": len(rows),
        "seeds": seeds,
        "per_style_acc": per_style,
        "per_object_acc": per_object,
        "definitions": DEFINITIONS,
    }


def format_table(result: dict) -> str:
    lines = [
        f"Judges on {result['n_images']} held-out images ({result['seeds']} seeds per style x object pair)",
        "",
    ]
    for key in DEFINITIONS:
        value = result[key]
        if isinstance(value, dict):
            lines += ["", f"{key}:"] + [f"  {name:<20} {acc:6.1f} %" for name, acc in value.items()]
        else:
            lines.append(
                f"  {key:<20} {value:6.1f} %" if isinstance(value, float) else f"  {key:<20} {value:6d}"
            )
    lines += ["", "definitions:"] + [f"  {key}: {text}" for key, text in result["definitions"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Accuracy of the shipped judges on held-out real Canvas images."
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout instead of a table"
    )
    parser.add_argument(
        "--seeds", type=int, default=20, help="held-out seeds per style x object pair (default 20)"
    )
    parser.add_argument(
        "--judges", type=Path, default=JUDGES_DIR, help=f"judge weights folder (default {JUDGES_DIR})"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    try:
        judges = load_judges(args.device, args.judges, require_clip=True)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = check_judges(judges, args.seeds)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
